"""Which offset of each partition is safe to commit.

Records of one partition finish out of order (lanes run concurrently), so the commit
point is the lowest offset not yet finished: everything below it has its result
acknowledged by the broker. Records above it that already finished are not sent again
after a restart, because the idempotency store remembers them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class PartitionOffsets:
    pending: deque[int] = field(default_factory=deque)  # offsets seen, in order
    finished: set[int] = field(default_factory=set)  # finished but not yet at the front
    next_offset: int | None = None  # one past the last offset seen
    committed: int | None = None
    buffered_bytes: int = 0

    def add(self, offset: int, size: int) -> None:
        self.pending.append(offset)
        self.next_offset = offset + 1
        self.buffered_bytes += size

    def finish(self, offset: int, size: int) -> None:
        self.buffered_bytes -= size
        pending = self.pending
        if pending and pending[0] == offset:
            pending.popleft()
            finished = self.finished
            while pending and pending[0] in finished:
                finished.discard(pending.popleft())
        else:
            self.finished.add(offset)

    @property
    def buffered(self) -> int:
        return len(self.pending) - len(self.finished)

    def commit_point(self) -> int | None:
        if self.pending:
            return self.pending[0]
        return self.next_offset


class OffsetTracker:
    """Per-partition :class:`PartitionOffsets`, keyed by anything hashable (a TopicPartition)."""

    def __init__(self) -> None:
        self.partitions: dict[object, PartitionOffsets] = {}
        self.buffered = 0
        self.buffered_bytes = 0

    def add(self, tp: object, offset: int, size: int) -> None:
        state = self.partitions.get(tp)
        if state is None:
            state = self.partitions[tp] = PartitionOffsets()
        state.add(offset, size)
        self.buffered += 1
        self.buffered_bytes += size

    def finish(self, tp: object, offset: int, size: int) -> None:
        state = self.partitions.get(tp)
        if state is None:  # the partition was revoked and forgotten meanwhile
            return
        state.finish(offset, size)
        self.buffered -= 1
        self.buffered_bytes -= size

    def to_commit(self, assigned: set[object]) -> dict[object, int]:
        """Commit points that moved, for partitions still assigned to this member only."""
        out: dict[object, int] = {}
        for tp, state in self.partitions.items():
            if tp not in assigned:
                continue
            point = state.commit_point()
            if point is not None and point != state.committed:
                out[tp] = point
        return out

    def committed(self, offsets: dict[object, int]) -> None:
        for tp, offset in offsets.items():
            state = self.partitions.get(tp)
            if state is not None:
                state.committed = offset

    def forget(self, tps: set[object]) -> int:
        """Drop revoked partitions; returns how many unfinished records they held."""
        left = 0
        for tp in tps:
            state = self.partitions.pop(tp, None)
            if state is not None:
                left += state.buffered
                self.buffered -= state.buffered
                self.buffered_bytes -= state.buffered_bytes
        return left
