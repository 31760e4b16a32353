"""The label joiner: 1 h gift window, auxiliary labels, watermark expiry, idempotence."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from mmbee.schemas import CommentEvent, GiftEvent, WatchEvent
from mmbee.schemas.scoring import TrainingExample
from mmbee.scorer.examples import LabelConfig, LabeledExample, LabelJoiner, from_message, to_message
from mmbee.scorer.features import (
    AuthorFeatures,
    FeatureConfig,
    FeatureSnapshot,
    FeatureState,
    MemorySegmentStore,
    UserFeatures,
)

T = 1_700_000_000_000
H = 3600 * 1000


def snap(eid: str, ts: int, user: str = "u1", author: str = "a1") -> FeatureSnapshot:
    return FeatureSnapshot(eid, ts, UserFeatures(user), AuthorFeatures(author, "l1"))


def gift(eid: str, ts: int, user: str = "u1", author: str = "a1", value: float = 1.0) -> GiftEvent:
    return GiftEvent(
        event_id=eid, ts_ms=ts, user_id=user, author_id=author, live_id="l1", gift_value=value
    )


def labels(out: list[LabeledExample]) -> dict[str, tuple[float, float, float]]:
    return {e.snapshot.event_id: e.labels for e in out}


def test_gift_within_the_hour_is_positive_and_emitted_at_once() -> None:
    j = LabelJoiner(LabelConfig())
    j.add(snap("w1", T))
    j.add(snap("w2", T + 10 * 60_000))  # second visit, same pair
    j.add(snap("w3", T, user="u2"))  # another user
    out = j.observe(gift("g1", T + H))  # exactly 1 h after w1: still inside
    assert labels(out) == {"w1": (1.0, 0.0, 1.0), "w2": (1.0, 0.0, 1.0)}
    assert out[0].emitted_at_ms == T + H and out[0].gift_value == 1.0
    # u2's window expires when the watermark passes T + 1 h.
    out = j.observe(gift("g2", T + H + 1, user="u9", author="a9"))
    assert labels(out) == {"w3": (1.0, 0.0, 0.0)}
    assert j.pending == 0 and j.emitted == 2 and j.expired == 1


def test_gift_after_the_window_or_before_entering_does_not_count() -> None:
    j = LabelJoiner(LabelConfig())
    j.add(snap("w1", T))
    out = j.observe(gift("g1", T + H + 1))
    assert labels(out) == {"w1": (1.0, 0.0, 0.0)}
    j.add(snap("w2", T + 2 * H))
    out = j.observe(gift("g0", T + 2 * H - 1))  # late gift from before the impression
    assert out == []
    assert labels(j.flush()) == {"w2": (1.0, 0.0, 0.0)}


def test_comment_and_early_leave_set_the_auxiliary_labels() -> None:
    j = LabelJoiner(LabelConfig(watch_threshold_ms=60_000))
    j.add(snap("w1", T))
    j.add(snap("w2", T, user="u2"))
    j.observe(
        CommentEvent(
            event_id="c1", ts_ms=T + 5_000, user_id="u1", author_id="a1", live_id="l1", text="hi"
        )
    )
    j.observe(
        WatchEvent(
            event_id="x2",
            ts_ms=T + 20_000,
            user_id="u2",
            author_id="a1",
            live_id="l1",
            action="leave",
            watch_ms=20_000,
        )
    )
    out = j.advance(T + H + 1)
    assert labels(out) == {"w1": (1.0, 1.0, 0.0), "w2": (0.0, 0.0, 0.0)}


def test_redelivered_events_change_nothing() -> None:
    j = LabelJoiner(LabelConfig())
    assert j.add(snap("w1", T)) == []
    assert j.add(snap("w1", T)) == []  # duplicate impression
    out = j.observe(gift("g1", T + 1000)) + j.observe(gift("g1", T + 1000))
    assert len(out) == 1 and j.duplicates == 2
    assert j.flush() == []


def test_allowed_lateness_delays_expiry_and_accepts_late_gifts() -> None:
    j = LabelJoiner(LabelConfig(allowed_lateness_ms=10 * 60_000))
    j.add(snap("w1", T))
    assert j.observe(gift("gx", T + H + 5 * 60_000, user="u9")) == []  # watermark = T + 55 min
    out = j.observe(gift("g1", T + 30 * 60_000))  # late but within lateness
    assert labels(out) == {"w1": (1.0, 0.0, 1.0)}


def test_flush_marks_censored_and_message_round_trip(
    stream_factory: Callable[..., list[tuple[int, BaseModel]]],
) -> None:
    st = FeatureState(
        FeatureConfig(history=6, segments=3, expansion_n=4), store=MemorySegmentStore(8, 4)
    )
    j = LabelJoiner(LabelConfig())
    done: list[LabeledExample] = []
    stream = [(t, ev) for t, ev in stream_factory(3) if t < T + 100 * 60_000]  # cut the log
    for t, ev in stream:
        if isinstance(ev, WatchEvent) and ev.action == "enter":
            done += j.add(st.snapshot(ev.event_id, ev.user_id, ev.author_id, ev.live_id, ev.ts_ms))
        done += j.observe(ev)
        st.apply(ev, at_ms=t)
    rest = j.flush()
    assert done and rest and all(e.censored for e in rest) and not any(e.censored for e in done)
    assert sum(e.labels[2] for e in done) > 0 and sum(1 - e.labels[2] for e in done) > 0
    ids = [e.snapshot.event_id for e in done + rest]
    assert len(ids) == len(set(ids))
    for ex in done:
        m = to_message(ex)
        again = TrainingExample.model_validate_json(m.model_dump_json())
        assert from_message(again) == ex
    big = max(done, key=lambda e: len(to_message(e).model_dump_json()))
    assert len(to_message(big).model_dump_json()) < 8_000  # references, not copies


def test_an_impression_behind_the_watermark_is_refused() -> None:
    j = LabelJoiner(LabelConfig())
    j.observe(gift("g", T + 3 * H, user="u9"))
    assert j.add(snap("w_old", T)) == [] and j.late == 1 and j.pending == 0
