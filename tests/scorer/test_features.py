"""Point-in-time features: no snapshot ever sees information from at or after its impression."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from mmbee.schemas import CommentEvent, GiftEvent, SegmentClosed, WatchEvent
from mmbee.scorer.dataset import Rows, collate
from mmbee.scorer.features import (
    GIFT,
    WATCH,
    AuthorState,
    Behaviour,
    FeatureConfig,
    FeatureSnapshot,
    FeatureState,
    MemorySegmentStore,
    UserState,
)

CFG = FeatureConfig(history=8, segments=4, expansion_n=5, freeze_user_day=False)
ROWS = Rows(user_rows=64, author_rows=64, content_author_rows=64)
Stream = list[tuple[int, BaseModel]]


def new_state() -> FeatureState:
    return FeatureState(CFG, store=MemorySegmentStore(frame_dim=8, text_dim=4))


def run(stream: Stream) -> tuple[FeatureState, dict[str, FeatureSnapshot]]:
    """Replay a stream, snapshotting every watch enter right when it arrives."""
    st = new_state()
    snaps = {}
    for t, ev in stream:
        if isinstance(ev, WatchEvent) and ev.action == "enter":
            snaps[ev.event_id] = st.snapshot(
                ev.event_id, ev.user_id, ev.author_id, ev.live_id, ev.ts_ms
            )
        st.apply(ev, at_ms=t)
    return st, snaps


def tensors(snap: FeatureSnapshot, store: MemorySegmentStore) -> dict[str, torch.Tensor]:
    b = collate([snap], CFG, ROWS, store)
    out = {k: v for k, v in vars(b).items() if isinstance(v, torch.Tensor)}
    assert b.content is not None
    out.update(
        {"content." + k: v for k, v in vars(b.content).items() if isinstance(v, torch.Tensor)}
    )
    return out


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_every_snapshot_field_is_strictly_before_the_impression(
    stream_factory: Callable[..., Stream],
) -> None:
    stream = stream_factory(0)
    _, snaps = run(stream)
    assert len(snaps) > 100
    events = [ev for _, ev in stream]
    emitted = {id(ev): t for t, ev in stream}
    n_hist = n_seg = n_exp = 0
    for s in snaps.values():
        assert all(b.ts_ms < s.ts_ms for b in s.user.history)
        n_hist += len(s.user.history)
        n_seg += len(s.author.segment_starts)
        n_exp += sum(len(e) for e in s.expansions())
        # Segments: ended and closed (emitted) strictly before the impression.
        for start in s.author.segment_starts:
            seg = next(
                e
                for e in events
                if isinstance(e, SegmentClosed)
                and e.author_id == s.author_id
                and e.start_ms == start
            )
            assert seg.end_ms <= s.ts_ms and emitted[id(seg)] < s.ts_ms
        # Counters equal brute-force counts over events strictly before ts.
        before = [e for e in events if not isinstance(e, SegmentClosed) and e.ts_ms < s.ts_ms]
        enters = [e for e in before if isinstance(e, WatchEvent) and e.action == "enter"]
        gifts = [e for e in before if isinstance(e, GiftEvent)]
        assert s.user.watches == sum(e.user_id == s.user_id for e in enters)
        assert s.user.gifts == sum(e.user_id == s.user_id for e in gifts)
        assert s.author.watches == sum(e.author_id == s.author_id for e in enters)
        assert s.author.gifts == sum(e.author_id == s.author_id for e in gifts)
        assert s.pair_gifts == sum(
            e.user_id == s.user_id and e.author_id == s.author_id for e in gifts
        )
        # Expansions only name nodes that had gifted / been gifted before ts.
        gifters = {e.user_id for e in gifts}
        gifted = {e.author_id for e in gifts}
        u2a2u, *author_lists = s.expansions()
        assert {n for n, _ in u2a2u} <= gifters
        assert all({n for n, _ in lst} <= gifted for lst in author_lists)
    assert n_hist > 0 and n_seg > 0 and n_exp > 0  # the test exercises every part


def test_later_events_do_not_change_a_snapshot(stream_factory: Callable[..., Stream]) -> None:
    stream = stream_factory(1)
    st = new_state()
    taken: list[tuple[FeatureSnapshot, FeatureSnapshot, dict[str, torch.Tensor]]] = []
    for i, (t, ev) in enumerate(stream):
        if isinstance(ev, WatchEvent) and ev.action == "enter" and i % 7 == 0:
            s = st.snapshot(ev.event_id, ev.user_id, ev.author_id, ev.live_id, ev.ts_ms)
            taken.append((s, copy.deepcopy(s), tensors(s, st.store)))
        st.apply(ev, at_ms=t)
    assert len(taken) > 10
    for s, before, t in taken:
        assert s == before
        assert_same(tensors(s, st.store), t)  # segment references still resolve identically


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9])
def test_perturbing_the_future_gives_identical_features(
    stream_factory: Callable[..., Stream], cut: float
) -> None:
    a = stream_factory(2)
    enters = [(t, ev) for t, ev in a if isinstance(ev, WatchEvent) and ev.action == "enter"]
    t_cut, target = enters[int(cut * len(enters))]
    # Same past (strictly before t_cut), then the target impression, then a different future
    # (a different world from t_cut on, ties at t_cut included).
    future = [(t, ev) for t, ev in stream_factory(99, start=t_cut, prefix="f") if t >= t_cut]
    b = [(t, ev) for t, ev in a if t < t_cut] + [(t_cut, target)] + future
    b.sort(key=lambda p: p[0])
    # A gift by the same user to the same streamer at the very same millisecond, placed before
    # the impression, must not leak either.
    tie = GiftEvent(
        event_id="tie",
        ts_ms=t_cut,
        user_id=target.user_id,
        author_id=target.author_id,
        live_id=target.live_id,
        gift_value=9.0,
    )
    pos = next(i for i, (_, ev) in enumerate(b) if ev is target)
    b.insert(pos, (t_cut, tie))
    state_a, snaps_a = run(a)
    state_b, snaps_b = run(b)
    compared = 0
    for eid, s in snaps_a.items():
        if s.ts_ms < t_cut or eid == target.event_id:
            assert snaps_b[eid] == s, eid
            assert_same(tensors(snaps_b[eid], state_b.store), tensors(s, state_a.store))
            compared += 1
    assert compared > 5
    assert snaps_b[target.event_id].pair_gifts == snaps_a[target.event_id].pair_gifts


def test_duplicates_apply_once_and_ties_wait() -> None:
    st = new_state()
    t = 1_700_000_000_000
    g = GiftEvent(event_id="g", ts_ms=t, user_id="u", author_id="a", live_id="l", gift_value=3.0)
    st.apply(g)
    st.apply(g)
    st.apply(
        CommentEvent(event_id="c", ts_ms=t, user_id="u", author_id="a", live_id="l", text="hi")
    )
    s0 = st.snapshot("w0", "u", "a", "l", t)
    assert s0.user.gifts == 0 and s0.user.history == ()
    s1 = st.snapshot("w1", "u", "a", "l", t + 1)
    assert s1.user.gifts == 1 and s1.user.gift_value == 3.0 and len(s1.user.history) == 2
    assert st.duplicates == 1
    assert s1.user.expansions[0] == ()  # no other donor yet


def test_states_round_trip_through_plain_dicts() -> None:
    u = UserState()
    for i in range(25):
        u.add(Behaviour(i, f"a{i % 4}", WATCH if i % 3 else GIFT), 1.5, keep=10, max_pairs=3)
    assert 10 <= len(u.history) <= 30 and len(u.pairs) == 3
    assert UserState.from_dict(u.to_dict()).to_dict() == u.to_dict()
    # trimming keeps `keep` behaviours of the days before, however busy the current day
    from mmbee.scorer.features import DAY_MS

    d = UserState()
    for i in range(100):
        d.add(Behaviour(DAY_MS - 50 + i, "a", WATCH), 0.0, keep=10, max_pairs=3)
    assert len(d.history) <= 30
    assert sum(b.ts_ms < DAY_MS for b in d.history) == 10
    assert d.day_start(DAY_MS + 60) == (50, 0, 0.0)
    a = AuthorState()
    for s in range(0, 300_000, 30_000):
        a.add_segment("l1" if s < 150_000 else "l2", s, s + 30_000, keep=4)
    a.add_segment("l2", 270_000, 300_000, keep=4)  # duplicate ignored
    assert a.segment_starts(None, 300_000, 4) == (180_000, 210_000, 240_000, 270_000)
    assert a.segment_starts("l2", 260_000) == (150_000, 180_000, 210_000)
    assert AuthorState.from_dict(a.to_dict()).to_dict() == a.to_dict()


def test_store_rejects_wrong_width_and_keeps_first_copy(
    segment_factory: Callable[..., SegmentClosed],
) -> None:
    store = MemorySegmentStore(frame_dim=8, text_dim=4)
    rng = np.random.default_rng(0)
    first = segment_factory("a", "l", 1_700_000_010_000, rng)
    assert store.put(first) == 0
    assert store.put(segment_factory("a", "l", 1_700_000_010_000, rng)) == 0
    visual = store.arrays()[0]
    if first.frame_mean is not None:
        from mmbee.schemas import decode_embedding

        assert np.array_equal(visual[0], decode_embedding(first.frame_mean))
    with pytest.raises(ValueError, match="width"):
        MemorySegmentStore(frame_dim=16, text_dim=4).put(
            segment_factory("a", "l", 1_700_000_010_000, np.random.default_rng(1))
        )


def test_day_start_and_recent_room_counters_by_brute_force(
    stream_factory: Callable[..., Stream],
) -> None:
    from mmbee.scorer.features import DAY_MS, RECENT_WINDOWS_MS

    stream = stream_factory(3, minutes=120)
    t0 = min(t for t, _ in stream)
    offset = -(t0 + 3_600_000) % DAY_MS  # local midnight one hour into the stream
    cfg = FeatureConfig(history=8, segments=4, expansion_n=5, day_offset_ms=offset)
    st = FeatureState(cfg, store=MemorySegmentStore(frame_dim=8, text_dim=4))
    events = [ev for _, ev in stream if not isinstance(ev, SegmentClosed)]
    seen_before = seen_after = 0
    for t, ev in stream:
        if isinstance(ev, WatchEvent) and ev.action == "enter":
            s = st.snapshot(ev.event_id, ev.user_id, ev.author_id, ev.live_id, ev.ts_ms)
            ts = ev.ts_ms
            day_start = (ts + offset) // DAY_MS * DAY_MS - offset
            mine = [e for e in events if getattr(e, "user_id", None) == ev.user_id]
            early = [e for e in mine if e.ts_ms < min(ts, day_start)]
            enters = [e for e in early if isinstance(e, WatchEvent) and e.action == "enter"]
            gifts = [e for e in early if isinstance(e, GiftEvent)]
            assert s.user.day_watches == len(enters)
            assert s.user.day_gifts == len(gifts)
            assert s.user.day_gift_value == pytest.approx(sum(g.gift_value for g in gifts))
            behaviours = [
                e
                for e in early
                if isinstance(e, CommentEvent | GiftEvent)
                or (isinstance(e, WatchEvent) and e.action == "enter")
            ]
            assert [b.ts_ms for b in s.user.history] == sorted(e.ts_ms for e in behaviours)[
                -cfg.history :
            ]  # the behaviour sequence stops at the day start
            seen_before += ts < day_start + DAY_MS and ts >= day_start and day_start > t0
            seen_after += s.user.day_watches < s.user.watches
            room = [e for e in events if e.author_id == ev.author_id and e.ts_ms < ts]
            for i, w in enumerate(RECENT_WINDOWS_MS):
                recent = [e for e in room if e.ts_ms >= ts - w]
                assert s.author.recent_gifts[i] == sum(isinstance(e, GiftEvent) for e in recent)
                assert s.author.recent_watches[i] == sum(
                    isinstance(e, WatchEvent) and e.action == "enter" for e in recent
                )
        st.apply(ev, at_ms=t)
    assert seen_before > 10 and seen_after > 10  # both days and a within-day change occur


def test_a_late_behaviour_keeps_the_history_ordered() -> None:
    """A stream can deliver a user's gift after a later watch (repartition hop); the history
    the snapshot and the TrainingExample carry stays oldest first."""
    from mmbee.scorer.features import Behaviour, UserState

    s = UserState()
    for b in (Behaviour(10, "a1", 0), Behaviour(30, "a2", 0), Behaviour(20, "a1", 2)):
        s.add(b, 5.0, keep=4, max_pairs=10)
    assert [b.ts_ms for b in s.history] == [10, 20, 30]
    assert s.gifts == 1 and s.watches == 2
    for t in range(40, 80, 2):  # trimming keeps the order too
        s.add(Behaviour(t, "a3", 0), 0.0, keep=4, max_pairs=10)
    s.add(Behaviour(41, "a1", 2), 1.0, keep=4, max_pairs=10)
    assert [b.ts_ms for b in s.history] == sorted(b.ts_ms for b in s.history)
