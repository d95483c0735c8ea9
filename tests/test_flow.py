"""The buffer shared fairly across partitions (``cardq.flow.plan``): which partitions to
pause and resume, as a pure function of what each one holds and still has to read."""

from __future__ import annotations

from cardq.flow import Bound, Held, backlog, decide, plan

BOUND = Bound(max_records=1200, max_bytes=1_000_000, resume_ratio=0.5)


def deep(records: int, size: int = 0) -> Held:
    return Held(records, size, backlog=10_000)


def test_each_partition_with_a_backlog_is_paused_at_its_share_not_at_the_bound() -> None:
    held = {p: deep(0) for p in range(12)}
    held[0] = deep(100)  # the share: 1200 / 12
    held[1] = deep(99)
    decided = plan(held, set(), BOUND)
    assert decided.sharing == 12
    assert decided.pause == {0} and not decided.resume


def test_a_paused_partition_resumes_below_resume_ratio_of_its_share() -> None:
    held = {p: deep(90) for p in range(12)}  # share: 100
    held[3] = deep(50)
    held[4] = deep(49)
    decided = plan(held, {3, 4}, BOUND)
    assert decided.resume == {4} and not decided.pause


def test_partitions_with_nothing_to_read_leave_their_share_to_the_others() -> None:
    held = {p: Held(0, 0, backlog=0) for p in range(12)}
    held[7] = deep(1000)  # the only busy partition may fill most of the buffer
    assert plan(held, set(), BOUND).pause == set()
    assert plan(held, set(), BOUND).sharing == 1
    held[7] = deep(1200)
    assert plan(held, set(), BOUND).pause == set(range(12))  # at the bound: everything


def test_unknown_backlog_counts_as_wanting_more() -> None:
    held = {p: Held(0, 0, backlog=None) for p in range(4)}
    held[0] = Held(300, 0, backlog=None)
    decided = plan(held, set(), BOUND)
    assert decided.sharing == 4 and decided.pause == {0}


def test_the_byte_bound_is_shared_the_same_way() -> None:
    held = {p: deep(1, size=0) for p in range(4)}
    held[2] = deep(1, size=250_000)  # a quarter of the bytes, one record
    assert plan(held, set(), BOUND).pause == {2}


def test_at_the_bound_everything_pauses_and_nothing_resumes() -> None:
    held = {p: deep(0) for p in range(4)}
    held[0] = deep(1250)  # a fetch overshot
    decided = plan(held, {1}, BOUND)
    assert decided.pause == {0, 2, 3} and not decided.resume


def test_below_the_share_nothing_changes() -> None:
    held = {p: deep(10 * p) for p in range(4)}
    decided = plan(held, set(), BOUND)
    assert not decided.pause and not decided.resume


def test_the_backlog_is_unknown_until_both_ends_are_known() -> None:
    assert backlog(None, 50) is None
    assert backlog(40, None) is None
    assert backlog(40, 50) == 10
    assert backlog(60, 50) == 0  # a high watermark sampled before the last fetch


def test_decide_builds_each_partition_from_the_loops_state() -> None:
    """What the loop knows (buffered records and bytes, the next offset to read, the high
    watermark) becomes the plan: a partition with nothing buffered and nothing left to read
    gives its share to the others; one never read wants more (backlog unknown)."""
    bound = Bound(max_records=100, max_bytes=1_000_000, resume_ratio=0.5)
    assigned = ["busy", "idle", "new"]
    buffered = {"busy": (50, 500), "idle": (0, 0)}
    read = {"busy": 100, "idle": 7}
    highwater: dict[str, int | None] = {"busy": 5_000, "idle": 7, "new": None}
    decided = decide(assigned, buffered, read, highwater, set(), bound)
    assert decided.sharing == 2  # busy and new: idle has read everything
    assert decided.pause == {"busy"} and not decided.resume
    resumed = decide(assigned, {"busy": (20, 200)}, read, highwater, {"busy"}, bound)
    assert resumed.resume == {"busy"} and not resumed.pause
