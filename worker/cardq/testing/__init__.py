"""Test helpers that ship with cardq (like ``structlog.testing``), for our tests and yours.

In process, no broker, no sleeping:

* :class:`FakeClock` (``cardq.testing.clock``) - pass it wherever cardq takes a ``clock``
  and :meth:`~FakeClock.advance` it: a lease, a rate window, a token expires on your word;
* :func:`build_pipeline` and :func:`job` (``cardq.testing.pipeline``) - the delivery
  pipeline over your backends with fast retries, and a request as the consumer reads it;
* ``cardq.testing.stores`` - the idempotency-store contract (:data:`~stores.CHECKS`,
  :func:`~stores.check_store`) for anyone writing a store, with the memory and Redis
  stores wired to a movable clock;
* :class:`MemoryBroker` (``cardq.memory_kafka``) - an in-memory Kafka: pass
  ``MemoryBroker().clients()`` as a worker's ``clients`` and its intake, commits and
  backpressure run with no broker;
* :class:`MockTransport` (``cardq.backends.transport``) - the platform faked at the HTTP
  seam: your handler gets each :class:`HttpRequest` and returns a :class:`Response`.

Against a real broker (``cardq.testing.broker``):

* :class:`TansuBroker` - a real Kafka-protocol broker on a free port, in memory;
* :class:`KafkaBroker` - Apache Kafka itself (needs Java, and Maven once), same interface;
* :func:`produce` - requests to the requests topic, keyed by destination like a producer should;
* :class:`ResultCollector` - reads the results and dead-letter topics in the background and
  waits for *conditions*, never for fixed sleeps;
* :func:`running_worker` - a worker in this event loop, stopped (drained) on exit.
"""

from __future__ import annotations

from ..backends.transport import HttpRequest, MockTransport, Response
from ..devtools.broker import TansuBroker, create_topics, free_port
from ..devtools.kafka import KafkaBroker, KafkaUnavailable
from ..memory_kafka import MemoryBroker, MemoryClients
from .broker import ResultCollector, destination_of, produce, running_worker
from .clock import FakeClock
from .pipeline import FAST_BACKOFF, build_pipeline, job

__all__ = [
    "FAST_BACKOFF",
    "FakeClock",
    "HttpRequest",
    "KafkaBroker",
    "KafkaUnavailable",
    "MemoryBroker",
    "MemoryClients",
    "MockTransport",
    "Response",
    "ResultCollector",
    "TansuBroker",
    "build_pipeline",
    "create_topics",
    "destination_of",
    "free_port",
    "job",
    "produce",
    "running_worker",
]
