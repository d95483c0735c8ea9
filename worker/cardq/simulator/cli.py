"""``cardq simulate``: run the simulator as a process until SIGINT or SIGTERM.

Prints one line with the base URL first (a parent process reads it to learn the port),
then a summary line every ``--summary-every`` seconds; nothing per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from pathlib import Path
from typing import TextIO

import orjson

from . import _credentials
from ._model import SimulatorConfig, Stats
from ._server import Simulator

DEFAULT_PORT = 8650


async def serve(
    host: str,
    port: int,
    config: SimulatorConfig | None = None,
    credentials_file: str | Path | None = None,
    *,
    error_ratio: float = 0.0,
    stop: asyncio.Event | None = None,
    summary_every: float = 10.0,
    out: TextIO | None = None,
) -> None:
    """Serve until ``stop`` is set, or SIGINT/SIGTERM when ``stop`` is not given.

    A bad credentials file raises :class:`ValueError` before the server listens.
    """
    out = sys.stdout if out is None else out
    sim = Simulator(config)
    sim.faults.error_ratio = error_ratio
    if credentials_file is not None:
        _credentials.apply(sim, _credentials.load_file(credentials_file))
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
    base_url = await sim.start(host, port)
    print(f"cardq simulator listening on {base_url}", file=out, flush=True)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), summary_every if summary_every > 0 else None)
            if summary_every > 0 and not stop.is_set():
                print(summary(sim.stats), file=out, flush=True)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await sim.stop()


def summary(stats: Stats) -> str:
    parts = [f"accepted={sum(stats.accepted.values())}"]
    parts += [f"{backend}={n}" for backend, n in sorted(stats.accepted.items())]
    parts += [
        f"throttled={sum(stats.throttle_answers.values())}",
        f"rejected={sum(stats.rejected.values())}",
        f"duplicates={sum(stats.duplicates.values())}",
        f"server_errors={stats.server_errors}",
        f"timeouts={stats.timeouts}",
        f"requests={stats.requests_total}",
    ]
    return " ".join(parts)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cardq simulate",
        description="Run a local Feishu/Lark + MindOffice simulator until SIGINT/SIGTERM.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    p.add_argument(
        "--credentials",
        metavar="FILE",
        help="YAML: webhooks: {TOKEN: SECRET|null}, apps: {APP_ID: SECRET}, "
        "mindoffice: {APP_ID: SECRET}",
    )
    p.add_argument("--no-limits", action="store_true", help="do not enforce rate limits")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply every rate window length (0.1: 5 per 0.1 s)",
    )
    p.add_argument("--token-lifetime", type=float, default=7200.0, metavar="SECONDS")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")
    p.add_argument(
        "--error-ratio", type=float, default=0.0, help="share of sends answered HTTP 500 (0..1)"
    )
    p.add_argument(
        "--summary-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="print accepted/throttled counts this often (0: never)",
    )
    p.add_argument(
        "--no-record",
        action="store_true",
        help="keep counters only, not every accepted message (long runs)",
    )
    p.add_argument(
        "--config",
        metavar="JSON",
        default="{}",
        help="other SimulatorConfig fields as a JSON object, e.g. "
        '\'{"app_limits": [[10000, 1.0]], "webhook_throttle_answer": "9499"}\'',
    )
    return p


def apply_overrides(config: SimulatorConfig, text: str) -> None:
    """``--config``: set SimulatorConfig fields by name; limits as [[limit, seconds], …]."""
    extra = orjson.loads(text)
    if not isinstance(extra, dict):
        raise ValueError("--config must be a JSON object")
    known = {f.name for f in dataclasses.fields(SimulatorConfig)}
    for name, value in extra.items():
        if name not in known:
            raise ValueError(f"--config: unknown SimulatorConfig field {name!r}")
        if isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        setattr(config, name, value)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.time_scale <= 0:
        print("cardq simulate: --time-scale must be positive", file=sys.stderr)
        return 2
    if not 0 <= args.error_ratio <= 1:
        print("cardq simulate: --error-ratio must be between 0 and 1", file=sys.stderr)
        return 2
    config = SimulatorConfig(
        enforce_limits=not args.no_limits,
        time_scale=args.time_scale,
        token_lifetime_s=args.token_lifetime,
        latency_s=args.latency_ms / 1000.0,
        record_accepted=not args.no_record,
    )
    try:
        apply_overrides(config, args.config)
    except (ValueError, orjson.JSONDecodeError) as exc:
        print(f"cardq simulate: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(
            serve(
                args.host,
                args.port,
                config,
                args.credentials,
                error_ratio=args.error_ratio,
                summary_every=args.summary_every,
            )
        )
    except ValueError as exc:
        print(f"cardq simulate: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cardq simulate: cannot listen on {args.host}:{args.port} ({exc})", file=sys.stderr)
        return 1
    return 0
