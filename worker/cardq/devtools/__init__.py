"""Development and test helpers that ship with the package: a local broker, topic setup.

Like structlog's ``structlog.testing``, these are for tests, ``cardq dev`` and the
benchmarks; the worker's runtime path never imports them.
"""
