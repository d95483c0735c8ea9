"""Secrets that cannot leak by accident.

A :class:`Secret` prints as ``Secret('***')`` and every revealed value is remembered, so
the log pipeline (``logging.py``) can scrub it from any line, and results and dead letters
can be checked for it. Secrets enter the process only through the configuration (from an
environment variable or a mounted file) or from a token endpoint.

A worker runs for weeks, and some values are made all the time: a webhook signature per
signed send (one per second per busy bot), a tenant token per refresh. Those are
remembered with a lifetime (the time they can still be used by anyone who reads them)
and forgotten after it, and at most ``max_values`` of them are kept, so neither memory
nor the cost of scrubbing grows with uptime. See :class:`Scrubber` for how a text is
searched in one pass whatever the number of values.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

MASK = "***"
#: Shorter values would scrub ordinary words.
MIN_LENGTH = 6
#: A webhook signature signs a timestamp, and the platform takes a timestamp up to an hour
#: from its own clock: the signature can be replayed for that hour. Five minutes more cover
#: clock skew between the worker and the platform.
SIGNATURE_TTL_S = 3600.0 + 300.0
#: Derived values kept at most (the oldest to expire is dropped first): about 14 signed bots
#: busy every second of their hour. Permanent values (configuration) are never dropped.
MAX_VALUES = 100_000


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        remember(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Scrubber:
    """Masks every remembered value in a text, at a cost that depends on the text's length,
    not on how many values are remembered.

    Why not a regular expression or an automaton: an alternation of 2,000 values costs
    ~2 ms per 100-character field in ``re`` (it tries every branch at every position), and
    an Aho–Corasick automaton (``pyahocorasick``, ``ahocorasick-rs``) scans fast but must be
    rebuilt to add or drop a value: 0.8–10 s for 100,000 values, holding the GIL, so a
    rebuild stalls the event loop (``bench/README.md``, "Scrubbing").

    Instead, a q-gram index: every value of at least ``Q + STEP - 1`` characters is filed
    under its ``Q``-character slices at offsets ``0 … STEP-1``. An occurrence of such a
    value anywhere in a text contains one text window ``text[t:t+Q]`` with ``t`` a
    multiple of ``STEP`` (the first such ``t`` at or after the occurrence's start is at most
    ``STEP-1`` into it, and the window still ends inside it), and that window is one of the
    value's filed slices. So a text of ``n`` characters costs ``n / STEP`` dictionary
    look-ups, a hit is confirmed with a plain substring test, and adding or forgetting a
    value touches ``STEP`` entries: nothing is ever rebuilt. Values of 6 to ``Q+STEP-2``
    characters (rare: configured secrets are longer) are tested one by one.
    """

    Q = 8
    STEP = 4
    LONG = Q + STEP - 1

    def __init__(
        self, *, max_values: int = MAX_VALUES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_values
        self._clock = clock
        self._lock = threading.Lock()
        self._permanent: set[str] = set()
        #: derived value -> when it stops mattering (monotonic seconds)
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        #: slice -> the value (or values) filed under it
        self._grams: dict[str, str | tuple[str, ...]] = {}
        #: values too short for the index, tested one by one (a tuple: read without the lock)
        self._short: tuple[str, ...] = ()

    # ---------------------------------------------------------------- remembering

    def remember(self, value: str, ttl_s: float | None = None) -> None:
        """Scrub ``value`` from now on: for ever (``ttl_s=None``, configured secrets) or for
        ``ttl_s`` seconds (signatures, tenant tokens: what a reader could still use)."""
        if len(value) < MIN_LENGTH:
            return
        with self._lock:
            if ttl_s is None:
                if value not in self._permanent:
                    self._permanent.add(value)
                    if value not in self._expiry:
                        self._file(value)
                return
            now = self._clock()
            expires = now + ttl_s
            known = self._expiry.get(value)
            if known is not None and known >= expires:
                return
            if known is None and value not in self._permanent:
                self._file(value)
            self._expiry[value] = expires
            heapq.heappush(self._heap, (expires, value))
            self._forget_expired(now)

    def _forget_expired(self, now: float) -> None:
        heap = self._heap
        while heap and (heap[0][0] <= now or len(self._expiry) > self._max):
            expires, value = heapq.heappop(heap)
            if self._expiry.get(value) != expires:
                continue  # remembered again later with a longer life: a newer entry stands
            del self._expiry[value]
            if value not in self._permanent:
                self._unfile(value)
        if len(heap) > 2 * len(self._expiry) + 1024:  # superseded entries pile up: compact
            self._heap = [(e, v) for v, e in self._expiry.items()]
            heapq.heapify(self._heap)

    def _file(self, value: str) -> None:
        if len(value) < self.LONG:
            self._short = (*self._short, value)
            return
        grams = self._grams
        for gram in self._slices(value):
            found = grams.get(gram)
            if found is None:
                grams[gram] = value
            elif isinstance(found, str):
                if found != value:
                    grams[gram] = (found, value)
            elif value not in found:
                grams[gram] = (*found, value)

    def _unfile(self, value: str) -> None:
        if len(value) < self.LONG:
            self._short = tuple(v for v in self._short if v != value)
            return
        grams = self._grams
        for gram in self._slices(value):
            found = grams.get(gram)
            if found is None:
                continue
            if isinstance(found, str):
                if found == value:
                    del grams[gram]
                continue
            rest = tuple(v for v in found if v != value)
            grams[gram] = rest[0] if len(rest) == 1 else rest

    def _slices(self, value: str) -> set[str]:
        return {value[o : o + self.Q] for o in range(self.STEP)}

    # ---------------------------------------------------------------- scrubbing

    def scrub(self, text: str) -> str:
        found: set[str] | None = None
        grams = self._grams
        if grams:
            q, step = self.Q, self.STEP
            get = grams.get
            for t in range(0, len(text) - q + 1, step):
                hit = get(text[t : t + q])
                if hit is None:
                    continue
                found = found or set()
                if isinstance(hit, str):
                    found.add(hit)
                else:
                    found.update(hit)
        for value in self._short:
            if value in text:
                found = found or set()
                found.add(value)
        if not found:
            return text
        for value in sorted(found, key=len, reverse=True):  # a value inside another: longest first
            if value in text:
                text = text.replace(value, MASK)
        return text

    def known(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._permanent | self._expiry.keys())

    def __len__(self) -> int:
        with self._lock:
            return len(self._permanent | self._expiry.keys())


_scrubber = Scrubber()


def remember(value: str, ttl_s: float | None = None) -> None:
    """Register a value (a configured secret for ever; a fresh tenant token or a signature
    for as long as it can be used) for scrubbing."""
    _scrubber.remember(value, ttl_s)


def scrub(text: str) -> str:
    return _scrubber.scrub(text)


def known_secrets() -> frozenset[str]:
    return _scrubber.known()
