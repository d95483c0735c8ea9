from __future__ import annotations

from cardq.offsets import OffsetTracker


def test_commit_point_is_lowest_unfinished() -> None:
    t = OffsetTracker()
    for offset in range(10, 15):
        t.add("p0", offset, 100)
    assert t.to_commit({"p0"}) == {"p0": 10}
    t.finish("p0", 12, 100)
    t.finish("p0", 13, 100)
    assert t.to_commit({"p0"}) == {"p0": 10}  # 10 is still open
    t.finish("p0", 10, 100)
    assert t.to_commit({"p0"}) == {"p0": 11}
    t.finish("p0", 11, 100)
    assert t.to_commit({"p0"}) == {"p0": 14}
    t.committed({"p0": 14})
    assert t.to_commit({"p0"}) == {}
    t.finish("p0", 14, 100)
    assert t.to_commit({"p0"}) == {"p0": 15}
    assert t.buffered == 0 and t.buffered_bytes == 0


def test_gaps_in_offsets_are_fine() -> None:
    t = OffsetTracker()
    for offset in (3, 7, 9):
        t.add("p", offset, 1)
    t.finish("p", 7, 1)
    t.finish("p", 3, 1)
    assert t.to_commit({"p"}) == {"p": 9}


def test_never_commits_unassigned_partitions() -> None:
    t = OffsetTracker()
    t.add("p0", 0, 1)
    t.add("p1", 0, 1)
    t.finish("p0", 0, 1)
    t.finish("p1", 0, 1)
    assert t.to_commit({"p1"}) == {"p1": 1}


def test_forget_returns_unfinished_and_ignores_late_finish() -> None:
    t = OffsetTracker()
    for offset in range(5):
        t.add("p0", offset, 10)
    t.finish("p0", 0, 10)
    assert t.forget({"p0"}) == 4
    assert t.buffered == 0 and t.buffered_bytes == 0
    t.finish("p0", 1, 10)  # a send that finished after revocation
    assert t.buffered == 0
