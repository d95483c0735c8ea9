"""cardq: a Kafka consumer worker that delivers card messages to chat platforms."""

__version__ = "0.1.0"
