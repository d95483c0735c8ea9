"""Scenario 6, slow platform: a deep backlog over 12 partitions and a platform that answers
every send in 500 ms. With 512 sends allowed in flight the ceiling is ~1,024 delivered/s;
what the worker reaches depends on how many destinations its buffer holds
(``worker/cardq/flow.py``).
"""

from __future__ import annotations

from typing import Any

from . import harness as h
from .scenarios import Options, report, target

LATENCY_MS = 500
MAX_IN_FLIGHT = 512


async def slow_platform(opts: Options) -> dict[str, Any]:
    """120,000 MindOffice requests over 1,000 groups queued in 12 partitions before the worker
    starts; delivered/s measured after a warm-up, with the sends in flight sampled."""
    n, partitions = (6000, 4) if opts.quick else (120_000, 12)
    run_s, warm_s = (6.0, 1.0) if opts.quick else (50.0, 10.0)
    params = {
        "queued_requests": n,
        "destinations": 1000,
        "partitions": partitions,
        "simulator": f"no limits, {LATENCY_MS} ms per send",
        "max_in_flight": MAX_IN_FLIGHT,
        "worker_run_s": run_s,
        "warm_up_s": warm_s,
        "worker_config": "defaults (max_buffered_records 20,000)",
    }
    async with h.backlog("slow", requests=n, partitions=partitions, latency_ms=LATENCY_MS) as run:
        port = run.metrics_port
        in_flight: list[float] = []
        paused: list[float] = []
        sends: list[tuple[float, float]] = []  # (sum of send seconds, sends) at each sample

        async def sample(s: h.Sample) -> None:
            if s.accepted == 0:
                return
            for name, into in (
                ("cardq_in_flight_sends", in_flight),
                ("cardq_paused_partitions", paused),
            ):
                value = await h.scrape(port, name)
                if value is not None:
                    into.append(value)
            total = await h.scrape_total(port, "cardq_send_duration_seconds_sum")
            count = await h.scrape_total(port, "cardq_send_duration_seconds_count")
            if total is not None and count is not None:
                sends.append((total, count))

        began: list[float] = []

        def done(s: h.Sample) -> bool:
            """``run_s`` after the first delivery (joining the group is not measured)."""
            if s.accepted and not began:
                began.append(s.at)
            return s.accepted >= n or (bool(began) and s.at - began[0] >= run_s)

        samples = await h.follow(
            run.sim, run.worker, until=done, timeout=run_s + 60, every=0.5, on_sample=sample
        )
    queued, produce_s, code = run.queued, run.produce_s, run.exit_code
    first = next((s for s in samples if s.accepted > 0), samples[-1])
    last = samples[-1]
    warm = next((s for s in samples if s.at >= first.at + warm_s), last)
    if warm is last:  # the backlog ran out during the warm-up (quick sizes)
        warm = first
    seconds = max(last.at - warm.at, 1e-9)
    rate = (last.accepted - warm.accepted) / seconds
    cpu = last.cpu_s - warm.cpu_s
    delivered = last.accepted - warm.accepted
    # How long a send took as the worker saw it (500 ms on an idle machine): with the sends
    # in flight it explains the rate (rate ≈ in flight ÷ send time), and 512 ÷ it is the
    # ceiling on this machine at this hour.
    send_s = None
    if len(sends) >= 2 and sends[-1][1] > sends[0][1]:
        send_s = (sends[-1][0] - sends[0][0]) / (sends[-1][1] - sends[0][1])
    data = {
        "mean_send_s": round(send_s, 3) if send_s else None,
        "ceiling_per_s": round(MAX_IN_FLIGHT / send_s, 1) if send_s else None,
        "queued": queued,
        "produce_s": round(produce_s, 1),
        "delivered_during_run": last.accepted,
        "window_s": round(seconds, 1),
        "delivered_per_s": round(rate, 1),
        "cpu_ms_per_delivered": round(1000 * cpu / delivered, 3) if delivered else None,
        "in_flight_mean": round(sum(in_flight) / len(in_flight), 1) if in_flight else None,
        "in_flight_peak": max(in_flight, default=0.0),
        "paused_partitions_mean": round(sum(paused) / len(paused), 2) if paused else None,
        "exit_code": code,
    }
    tbl = h.table(
        [
            "queued",
            "partitions",
            "delivered/s",
            "sends in flight (mean, peak)",
            "send s (mean)",
            "512 ÷ send s",
            "CPU ms/req",
        ],
        [
            [
                n,
                partitions,
                data["delivered_per_s"],
                f"{data['in_flight_mean']}, {data['in_flight_peak']:.0f}",
                data["mean_send_s"],
                data["ceiling_per_s"],
                data["cpu_ms_per_delivered"],
            ]
        ],
    )
    targets = [
        target(
            "slow platform: delivered/s at 500 ms per send, 512 in flight",
            ">= 800/s",
            f"{rate:,.0f}/s",
            rate >= 800,
            f"mean {data['in_flight_mean']} sends in flight, each {data['mean_send_s']} s",
        )
    ]
    return report("slow_platform", "6. Slow platform", params, data, tbl, targets)
