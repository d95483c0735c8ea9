"""Prometheus metrics. Labels stay bounded: backend, bot, status, reason, partition, app.

Never a chat, user or request id: those would make one series per destination and
exhaust Prometheus during exactly the incident storm the dashboards are for.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

M = TypeVar("M", Counter, Gauge, Histogram)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_E2E = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
_WAIT = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Label sets used by several metrics; each label's values are few (see above).
_BOT = ("backend", "bot")
_BOT_REASON = ("backend", "bot", "reason")


class Metrics:
    """One registry per worker, so tests can run several workers in one process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        counter = functools.partial(Counter, registry=r)
        gauge = functools.partial(Gauge, registry=r)
        histogram = functools.partial(Histogram, registry=r)
        self.consumed = counter(
            "cardq_requests_consumed", "Records read from the requests topic.", ["partition"]
        )
        self.results = counter(
            "cardq_results", "Results published, by final status.", ["backend", "bot", "status"]
        )
        self.send_duration = histogram(
            "cardq_send_duration_seconds",
            "One HTTP send to the platform.",
            ["backend"],
            buckets=_LATENCY,
        )
        self.end_to_end = histogram(
            "cardq_end_to_end_seconds",
            "From the request's created_at (or record timestamp) to its result.",
            ["backend"],
            buckets=_E2E,
        )
        self.retries = counter(
            "cardq_retries",
            "Send attempts that will be retried, by reason.",
            _BOT_REASON,
        )
        self.rate_wait = histogram(
            "cardq_rate_limit_wait_seconds",
            "Time a send waited for its rate budget.",
            ["backend"],
            buckets=_WAIT,
        )
        self.in_flight = gauge("cardq_in_flight_sends", "Sends on the wire now.")
        self.buffered = gauge("cardq_buffered_records", "Records read and not yet finished.")
        self.buffered_bytes = gauge(
            "cardq_buffered_bytes", "Bytes of records read and not yet finished."
        )
        self.paused = gauge("cardq_paused_partitions", "Partitions paused by backpressure.")
        self.lag = gauge(
            "cardq_consumer_lag",
            "Records between the commit point and the partition's high watermark.",
            ["partition"],
        )
        self.token_fetches = counter(
            "cardq_token_fetches", "Tenant token requests, per Feishu/Lark app.", ["app"]
        )
        self.idempotency_hits = counter(
            "cardq_idempotency_hits",
            "Requests whose key was already delivered or in flight.",
            _BOT,
        )
        self.dead_letters = counter(
            "cardq_dead_letters",
            "Dead letters published, by error kind.",
            _BOT_REASON,
        )
        self.key_mismatches = counter(
            "cardq_key_mismatches",
            "Valid records whose Kafka key is not their destination (no_key, wrong_key).",
            _BOT_REASON,
        )
        self.already_published = counter(
            "cardq_already_published",
            "Records read again whose result was already on the broker: finished without "
            "a second result.",
        )
        self.unmarked_results_found = counter(
            "cardq_unmarked_results_found",
            "Results found on the results topic at an assignment that an owner which died "
            "had published but not yet marked (their records get no second result).",
        )
        self.jobs_waiting = gauge(
            "cardq_jobs_waiting",
            "Requests at the head of their lane that wait, by reason: rate_limit (their "
            "budget, or a throttle's reset), retry (a backoff after an error), claim (their "
            "key held by another worker), store (the idempotency store unreachable).",
            ["reason"],
        )
        self.rate_limited_backlog = gauge(
            "cardq_rate_limited_backlog",
            "Records held in lanes whose head waits for a rate limit: lag that more workers "
            "cannot clear.",
        )
        self.ready = gauge("cardq_ready", "1 when the worker is in the group and not draining.")
        self.store_reachable = gauge(
            "cardq_store_reachable",
            "1 while the Redis store answers, 0 while it does not (Redis store only).",
        )
        self.store_unreachable_seconds = gauge(
            "cardq_store_unreachable_seconds",
            "How long the Redis store has been unreachable; 0 while it answers.",
        )
        self.store_errors = counter(
            "cardq_store_errors", "Calls to the Redis store that failed, by operation.", ["op"]
        )
        self.budget_fallback = gauge(
            "cardq_budget_fallback",
            "1 while the pool's shared budgets run on this pod's share (Redis unreachable).",
        )
        self.budget_calls = counter(
            "cardq_budget_calls",
            "Redis calls of the pool's budgets, by script (acquire covers every waiting lane).",
            ["script"],
        )
        self.digest_cards = counter(
            "cardq_digest_cards",
            "Digest cards delivered: each carries several queued requests of one digest key.",
            _BOT,
        )
        self.digest_merged = counter(
            "cardq_digest_merged",
            "Requests delivered as a line of a digest card instead of a card of their own.",
            _BOT,
        )
        self.superseded = counter(
            "cardq_superseded",
            "Requests never sent because a newer state of their subject_key replaced them.",
            _BOT,
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
