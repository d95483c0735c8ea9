"""Prometheus metrics. Labels stay bounded: backend, bot, status, reason, partition, app.

Never a chat, user or request id: those would make one series per destination and
exhaust Prometheus during exactly the incident storm the dashboards are for.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

M = TypeVar("M", Counter, Gauge, Histogram)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_E2E = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
_WAIT = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """One registry per worker, so tests can run several workers in one process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.consumed = Counter(
            "cardq_requests_consumed",
            "Records read from the requests topic.",
            ["partition"],
            registry=r,
        )
        self.results = Counter(
            "cardq_results",
            "Results published, by final status.",
            ["backend", "bot", "status"],
            registry=r,
        )
        self.send_duration = Histogram(
            "cardq_send_duration_seconds",
            "One HTTP send to the platform.",
            ["backend"],
            buckets=_LATENCY,
            registry=r,
        )
        self.end_to_end = Histogram(
            "cardq_end_to_end_seconds",
            "From the request's created_at (or record timestamp) to its result.",
            ["backend"],
            buckets=_E2E,
            registry=r,
        )
        self.retries = Counter(
            "cardq_retries",
            "Send attempts that will be retried, by reason.",
            ["backend", "bot", "reason"],
            registry=r,
        )
        self.rate_wait = Histogram(
            "cardq_rate_limit_wait_seconds",
            "Time a send waited for its rate budget.",
            ["backend"],
            buckets=_WAIT,
            registry=r,
        )
        self.in_flight = Gauge("cardq_in_flight_sends", "Sends on the wire now.", registry=r)
        self.buffered = Gauge(
            "cardq_buffered_records", "Records read and not yet finished.", registry=r
        )
        self.buffered_bytes = Gauge(
            "cardq_buffered_bytes", "Bytes of records read and not yet finished.", registry=r
        )
        self.paused = Gauge(
            "cardq_paused_partitions", "Partitions paused by backpressure.", registry=r
        )
        self.lag = Gauge(
            "cardq_consumer_lag",
            "Records between the commit point and the partition's high watermark.",
            ["partition"],
            registry=r,
        )
        self.token_fetches = Counter(
            "cardq_token_fetches",
            "Tenant token requests, per Feishu/Lark app.",
            ["app"],
            registry=r,
        )
        self.idempotency_hits = Counter(
            "cardq_idempotency_hits",
            "Requests whose key was already delivered or in flight.",
            ["backend", "bot"],
            registry=r,
        )
        self.dead_letters = Counter(
            "cardq_dead_letters",
            "Dead letters published, by error kind.",
            ["backend", "bot", "reason"],
            registry=r,
        )
        self.key_mismatches = Counter(
            "cardq_key_mismatches",
            "Valid records whose Kafka key is not their destination (no_key, wrong_key).",
            ["backend", "bot", "reason"],
            registry=r,
        )
        self.already_published = Counter(
            "cardq_already_published",
            "Records read again whose result was already on the broker: finished without "
            "a second result.",
            registry=r,
        )
        self.unmarked_results_found = Counter(
            "cardq_unmarked_results_found",
            "Results found on the results topic at an assignment that an owner which died "
            "had published but not yet marked (their records get no second result).",
            registry=r,
        )
        self.jobs_waiting = Gauge(
            "cardq_jobs_waiting",
            "Requests at the head of their lane that wait, by reason: rate_limit (their "
            "budget, or a throttle's reset), retry (a backoff after an error), claim (their "
            "key held by another worker), store (the idempotency store unreachable).",
            ["reason"],
            registry=r,
        )
        self.rate_limited_backlog = Gauge(
            "cardq_rate_limited_backlog",
            "Records held in lanes whose head waits for a rate limit: lag that more workers "
            "cannot clear.",
            registry=r,
        )
        self.ready = Gauge(
            "cardq_ready", "1 when the worker is in the group and not draining.", registry=r
        )
        self.store_reachable = Gauge(
            "cardq_store_reachable",
            "1 while the Redis store answers, 0 while it does not (Redis store only).",
            registry=r,
        )
        self.store_unreachable_seconds = Gauge(
            "cardq_store_unreachable_seconds",
            "How long the Redis store has been unreachable; 0 while it answers.",
            registry=r,
        )
        self.store_errors = Counter(
            "cardq_store_errors",
            "Calls to the Redis store that failed, by operation.",
            ["op"],
            registry=r,
        )
        self.budget_fallback = Gauge(
            "cardq_budget_fallback",
            "1 while the pool's shared budgets run on this pod's share (Redis unreachable).",
            registry=r,
        )
        self.budget_calls = Counter(
            "cardq_budget_calls",
            "Redis calls of the pool's budgets, by script (acquire covers every waiting lane).",
            ["script"],
            registry=r,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: M, *values: str) -> M:
        """``metric.labels(*values)``, memoised: prometheus_client's ``labels`` costs about
        2 µs (a tuple, a lock, a dict) and the hot path calls it five times per request.
        Only for metrics whose children are never removed (not ``lag``)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return cast(M, found)
