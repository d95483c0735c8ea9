"""Generated requests, and a producer process for the large backlogs.

``python -m bench.produce BOOTSTRAP KIND FIRST COUNT`` produces requests FIRST..FIRST+COUNT-1
of KIND to the requests topic; several run at once to fill a 1,000,000-record backlog
quickly. Records are spliced from a pre-encoded template (no per-record JSON encoding).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import orjson

from .harness import CARD, produce

GROUPS = 1000

_MIND = (
    b'{"version":1,"request_id":"%s","backend":"mindoffice_group","bot":"mind",'
    b'"target":{"group_id":"%s"},"msg_type":"interactive","content":' + orjson.dumps(CARD) + b"}"
)


def group_of(i: int, groups: int = GROUPS) -> str:
    return f"g{i % groups:04d}"


def mind_records(
    prefix: str, first: int, count: int, groups: int = GROUPS
) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)``: MindOffice card requests spread round-robin over ``groups`` groups,
    keyed by destination so each group's requests stay in order in one partition."""
    for i in range(first, first + count):
        group = group_of(i, groups)
        rid = f"{prefix}{i:07d}".encode()
        yield b"mindoffice_group/mind/group:" + group.encode(), _MIND % (rid, group.encode())


def main(argv: list[str]) -> int:
    bootstrap, kind, first, count = argv[0], argv[1], int(argv[2]), int(argv[3])
    if kind != "mind":
        print(f"unknown kind {kind!r}", file=sys.stderr)
        return 2
    acked = asyncio.run(produce(bootstrap, mind_records("b", first, count)))
    print(acked)  # every send's future resolved: acknowledged by the broker
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
