"""The segments component's parts without a broker: the step is pure in the sense of
`mmbee.streams.runtime.component` (the same state and item give the same `Step`, and nothing
else is touched), the state codec round-trips a buffer, and the stored rows follow the buffer."""

from __future__ import annotations

import dataclasses
import doctest

import numpy as np
import pytest

from mmbee.schemas import SegmentClosed
from mmbee.settings import Settings
from mmbee.state import segments as windows
from mmbee.state.segments import ContentItem, LiveBuffer, SegmentBuffer, SegmentConfig
from mmbee.streams.app import COMPONENTS
from mmbee.streams.components import asr, segments
from mmbee.streams.components.segments import CODEC, COMPONENT, apply

T0 = 1_700_000_040_000
CFG = SegmentConfig(segment_ms=1_000, segments_kept=2, allowed_lateness_ms=200, frame_dim=4,
                    text_dim=3)  # fmt: skip


def item(eid: str, ts: int, modality: str = "frame", value: float = 1.0, offset: int = 0,
         live: str = "l1") -> ContentItem:  # fmt: skip
    vec = np.full(CFG.dim(modality), value, np.float32)  # type: ignore[arg-type]
    return ContentItem(modality, eid, "a1", live, T0 + ts, vec, f"live.{modality}", offset)  # type: ignore[arg-type]


def stream() -> list[ContentItem]:
    """Items that open, close and evict segments, with a late, a duplicate, an invalid
    vector and a replayed offset among them."""
    out = [item(f"f{i}", 300 * i, offset=i) for i in range(12)]
    out += [item("c0", 3_700, "comment", 2.0, offset=0), item("s0", 3_750, "asr", -1.0, offset=0)]
    out += [item("late", 100, offset=20), item("f11", 3_800, offset=21)]  # late; duplicate id
    out += [item("nan", 3_900, value=float("nan"), offset=22), item("f5", 1_500, offset=5)]
    out += [item("n0", 9_000, live="l2", offset=23)]  # a new live: the old segments go
    return out


def filled() -> LiveBuffer:
    """A buffer with an open segment, recently closed ids and applied offsets."""
    live = LiveBuffer(SegmentBuffer.empty("a1"))
    first = [item(f"h{i}", 250 * i - 2_000, offset=100 + i) for i in range(6)]
    for it, q in zip(first, windows.quantize_vectors(first, CFG), strict=True):
        live.apply(it, q, CFG)
    return live


def head() -> bytes:
    """`filled()` as a stored head, with a ref to a closed segment."""
    return CODEC.dumps((filled().snapshot(), ((T0 - 3_000, "l1"),)))


def test_apply_is_pure_same_state_and_item_give_the_same_step() -> None:
    stored = head()
    items = [it._replace(offset=it.offset + 200) for it in stream()]  # after the stored offsets
    a, b = (LiveBuffer(CODEC.loads(stored)[0]) for _ in range(2))
    kinds: set[str] = set()
    qa, qb = windows.quantize_vectors(items, CFG), windows.quantize_vectors(items, CFG)
    inputs = [(x, x.copy()) for x in [it.vector for it in items] + qa + qb if type(x) is np.ndarray]
    for it, q1, q2 in zip(items, qa, qb, strict=True):
        one, two = apply(CFG, a, (it, q1)), apply(CFG, b, (it, q2))
        assert one.state is a and two.state is b  # in place: the envelope decides when to store
        assert (one.outputs, one.rejects) == (two.outputs, two.rejects)
        kinds |= {r.reason for r in one.rejects} | ({"closed"} if one.outputs else set())
    for x, was in inputs:  # nothing else is touched: the items and vectors are as they were
        np.testing.assert_array_equal(x, was)  # (checked before a snapshot, which copies)
    assert CODEC.dumps((a.snapshot(), ())) == CODEC.dumps((b.snapshot(), ()))
    assert kinds == {"closed", "late", "duplicate", "validation_error"}
    # a replay (an offset the buffer applied) is a no-op for the step
    again = items[0]._replace(event_id="other")
    before = CODEC.dumps((a.snapshot(), ()))
    assert a.is_replay(again)
    step = apply(CFG, a, (again, windows.quantize_vectors([again], CFG)[0]))
    assert (step.outputs, step.rejects) == ((), ()) and CODEC.dumps((a.snapshot(), ())) == before


def test_the_step_agrees_with_update() -> None:
    live, buf = LiveBuffer(SegmentBuffer.empty("a1")), SegmentBuffer.empty("a1")
    items = stream()
    for it, q in zip(items, windows.quantize_vectors(items, CFG), strict=True):
        step = apply(CFG, live, (it, q))
        buf, closed, rejects = windows.update(buf, it, CFG)
        assert list(step.outputs) == closed
        assert [(r.event_id, r.reason) for r in step.rejects] == [
            (r.event_id, r.reason) for r in rejects
        ]
    refs = [(s.start_ms, s.live_id) for s in buf.closed]
    assert CODEC.dumps((live.snapshot(), refs)) == CODEC.dumps((buf, refs))


def test_codec_round_trips_a_buffer() -> None:
    raw = head()
    buf, refs = CODEC.loads(raw)
    assert CODEC.dumps((buf, refs)) == raw
    assert refs == ((T0 - 3_000, "l1"),) and buf.author_id == "a1"
    assert buf.watermark_ms == T0 - 750 and buf.applied == {"live.frame": 105}
    want = filled().snapshot()
    assert [s.start_ms for s in buf.open] == [s.start_ms for s in want.open] == [T0 - 1_000]
    for got, exp in zip(buf.open, want.open, strict=True):
        assert (got.live_id, got.live_key, got.counts) == (exp.live_id, exp.live_key, exp.counts)
        assert got.ids.to_list() == exp.ids.to_list()
        for g, e in zip(got.sums, exp.sums, strict=True):
            assert (g is None and e is None) or np.array_equal(g, e)  # type: ignore[arg-type]
    assert (
        buf.recent_closed_ids.to_list()
        == want.recent_closed_ids.to_list()
        == ["h0", "h1", "h2", "h3"]
    )


def test_stored_rows_follow_the_buffer() -> None:
    heads: dict[bytes, bytes] = {}
    rows: dict[bytes, bytes] = {}
    live, refs = LiveBuffer(SegmentBuffer.empty("a1")), ()
    published: list[SegmentClosed] = []
    items = stream()
    for it, q in zip(items, windows.quantize_vectors(items, CFG), strict=True):
        step = apply(CFG, live, (it, q))
        if step.outputs:
            refs, new = windows.store_buffer(heads, rows, live.snapshot(), refs, step.outputs, CFG)
            assert new == [s.model_dump_json().encode() for s in step.outputs]
            published += step.outputs
    kept = windows.load_closed(rows, "a1", refs, CFG)
    assert kept == [s for s in published if (s.start_ms, s.live_id) in refs]
    assert len(rows) == len(refs) <= CFG.segments_kept  # evicted rows were deleted
    assert {s.live_id for s in kept} == {"l1"} and len(published) > len(kept)
    buf, stored_refs = windows.load_buffer(heads, "a1")
    assert stored_refs == refs and buf.watermark_ms == live.watermark_ms
    assert windows.load_buffer(heads, "nobody") == (SegmentBuffer.empty("nobody"), ())


def test_the_components_are_objects_with_frozen_configs() -> None:
    settings = Settings(segment_ms=5_000, asr_model="base.en", asr_batch_max=2)
    cfg = COMPONENT.config(settings)
    assert COMPONENT.name == "segments" and cfg.segment_ms == 5_000
    assert COMPONENTS["segments"] is COMPONENT and COMPONENT.codec is CODEC
    acfg = asr.COMPONENT.config(settings)
    assert (acfg.model, acfg.batch_max, asr.COMPONENT.codec) == ("base.en", 2, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.segment_ms = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        acfg.batch_max = 1  # type: ignore[misc]


@pytest.mark.parametrize("module", [segments, asr, windows])
def test_the_module_examples_hold(module: object) -> None:
    assert doctest.testmod(module).failed == 0  # type: ignore[arg-type]
