"""Event-time alignment of the content topics of one partition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mmbee.state.align import Aligner


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
