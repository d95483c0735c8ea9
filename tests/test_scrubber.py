"""The log scrubber (``cardq.secrets.Scrubber``): every remembered value is masked wherever
it sits in a text, derived values are forgotten after their lifetime, and the number kept
is bounded. The cost per field with 100,000 values is measured in ``make bench`` (scrub)."""

from __future__ import annotations

import base64
import hashlib

from cardq.secrets import MASK, Scrubber
from cardq.testing import FakeClock


def signature(i: int) -> str:
    return base64.b64encode(hashlib.sha256(str(i).encode()).digest()).decode()


def test_a_value_is_masked_at_every_offset_and_length() -> None:
    s = Scrubber()
    values = [signature(1), "short1", "tenlongval", "exactly-eleven", "x" * 11 + "yz"]
    for v in values:
        s.remember(v, ttl_s=60)
    for v in values:
        for before in range(0, 13):
            for after in range(0, 5):
                text = "a" * before + v + "b" * after
                assert s.scrub(text) == "a" * before + MASK + "b" * after, (v, before, after)


def test_every_occurrence_and_every_value_in_one_text() -> None:
    s = Scrubber()
    a, b = signature(1), signature(2)
    s.remember(a, ttl_s=60)
    s.remember(b)
    text = f"url=/hook/{a}?sign={b}&again={a}"
    assert s.scrub(text) == f"url=/hook/{MASK}?sign={MASK}&again={MASK}"
    assert s.scrub("nothing secret here, only words") == "nothing secret here, only words"
    assert s.scrub("") == ""


def test_values_sharing_a_slice_are_each_found_and_forgotten_alone() -> None:
    clock = FakeClock()
    s = Scrubber(clock=clock)
    s.remember("t-g1044common-first", ttl_s=10)
    s.remember("t-g1044common-second", ttl_s=100)
    assert s.scrub("a t-g1044common-first b") == f"a {MASK} b"
    assert s.scrub("a t-g1044common-second b") == f"a {MASK} b"
    clock.advance(50)
    s.remember("unrelated-value-123", ttl_s=100)  # remembering sweeps what expired
    assert s.scrub("a t-g1044common-first b") == "a t-g1044common-first b"
    assert s.scrub("a t-g1044common-second b") == f"a {MASK} b"


def test_a_value_inside_another_is_masked_whole() -> None:
    s = Scrubber()
    s.remember("inner-secret-value")
    s.remember("prefix-inner-secret-value-suffix")
    assert s.scrub("x prefix-inner-secret-value-suffix y") == f"x {MASK} y"
    assert s.scrub("x inner-secret-value y") == f"x {MASK} y"


def test_derived_values_expire_and_remembering_again_extends_them() -> None:
    clock = FakeClock()
    s = Scrubber(clock=clock)
    token, sig, short = "t-token-abcdefghijkl", signature(7), "tiny42"
    s.remember(token, ttl_s=60)
    s.remember(sig, ttl_s=30)
    s.remember(short, ttl_s=30)
    clock.advance(29)
    s.remember(sig, ttl_s=30)  # signed again: lives to now + 30
    clock.advance(2)
    s.remember("another-value-1234", ttl_s=60)
    assert s.known() == {token, sig, "another-value-1234"}
    assert s.scrub(short) == short
    assert s.scrub(sig) == MASK
    clock.advance(100)
    s.remember("latest-value-12345", ttl_s=60)
    assert s.known() == {"latest-value-12345"}
    assert s.scrub(f"{token} {sig}") == f"{token} {sig}"


def test_configured_values_never_expire_even_if_also_derived() -> None:
    clock = FakeClock()
    s = Scrubber(clock=clock)
    s.remember("app-secret-value-1")
    s.remember("app-secret-value-1", ttl_s=5)
    clock.advance(10)
    s.remember("something-else-99", ttl_s=5)
    assert "app-secret-value-1" in s.known()
    assert s.scrub("k=app-secret-value-1") == f"k={MASK}"


def test_the_number_of_derived_values_is_bounded_dropping_the_soonest_to_expire() -> None:
    clock = FakeClock()
    s = Scrubber(max_values=100, clock=clock)
    s.remember("configured-secret-1")
    for i in range(1000):
        clock.advance(1)
        s.remember(signature(i), ttl_s=3600)
    known = s.known()
    assert len(known) == 101 and "configured-secret-1" in known
    assert known - {"configured-secret-1"} == {signature(i) for i in range(900, 1000)}
    assert s.scrub(signature(950)) == MASK
    assert s.scrub(signature(10)) == signature(10)
    assert len(s._grams) <= 101 * Scrubber.STEP  # forgotten values left nothing behind
