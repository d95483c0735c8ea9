"""``cardq``: run the worker, try it locally, send and validate requests.

Exit codes: 0 success, 1 a request or the run failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import __version__, config, intake, tools_cli, validation

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """``env`` is the environment the configuration (its ``CARDQ_*`` overrides and its
    credentials) is read from, once: the process's by default, a mapping in tests."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        # The simulator has its own parser; argparse's REMAINDER would refuse its options.
        from .simulator.cli import main as simulate_main

        return simulate_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    args.env = os.environ if env is None else env
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code = int(args.func(args))
        sys.stdout.flush()
    except config.ConfigError as exc:
        print(f"cardq: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`cardq send … | head -1`): not worth a traceback. Exit 1,
        # as Python's documentation advises (the output was cut short), after pointing
        # stdout at /dev/null so that the interpreter's own last flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
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
    tools_cli.connection_options(send)
    send.add_argument("--topic", help="override kafka.topics.requests")
    send.add_argument(
        "--wait",
        type=_positive_seconds,
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

    # Listed for `cardq --help` only: main() hands `cardq simulate …` to its own parser.
    sub.add_parser("simulate", help="run the platform simulator (see `cardq simulate --help`)")

    tools_cli.register(sub)  # replay, results
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds; got {text}")
    return value


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

    overrides = config.env_overrides(args.env)
    if args.config is None and not overrides:
        print(
            "cardq run: no configuration: give --config FILE or set CARDQ_CONFIG "
            "(nothing was checked)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    settings = config.load(args.config, args.env)
    # Read every credential now, as the backends will: a missing variable or file stops
    # `run` before it joins the group, and `run --check` never passes what `run` refuses.
    credentials = config.check_credentials(settings)
    if args.check:
        _print_summary(settings, args.config, overrides, credentials)
        return EXIT_OK
    configure(settings.observability.log_format, settings.observability.log_level)

    from .consumer import Worker

    async def main() -> None:
        worker = Worker(settings)
        worker.install_signal_handlers()
        await worker.run()

    tune_gc()
    try:
        run_async(main(), args.loop)
    except config.ConfigError as exc:
        # Found at start with the broker (no broker at the address, refused credentials):
        # a user error, exit 2, one line in the configured log format naming the key.
        import structlog

        structlog.get_logger("cardq.worker").error(
            "configuration_error", key=exc.key, reason=exc.reason, message=str(exc)
        )
        return EXIT_USAGE
    except Exception:
        # A crash is logged like every other line (JSON, scrubbed), not left to Python's
        # plain-text traceback on stderr.
        import structlog

        structlog.get_logger("cardq.worker").exception("worker_crashed")
        return EXIT_FAILED
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


def _print_summary(
    settings: config.Settings,
    path: str | None,
    overrides: list[str],
    credentials: list[str],
) -> None:
    """What ``run --check`` checked and what the worker will run with."""
    source = path or "no file (built-in defaults)"
    if overrides:
        source += f" + environment: {', '.join(overrides)}"
    print(f"configuration: {source}")
    k = settings.kafka
    print(
        f"kafka: {k.bootstrap_servers} group={k.group_id} topics="
        f"{k.topics.requests} -> {k.topics.results}, {k.topics.dead_letters} "
        f"security={k.security_protocol}"
    )
    for section in ("delivery", "http", "idempotency"):
        values = dataclasses.asdict(getattr(settings, section))
        print(f"{section}: " + " ".join(f"{key}={_plain(v)}" for key, v in values.items()))
    if not settings.bots:
        print("bots: none configured: every request would be rejected (unknown_bot)")
    for name, bot in settings.bots.items():
        line = f"bot {name}: {bot.backend} {bot.base_url or '(platform default host)'}"
        if bot.app_id:
            line += f" app_id={bot.app_id}"
        if bot.timeout_s is not None:
            line += f" timeout_s={bot.timeout_s:g}"
        for scope in ("destination", "app"):
            windows = getattr(bot.limits, scope)
            if windows is not None:
                line += f" limits.{scope}=" + (
                    ",".join(f"{w.limit}/{w.seconds:g}s" for w in windows) or "none"
                )
        print(line)
    print(f"credentials: {len(credentials)} read ({', '.join(credentials) or 'none needed'})")


def _plain(value: object) -> str:
    """A setting as the summary shows it: a credential reference, never a value."""
    if isinstance(value, dict) and set(value) <= {"env", "file"}:
        kind = "env" if value.get("env") else "file"
        return f"{{{kind}: {value[kind]}}}"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


# ---------------------------------------------------------------------------- validate


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def _validate(args: argparse.Namespace) -> int:
    settings = config.load(args.config, args.env) if args.config else None
    failed = 0
    for path in args.files:
        try:
            request = intake.check(_read(path), settings)
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

    try:
        raw = _read(args.file)
    except OSError as exc:
        print(f"cardq send: cannot read {args.file} ({exc.strerror})", file=sys.stderr)
        return EXIT_USAGE
    settings = config.load(args.config, args.env)
    try:
        request = intake.check(raw, settings if args.config is not None else None)
    except validation.ValidationError as exc:
        print(f"{args.file}: invalid: {exc.field}: {exc.reason} [{exc.code}]", file=sys.stderr)
        return EXIT_FAILED
    bootstrap = args.bootstrap_servers or settings.kafka.bootstrap_servers
    topic = args.topic or settings.kafka.topics.requests
    given_as = "--bootstrap-servers" if args.bootstrap_servers else "kafka.bootstrap_servers"
    outcome = run_async(
        produce_and_wait(settings, bootstrap, topic, request, raw, args.wait, address_key=given_as),
        "asyncio",
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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
