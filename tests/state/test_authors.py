"""Author timelines: counts as of t are a function of the multiset of events; the fold behind the
horizon never passes what every source has delivered, so a lagging source is counted, not late."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmbee.state.authors import Timeline

H = 10_000  # horizon
HOUR = 3_600_000


def test_a_lagging_source_is_counted_while_the_frontier_holds_the_fold() -> None:
    fast, slow = Timeline("a"), Timeline("a")
    # one source is hours ahead; the other (a partition re-read after a takeover) is behind
    for i in range(10):
        assert fast.add("watch", f"f{i}", 5 * HOUR + i, H) == "applied"
        assert slow.add("watch", f"f{i}", 5 * HOUR + i, H, complete_ms=HOUR) == "applied"
    # without a frontier the timeline folded to 5 h - H: the lagging events are late
    assert fast.add("watch", "s1", HOUR + 1, H) == "late"
    # with the frontier at 1 h the fold stayed at 1 h - H: they count
    assert slow.add("watch", "s1", HOUR + 1, H, complete_ms=HOUR) == "applied"
    assert slow.base_ms == HOUR - H
    assert slow.message().counts_before(HOUR + 2) == (1, 0)
    # once the frontier moves on, the fold follows (and a re-sent event is still a duplicate)
    assert slow.add("gift", "g1", 5 * HOUR + 20, H, complete_ms=5 * HOUR) == "applied"
    assert slow.base_ms == 5 * HOUR - H
    assert slow.add("watch", "f3", 5 * HOUR + 3, H, complete_ms=5 * HOUR) == "duplicate"
    assert slow.message().counts_before(5 * HOUR + 21) == (11, 1)


def test_an_unknown_frontier_folds_nothing() -> None:
    tl = Timeline("a")
    for i in range(5):
        tl.add("watch", f"w{i}", 10 * HOUR + i, H, complete_ms=float("-inf"))
    assert tl.base_ms == 0 and tl.add("watch", "old", HOUR, H, float("-inf")) == "applied"


@given(
    st.lists(
        st.tuples(st.sampled_from(["watch", "gift"]), st.integers(0, 50_000)),
        min_size=1,
        max_size=40,
    ),
    st.randoms(use_true_random=False),
)
def test_counts_do_not_depend_on_arrival_order_under_a_frontier(
    events: list[tuple[str, int]], rnd: object
) -> None:
    """Any arrival order, with the frontier at the oldest event still to arrive (what the marks
    guarantee), gives the same counts before every t, and nothing is late."""
    items = [(kind, f"e{i}", ts) for i, (kind, ts) in enumerate(events)]
    shuffled = list(items)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a, b = Timeline("a"), Timeline("a")
    for kind, eid, ts in sorted(items, key=lambda x: x[2]):
        assert a.add(kind, eid, ts, H) == "applied"  # type: ignore[arg-type]
    for j, (kind, eid, ts) in enumerate(shuffled):
        frontier = min(t for _, _, t in shuffled[j:])
        assert b.add(kind, eid, ts, H, complete_ms=frontier) == "applied"  # type: ignore[arg-type]
    last = max(ts for _, _, ts in items)
    for t in range(max(a.base_ms, b.base_ms), last + 2, 997):
        assert a.message().counts_before(t) == b.message().counts_before(t)


def test_rows_carry_the_streamer_and_rows_stored_before_still_load() -> None:
    tl = Timeline("a7")
    tl.add("gift", "g1", 1_000, horizon_ms=H)
    assert Timeline.loads(tl.dumps()).author_id == "a7"
    legacy = tl.dumps().replace(b'"u":"a7",', b"")  # a row written before it carried the id
    assert b"a7" not in legacy
    assert Timeline.loads(legacy, "a7").dumps() == tl.dumps()
    with pytest.raises(ValueError, match="author_id"):
        Timeline.loads(legacy)
