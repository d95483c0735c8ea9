"""``cardq``: run the worker, try it locally, send and validate requests.

Exit codes: 0 success, 1 a request or the run failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import __version__, config, validation

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.func(args)
    except config.ConfigError as exc:
        print(f"cardq: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cardq",
        description="Deliver card messages from Kafka to Feishu/Lark and MindOffice.",
    )
    parser.add_argument("--version", action="version", version=f"cardq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the worker (production)")
    run.add_argument(
        "--config",
        "-c",
        default=os.environ.get("CARDQ_CONFIG"),
        help="YAML configuration file (default: $CARDQ_CONFIG)",
    )
    run.add_argument(
        "--check",
        action="store_true",
        help="load and check the configuration, print a summary, exit",
    )
    _loop_option(run)
    run.set_defaults(func=_run)

    dev = sub.add_parser(
        "dev",
        help="local demo: broker + simulator + worker, deliver the samples, print results",
    )
    dev.add_argument(
        "--once",
        action="store_true",
        help="exit when every sample has its result (0 if all as expected)",
    )
    dev.add_argument(
        "--samples",
        type=Path,
        default=None,
        help="directory of request JSON files (default: the packaged samples)",
    )
    dev.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="with --once: give up after this many seconds (default 60)",
    )
    dev.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port for /metrics /healthz /readyz (default: a free port)",
    )
    _loop_option(dev)
    dev.set_defaults(func=_dev)

    send = sub.add_parser("send", help="validate a request and produce it to the requests topic")
    send.add_argument("file", help="request JSON file, or - for standard input")
    send.add_argument(
        "--config",
        "-c",
        default=os.environ.get("CARDQ_CONFIG"),
        help="worker configuration for the broker and topic",
    )
    send.add_argument("--bootstrap-servers", help="override kafka.bootstrap_servers")
    send.add_argument("--topic", help="override kafka.topics.requests")
    send.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        default=None,
        help="wait up to SECONDS for the request's result and print it",
    )
    send.set_defaults(func=_send)

    check = sub.add_parser("validate", help="check requests offline; print the field and reason")
    check.add_argument("files", nargs="+", help="request JSON files, or - for standard input")
    check.add_argument(
        "--config", "-c", default=None, help="also check that each request's bot is configured"
    )
    check.set_defaults(func=_validate)

    simulate = sub.add_parser(
        "simulate",
        help="run the platform simulator (see `cardq simulate --help`)",
        add_help=False,
    )
    simulate.add_argument("rest", nargs=argparse.REMAINDER)
    simulate.set_defaults(func=_simulate)
    return parser


def _loop_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop (auto: uvloop when installed)",
    )


def run_async(coro: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """Run on uvloop when available: it roughly halves the event loop's share of CPU."""
    if loop in ("auto", "uvloop"):
        try:
            import uvloop

            return uvloop.run(coro)
        except ImportError:
            if loop == "uvloop":
                raise
    return asyncio.run(coro)


# ---------------------------------------------------------------------------- run


def _run(args: argparse.Namespace) -> int:
    from .logging import configure

    settings = config.load(args.config)
    configure(settings.observability.log_format, settings.observability.log_level)
    if args.check:
        _print_summary(settings)
        return EXIT_OK

    from .consumer import Worker

    async def main() -> None:
        worker = Worker(settings)
        worker.install_signal_handlers()
        await worker.run()

    tune_gc()
    run_async(main(), args.loop)
    return EXIT_OK


def tune_gc() -> None:
    """Collect cycles rarely: the worker's heap is large and long-lived, its garbage young.

    With CPython's default thresholds (700, 10, 10) a worker holding 20,000 buffered records
    ran a full collection every ~1,000 deliveries, each walking the whole heap: 30% of its
    CPU went to the collector (bench/README.md, "Profiles"). Almost everything the hot path
    allocates is freed by reference counting; the collector is only for cycles, and one
    pass per 50,000 new container objects still finds them within seconds. ``freeze``
    moves what startup built (modules, settings, clients) out of every later collection.
    """
    import gc

    gc.freeze()
    gc.set_threshold(50_000, 10, 10)


def _print_summary(settings: config.Settings) -> None:
    k = settings.kafka
    print(
        f"kafka: {k.bootstrap_servers} group={k.group_id} topics="
        f"{k.topics.requests} -> {k.topics.results}, {k.topics.dead_letters}"
    )
    print(f"idempotency: {settings.idempotency.store}")
    for name, bot in settings.bots.items():
        print(f"bot {name}: {bot.backend} {bot.base_url or '(platform default host)'}")


# ---------------------------------------------------------------------------- validate


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def _validate(args: argparse.Namespace) -> int:
    settings = config.load(args.config) if args.config else None
    failed = 0
    for path in args.files:
        try:
            request = validation.decode(_read(path))
            if settings is not None:
                bot = settings.bots.get(request.bot)
                if bot is None:
                    raise validation.ValidationError("bot", f"no bot named {request.bot!r}")
                if bot.backend != request.backend:
                    raise validation.ValidationError(
                        "backend", f"bot {request.bot!r} is a {bot.backend} bot"
                    )
        except OSError as exc:
            print(f"{path}: cannot read ({exc.strerror})", file=sys.stderr)
            failed += 1
        except validation.ValidationError as exc:
            print(f"{path}: invalid: {exc.field}: {exc.reason} [{exc.code}]")
            failed += 1
        else:
            print(f"{path}: ok ({request.destination})")
    return EXIT_FAILED if failed else EXIT_OK


# ---------------------------------------------------------------------------- send


def _send(args: argparse.Namespace) -> int:
    from .devtools.client import produce_and_wait

    raw = _read(args.file)
    try:
        request = validation.decode(raw)
    except validation.ValidationError as exc:
        print(f"{args.file}: invalid: {exc.field}: {exc.reason} [{exc.code}]", file=sys.stderr)
        return EXIT_FAILED
    settings = config.load(args.config)
    bootstrap = args.bootstrap_servers or settings.kafka.bootstrap_servers
    topic = args.topic or settings.kafka.topics.requests
    outcome = run_async(
        produce_and_wait(settings, bootstrap, topic, request, raw, args.wait), "asyncio"
    )
    return outcome


# ---------------------------------------------------------------------------- dev, simulate


def _dev(args: argparse.Namespace) -> int:
    from .devtools.dev import run_dev

    code = run_async(
        run_dev(
            once=args.once,
            samples=args.samples,
            timeout=args.timeout,
            metrics_port=args.metrics_port,
        ),
        args.loop,
    )
    return code


def _simulate(args: argparse.Namespace) -> int:
    from .simulator.cli import main as simulate_main

    return simulate_main(args.rest)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
