"""The on-call commands ``cardq replay`` and ``cardq results``: their options and exit codes.

Kept out of ``cli.py`` so that file only registers them; the Kafka work lives in
``replay.py``, ``results_cli.py`` and ``topic_reader.py``, imported when a command runs.
Exit codes as everywhere in cardq: 0 done, 1 something asked for was not found or not
sent, 2 bad usage or configuration (a message naming the option, never a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from . import config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(sub: Any) -> None:
    """Add ``replay`` and ``results`` to the ``cardq`` subcommands."""
    replay = sub.add_parser(
        "replay",
        help="produce chosen dead letters' original requests back to the requests topic",
        description=(
            "Read the dead-letter topic and produce the original request of each matching "
            "dead letter (latest per request id) back to the requests topic, unchanged: same "
            "key, same request_id and idempotency_key, so nothing already delivered is sent "
            "again. Each replayed record carries the header cardq-replay-of: "
            "topic/partition/offset of the original. At least one filter, or --all."
        ),
    )
    connection_options(replay)
    replay.add_argument(
        "--reason",
        action="append",
        default=[],
        metavar="R",
        help="error kind (rejected, throttled, unavailable, auth, expired, invalid), "
        "error code (retries_exhausted, …) or platform code (230002); repeatable",
    )
    replay.add_argument("--backend", action="append", default=[], help="repeatable")
    replay.add_argument("--bot", action="append", default=[], help="repeatable")
    replay.add_argument(
        "--request-id", action="append", default=[], metavar="ID", help="repeatable"
    )
    replay.add_argument(
        "--since", metavar="TIME", help="dead-lettered at or after: 30m, 2h, 1d or ISO 8601"
    )
    replay.add_argument("--until", metavar="TIME", help="dead-lettered before: same forms")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.add_argument(
        "--dry-run", action="store_true", help="list what would be sent; send nothing"
    )
    replay.add_argument("--from-topic", help="override kafka.topics.dead_letters")
    replay.add_argument("--to-topic", help="override kafka.topics.requests")
    replay.set_defaults(func=_replay)

    results = sub.add_parser(
        "results",
        help="look up results by request id, or tail the results topic",
        description=(
            "Print the results of the given request ids (or, with none, every result) read "
            "from --since to the end of the results topic; --follow keeps printing new ones."
        ),
    )
    connection_options(results)
    results.add_argument("request_ids", nargs="*", metavar="REQUEST_ID")
    results.add_argument(
        "--since", metavar="TIME", default="24h", help="30m, 2h, 1d or ISO 8601 (default 24h)"
    )
    results.add_argument("--status", action="append", default=[], help="repeatable")
    results.add_argument("--backend", action="append", default=[], help="repeatable")
    results.add_argument("--bot", action="append", default=[], help="repeatable")
    results.add_argument("--follow", "-f", action="store_true", help="keep printing new results")
    results.add_argument("--json", action="store_true", help="one JSON result per line")
    results.add_argument("--topic", help="override kafka.topics.results")
    results.set_defaults(func=_results)


def connection_options(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--bootstrap-servers``, the same for every command that talks to Kafka."""
    parser.add_argument(
        "--config",
        "-c",
        default=os.environ.get("CARDQ_CONFIG"),
        help="worker configuration for the broker, security and topics (default: $CARDQ_CONFIG)",
    )
    parser.add_argument("--bootstrap-servers", help="override kafka.bootstrap_servers")


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _replay(args: argparse.Namespace) -> int:
    from . import replay, topic_reader

    settings = config.load(args.config)
    since = topic_reader.parse_time(args.since, "--since") if args.since else None
    until = topic_reader.parse_time(args.until, "--until") if args.until else None
    filters = replay.Filters(
        reasons=frozenset(args.reason),
        backends=frozenset(args.backend),
        bots=frozenset(args.bot),
        request_ids=frozenset(args.request_id),
        since_ms=topic_reader.to_ms(since),
        until_ms=topic_reader.to_ms(until),
    )
    if filters.empty and not args.all:
        raise config.ConfigError(
            "replay",
            "name what to replay (--reason, --backend, --bot, --request-id, "
            "--since, --until) or pass --all",
        )
    options = topic_reader.client_options(settings, args.bootstrap_servers)
    source = args.from_topic or settings.kafka.topics.dead_letters
    target = args.to_topic or settings.kafka.topics.requests
    progress = replay.Progress()

    def warn(text: str) -> None:
        print(f"cardq replay: {text}", file=sys.stderr)

    async def main() -> int:
        _, chosen = await replay.choose(options, source, filters, progress, warn)
        truncated = [c for c in chosen if c.truncated]
        if args.dry_run or not chosen:
            for item in chosen:
                print(item.describe())
            verb = "would replay" if args.dry_run else "replayed"
            print(f"{verb} {len(chosen) - len(truncated)} to {target}", file=sys.stderr)
            return EXIT_OK
        sent = await replay.send(options, target, chosen, progress, print)
        for item in truncated:
            warn(
                f"not replayed {item.identity}: the dead letter holds only a prefix; "
                f"read the original at {item.origin}"
            )
        return EXIT_OK if not truncated and sent == len(chosen) else EXIT_FAILED

    try:
        code: int = _run(main())
    except topic_reader.TopicMissing as exc:
        print(f"cardq replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return code


def _results(args: argparse.Namespace) -> int:
    from . import results_cli, topic_reader

    settings = config.load(args.config)
    since = topic_reader.parse_time(args.since, "--since")
    wanted = frozenset(args.request_ids)
    filters = results_cli.ResultFilters(
        request_ids=wanted,
        statuses=frozenset(args.status),
        backends=frozenset(args.backend),
        bots=frozenset(args.bot),
    )
    options = topic_reader.client_options(settings, args.bootstrap_servers)
    topic = args.topic or settings.kafka.topics.results

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        seen = _run(
            results_cli.show(
                options,
                topic,
                filters,
                since_ms=topic_reader.to_ms(since),
                follow=args.follow,
                as_json=args.json,
                out=out,
            )
        )
    except topic_reader.TopicMissing as exc:
        print(f"cardq results: {exc}", file=sys.stderr)
        return EXIT_USAGE
    missing = sorted(wanted - seen)
    for request_id in missing:
        print(f"cardq results: no result for {request_id} since {args.since}", file=sys.stderr)
    return EXIT_FAILED if missing else EXIT_OK
