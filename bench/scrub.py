"""Scenario 7, scrubbing: what masking secrets costs per log field once a worker has
remembered 100,000 values (a day of one signed bot busy every second, bounded by
``cardq.secrets.MAX_VALUES``), with the old loop over every value beside it.

A micro-benchmark in this process (no broker, no worker): ``Scrubber`` is what every log
line of the worker goes through, field by field.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from cardq.secrets import MASK, SIGNATURE_TTL_S, Scrubber

from . import harness as h
from .scenarios import Options, report, target

#: The fields of a ``send_retry`` line, as the worker writes them.
FIELDS = {
    "event": "send_retry",
    "request_id": "r-20261201-000123456",
    "destination": "feishu_webhook/hook-17/webhook",
    "error": "Unavailable: the platform answered HTTP 503 (code 0, msg 'service unavailable'), "
    "retrying in 0.8 s",
    "timestamp": "2026-12-01T21:40:12.123456Z",
}
TRACEBACK = "\n".join(
    f'  File "/app/cardq/pipeline.py", line {100 + i}, in send\n    await backend.send(request)'
    for i in range(25)
)


def signature(i: int) -> str:
    return base64.b64encode(hashlib.sha256(i.to_bytes(8, "big")).digest()).decode()


def per_call_us(fn: Callable[[str], object], text: str, seconds: float) -> float:
    """Mean µs per call over repeated batches lasting about ``seconds``."""
    calls, started = 0, time.perf_counter()
    batch = 200
    while True:
        for _ in range(batch):
            fn(text)
        calls += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return 1e6 * elapsed / calls


def old_scrub(values: set[str]) -> Callable[[str], str]:
    """The loop this replaced: every remembered value tested against every field."""

    def scrub(text: str) -> str:
        for value in values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    return scrub


def scrub_cost(opts: Options) -> dict[str, Any]:
    count = 2_000 if opts.quick else 100_000
    seconds = 0.05 if opts.quick else 0.5
    values = [signature(i) for i in range(count)]
    gc.collect()
    tracemalloc.start()  # once for the memory (tracing slows every allocation)...
    traced = Scrubber(max_values=count)
    for value in values:
        traced.remember(value, ttl_s=SIGNATURE_TTL_S)
    memory_mb = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    del traced
    scrubber = Scrubber(max_values=count)  # ...and once for the time
    started = time.perf_counter()
    for value in values:
        scrubber.remember(value, ttl_s=SIGNATURE_TTL_S)
    remember_us = 1e6 * (time.perf_counter() - started) / count
    assert len(scrubber) == count
    leak = f"sign={values[count // 2]}&timestamp=1764625212"
    assert values[count // 2] not in scrubber.scrub(leak)

    rows: list[list[Any]] = []
    per_field: dict[str, float] = {}
    for name, text in [*FIELDS.items(), ("a value to mask", leak), ("traceback", TRACEBACK)]:
        us = per_call_us(scrubber.scrub, text, seconds)
        per_field[name] = round(us, 2)
        rows.append([name, len(text), round(us, 2)])
    line_fields = [per_field[name] for name in FIELDS]
    mean_us = sum(line_fields) / len(line_fields)
    old = old_scrub(set(values))
    old_us = per_call_us(old, FIELDS["error"], seconds)
    rows.append(["error (old loop over every value)", len(FIELDS["error"]), round(old_us, 1)])
    data = {
        "remembered_values": count,
        "remember_us_per_value": round(remember_us, 2),
        "index_memory_mb": round(memory_mb, 1),
        "us_per_field": per_field,
        "us_per_field_mean_of_a_line": round(mean_us, 2),
        "old_loop_us_error_field": round(old_us, 1),
    }
    tbl = h.table(["field", "characters", "µs per scrub"], rows)
    tbl += (
        f"\n\n{count:,} values remembered: {remember_us:.2f} µs each, "
        f"{memory_mb:.1f} MB for the values and their index"
    )
    targets = [
        target(
            f"scrub cost per field, {count:,} remembered values",
            "<= 20 µs",
            f"{mean_us:.1f} µs",
            mean_us <= 20,
            f"mean over a send_retry line's fields; the old loop: {old_us:,.0f} µs",
        )
    ]
    params = {"remembered_values": count, "value": "44-character webhook signatures"}
    return report("scrub", "7. Scrubbing", params, data, tbl, targets)
