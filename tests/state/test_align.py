"""Event-time alignment of one partition: the content topics (`Aligner`) and the joiner's
`live.watch` + marked `user.activity` (`MarkAligner`), which share the idle rule."""

from __future__ import annotations

import doctest
import heapq
from collections import deque
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mmbee.state import align
from mmbee.state.align import Aligner, IdleRule, MarkAligner, frontier_of


def test_released_in_event_time_order_once_every_source_passed() -> None:
    a = Aligner(wait_s=5.0, sources=2)
    a.push(ts=30, source=0, offset=0, item="f30", now_s=0)
    a.push(ts=40, source=0, offset=1, item="f40", now_s=0)
    assert a.ready(0) == [] and a.frontier() is None  # source 1 silent so far
    a.push(ts=10, source=1, offset=0, item="c10", now_s=0)
    assert a.ready(0) == [] and a.frontier() == 10  # source 1 may send more at ts 10
    a.push(ts=45, source=1, offset=1, item="c45", now_s=1)
    assert a.ready(1) == ["c10", "f30"]
    a.push(ts=50, source=0, offset=2, item="f50", now_s=2)
    assert a.ready(2) == ["f40"] and len(a) == 2
    assert a.ready(4.9) == []
    assert a.ready(6.0) == ["c45"]  # waited long enough
    assert a.ready(7.0) == ["f50"]
    assert a.drain() == []


def test_an_empty_source_only_delays_by_the_wait() -> None:
    a = Aligner(wait_s=0.5, sources=3)
    for i in range(4):
        a.push(ts=10 * i, source=i % 2, offset=i // 2, item=i, now_s=0.1 * i)
    assert a.ready(0.65) == [0, 1]  # arrived >= 0.5 s ago
    assert a.ready(10) == [2, 3]


def test_a_redelivered_offset_does_not_break_the_heap() -> None:
    a = Aligner(wait_s=0.0, sources=1)
    a.push(ts=5, source=0, offset=3, item=object(), now_s=0)
    a.push(ts=5, source=0, offset=3, item=object(), now_s=0)  # unorderable items, same key
    assert len(a.ready(0)) == 2


def test_ties_break_by_source_then_offset() -> None:
    a = Aligner(wait_s=0.0, sources=3)
    for src, off in [(2, 7), (0, 3), (1, 1), (0, 2)]:
        a.push(ts=5, source=src, offset=off, item=(src, off), now_s=0)
    assert a.ready(0) == [(0, 2), (0, 3), (1, 1), (2, 7)]


@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000)), min_size=1, max_size=60),
    st.randoms(use_true_random=False),
)
def test_any_interleaving_of_sorted_sources_gives_one_order(
    events: list[tuple[int, int]], rnd: object
) -> None:
    """Each source is in event-time order; however the sources interleave on arrival, the
    release order is the same canonical (ts, source, offset) order."""
    per_source: dict[int, list[int]] = {}
    for src, ts in events:
        per_source.setdefault(src, []).append(ts)
    queues = {s: sorted(v) for s, v in per_source.items()}
    canonical = sorted((ts, s, off) for s, v in queues.items() for off, ts in enumerate(v))
    pos = dict.fromkeys(queues, 0)
    a, out = Aligner(wait_s=1.0, sources=len(queues)), []
    while any(pos[s] < len(queues[s]) for s in queues):
        src = rnd.choice([s for s in queues if pos[s] < len(queues[s])])  # type: ignore[attr-defined]
        off = pos[src]
        pos[src] += 1
        a.push(
            ts=queues[src][off], source=src, offset=off, item=(queues[src][off], src, off), now_s=0
        )
        out += a.ready(0)
    out += a.ready(10)
    assert out == canonical


def test_quiet_sources_hold_back_what_has_not_waited_the_idle_time() -> None:
    """A source read to its end is judged by the last fetch: a fetch answered by a replay's
    first frames still says the comments are empty. Only frames held `idle_s` pass it."""
    a = Aligner(wait_s=60.0, sources=2, idle_s=1.0)
    a.push(ts=10, source=0, offset=0, item="f10", now_s=0.0)
    a.push(ts=20, source=0, offset=1, item="f20", now_s=0.0)
    a.push(ts=30, source=0, offset=2, item="f30", now_s=0.6)
    assert a.ready(0.5, quiet={1}) == []  # without the idle time, f10 and f20 went out here
    a.push(ts=15, source=1, offset=0, item="c15", now_s=0.7)  # the replay reached the comments
    assert a.ready(0.7, quiet=set()) == ["f10"]  # every source passed 10
    assert a.ready(1.2, quiet={1}) == ["c15", "f20"]  # held 1 s; f30 must wait till 1.6
    assert a.ready(1.5, quiet={1}) == []
    assert a.ready(1.6, quiet={1}) == []  # f30 is source 0's newest: more may come at ts 30
    assert a.ready(1.6, quiet={0, 1}) == ["f30"]


def test_without_idle_time_quiet_sources_release_at_once() -> None:
    a = Aligner(wait_s=60.0, sources=2)
    a.push(ts=10, source=0, offset=0, item="f10", now_s=0.0)
    a.push(ts=20, source=0, offset=1, item="f20", now_s=0.0)
    assert a.ready(0.0, quiet={1}) == ["f10"]


def test_the_valve_releases_an_item_that_came_behind_its_source() -> None:
    # a frame behind its source's newest time is held under that time; the valve must reach it
    a = Aligner(wait_s=1.0, sources=2)
    a.push(ts=0, source=0, offset=0, item="f0", now_s=0.0)
    a.push(ts=500, source=0, offset=1, item="f1", now_s=0.0)
    a.push(ts=600, source=1, offset=0, item="c0", now_s=0.0)
    assert a.ready(now_s=0.1, valve=False) == ["f0"]  # frontier 500
    assert a.ready(now_s=1.5) == ["f1", "c0"]  # the valve; nothing held any more
    a.push(ts=50, source=0, offset=2, item="f0-again", now_s=2.0)  # held under 500
    assert a.ready(now_s=2.5) == []
    assert a.ready(now_s=3.5) == ["f0-again"]  # before the fix: held for ever
    assert len(a) == 0


def test_doctests() -> None:
    assert doctest.testmod(align).failed == 0


# --- the idle rule --------------------------------------------------------------------------


def test_the_idle_rule_raises_the_limit_only_for_what_waited() -> None:
    rule = IdleRule(idle_s=1.0)
    rule.held(0.0, 10)
    rule.held(0.5, 20)
    assert rule.limit(0.9, None, lambda: 100) is None  # nothing waited 1 s yet
    assert rule.limit(1.0, None, lambda: 100) == 10  # up to the newest item that waited
    assert rule.limit(1.0, 15, lambda: 100) == 15  # the strict limit is higher already
    assert rule.limit(1.5, None, lambda: 18) == 17  # below the relaxed frontier
    assert rule.limit(1.5, None, None) is None  # no quiet source: the strict limit
    rule.clear()
    assert rule.limit(9.0, None, lambda: 100) is None


def test_frontier_of_marks() -> None:
    assert frontier_of({"a": 3, "b": 5}, {"a", "b"}) == 3.0
    assert frontier_of({"a": 3, "b": None}, {"a", "b"}) == 3.0
    assert frontier_of({"a": None}, {"a"}) == float("inf")
    assert frontier_of({"a": 3}, {"a", "b"}) is None


# --- the joiner's aligner ---------------------------------------------------------------------

MARKS = ("g:0", "c:0")


def test_marked_ties_break_by_rank_then_offset_and_items_keep_their_time() -> None:
    m = MarkAligner(MARKS, wait_s=60.0, idle_s=0.0)
    m.mark({"g:0": 100, "c:0": 100})
    m.push(ts=50, rank=5, offset=0, item="gift", now_s=0, source="activity")
    m.push(ts=50, rank=4, offset=1, item="comment", now_s=0, source="activity")
    m.push(ts=60, rank=3, offset=0, item="w60", now_s=0, source="watch")
    m.push(ts=50, rank=3, offset=1, item="w50", now_s=0, source="watch")  # behind: keeps 50
    assert m.ready(0, stalled=False) == (["w50", "comment", "gift"], False)  # frontier 60
    assert m.watch_max == 60 and len(m) == 1


def test_an_idle_mark_counts_only_once_user_activity_is_read_to_its_end() -> None:
    m = MarkAligner(MARKS, wait_s=60.0, idle_s=0.0)
    m.mark({"g:0": None, "c:0": 40})
    m.push(ts=30, rank=3, offset=0, item="w30", now_s=0, source="watch")
    m.push(ts=35, rank=3, offset=1, item="w35", now_s=0, source="watch")
    assert m.frontier() is None  # strict: the idle mark may be overtaken by one not read yet
    assert m.ready(0, stalled=False, quiet=lambda s: False) == ([], False)
    assert m.frontier(lambda s: s == "activity") == 35  # live.watch still counts
    assert m.ready(0, stalled=False, quiet=lambda s: s == "activity") == (["w30"], False)
    assert m.ready(0, stalled=False, quiet=lambda s: True) == (["w35"], False)


def test_the_valve_releases_everything_once_the_input_stalled() -> None:
    m = MarkAligner(MARKS, wait_s=1.0, idle_s=0.0)
    m.push(ts=30, rank=3, offset=0, item="w30", now_s=0.0, source="watch")
    m.push(ts=90, rank=5, offset=0, item="g90", now_s=0.9, source="activity")
    assert m.ready(2.0, stalled=False) == ([], False)  # no marks: batches flow, it waits
    assert m.ready(0.5, stalled=True) == ([], False)  # the oldest waited 0.5 s only
    assert m.ready(1.0, stalled=True) == (["w30", "g90"], True)  # g90 too, though younger


class _OldHold:
    """The joiner's hold before issue 18 (JoinerRuntime._part/_limit/_release/frontier at
    8158557), without Faust: the reference MarkAligner must match."""

    def __init__(self, expected: set[str], wait_s: float, idle_s: float) -> None:
        self.expected, self.wait_s, self.idle_s = expected, wait_s, idle_s
        self.heap: list[tuple[int, int, int, int, Any]] = []
        self.watch_max: int | None = None
        self.marks: dict[str, int | None] = {}
        self.arrivals: deque[float] = deque()
        self.aging: deque[tuple[float, int]] = deque()
        self.aged: int | None = None
        self.seq = 0

    def push(self, ts: int, rank: int, offset: int, item: Any, now: float, watch: bool) -> None:
        if watch and (self.watch_max is None or ts > self.watch_max):
            self.watch_max = ts
        self.seq += 1
        heapq.heappush(self.heap, (ts, rank, offset, self.seq, item))
        self.arrivals.append(now)
        self.aging.append((now, ts))

    def frontier(self, idle: bool, wq: bool, aq: bool) -> float | None:
        times: list[float | None] = [float("inf") if idle and wq else self.watch_max]
        if not self.expected <= set(self.marks) or (
            any(v is None for v in self.marks.values()) and not (idle and aq)
        ):
            return None  # a source not heard from, or an idle mark that may be stale
        times += [v for v in self.marks.values() if v is not None] or [float("inf")]
        return None if None in times else min(t for t in times if t is not None)

    def release(self, now: float, stalled: bool, wq: bool, aq: bool) -> tuple[list[Any], bool]:
        if not self.heap:
            return [], False
        cutoff = now - self.idle_s
        while self.aging and self.aging[0][0] <= cutoff:
            _, ts = self.aging.popleft()
            if self.aged is None or ts > self.aged:
                self.aged = ts
        limit = self.frontier(False, wq, aq)
        if self.aged is not None:
            relaxed = self.frontier(True, wq, aq)
            if relaxed is not None:
                bound = min(relaxed, self.aged + 1)
                if limit is None or bound > limit:
                    limit = bound
        valve = bool(stalled and self.arrivals and now - self.arrivals[0] >= self.wait_s)
        held = sorted(self.heap)
        n = len(held) if valve else sum(1 for e in held if limit is not None and e[0] < limit)
        self.heap = held[n:]
        for _ in range(n):
            self.arrivals.popleft()
        if not self.heap:
            self.aging.clear()
            self.aged = None
        return [e[4] for e in held[:n]], valve


_push = st.tuples(st.just("push"), st.integers(0, 40), st.sampled_from([3, 4, 5]), st.booleans())
_mark = st.tuples(st.just("mark"), st.sampled_from(MARKS), st.none() | st.integers(0, 40))
_ready = st.tuples(st.just("ready"), st.booleans(), st.booleans(), st.booleans())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(_push, _mark, _ready), max_size=60),
    st.sampled_from([0.0, 0.3, 1.0]),
    st.sampled_from([0.2, 5.0]),
)
def test_the_marked_aligner_releases_as_the_joiner_did(
    ops: list[tuple[Any, ...]], idle_s: float, wait_s: float
) -> None:
    """Behaviour unchanged (issue 18): any sequence of events, marks and releases, with any
    quiet sources, leaves the joiner's hold in the same order at the same time as before."""
    new, old = MarkAligner(MARKS, wait_s, idle_s), _OldHold(set(MARKS), wait_s, idle_s)
    now, offsets = 0.0, {True: 0, False: 0}
    for op in ops:
        now += 0.1
        if op[0] == "push":
            _, ts, rank, watch = op
            offsets[watch] += 1
            item = (ts, rank, watch, offsets[watch])
            new.push(ts=ts, rank=3 if watch else rank, offset=offsets[watch], item=item,
                     now_s=now, source="watch" if watch else "activity")  # fmt: skip
            old.push(ts, 3 if watch else rank, offsets[watch], item, now, watch)
        elif op[0] == "mark":
            new.mark({op[1]: op[2]})
            old.marks.update({op[1]: op[2]})
        else:
            _, stalled, wq, aq = op
            quiet = {"watch": wq, "activity": aq}
            assert new.ready(now, stalled, quiet.__getitem__) == old.release(now, stalled, wq, aq)
            assert new.frontier(quiet.__getitem__) == old.frontier(True, wq, aq)
    assert len(new) == len(old.heap)
