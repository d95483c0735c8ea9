"""The simulator in its own process, with :class:`SimulatorConfig` fields the CLI has no
option for (``python -m worker.simulator`` cannot set the Feishu app limits, for one).

``python -m bench.simproc [the CLI's options] --config '{"app_limits": [[10000, 1.0]]}'``
runs :func:`worker.simulator.serve`, exactly what ``cardq simulate`` runs, with the
configuration the CLI options build, updated by the JSON object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys

import orjson

from worker.simulator import SimulatorConfig, serve
from worker.simulator.cli import parser


def main(argv: list[str] | None = None) -> int:
    p = parser()
    p.prog = "python -m bench.simproc"
    p.add_argument("--config", default="{}", help="JSON object of SimulatorConfig fields")
    args = p.parse_args(argv)
    config = SimulatorConfig(
        enforce_limits=not args.no_limits,
        time_scale=args.time_scale,
        token_lifetime_s=args.token_lifetime,
        latency_s=args.latency_ms / 1000.0,
        record_accepted=not args.no_record,
    )
    extra = orjson.loads(args.config)
    known = {f.name for f in dataclasses.fields(SimulatorConfig)}
    for name, value in extra.items():
        if name not in known:
            print(f"bench.simproc: unknown SimulatorConfig field {name!r}", file=sys.stderr)
            return 2
        if isinstance(value, list):  # limits: [[limit, seconds], ...] -> tuples
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        setattr(config, name, value)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
