"""Segment buffers: window arithmetic, pooling, lateness, duplicates, replays, order invariance."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmbee.schemas import (
    AsrSegment,
    CommentEvent,
    FrameEvent,
    SegmentClosed,
    decode_embedding,
    encode_embedding,
)
from mmbee.state.segments import (
    MAX_ABS_VALUE,
    MAX_ITEMS_PER_SEGMENT,
    ContentItem,
    IdSet,
    LiveBuffer,
    OpenSegment,
    Reject,
    SegmentBuffer,
    SegmentConfig,
    append_closed,
    append_refs,
    close_all,
    decode_head,
    encode_head,
    quantize_vectors,
    segment_key,
    update,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "streams"))  # as its conftest does
from segref import fold  # noqa: E402  (the one offline fold, shared with the agent's tests)

T0 = 1_700_000_000_000 - (1_700_000_000_000 % 60_000)  # a multiple of every segment length used
CFG = SegmentConfig(
    segment_ms=1_000, segments_kept=3, allowed_lateness_ms=200, frame_dim=4, text_dim=3
)


def item(
    eid: str,
    ts: int,
    modality: str = "frame",
    value: float = 1.0,
    author: str = "a1",
    live: str = "l1",
    cfg: SegmentConfig = CFG,
    offset: int | None = None,
) -> ContentItem:
    vec = np.full(cfg.dim(modality), value, dtype=np.float32)  # type: ignore[arg-type]
    return ContentItem(
        modality,  # type: ignore[arg-type]
        eid,
        author,
        live,
        T0 + ts,
        vec,
        None if offset is None else f"live.{modality}",
        offset,
    )


def state(buf: SegmentBuffer) -> bytes:
    """The whole buffer, canonically: its head and its closed segments."""
    return b"\n".join([encode_head(buf), *(s.model_dump_json().encode() for s in buf.closed)])


def closes(buf: SegmentBuffer, at_ms: int) -> list[SegmentClosed]:
    """The segments an item at `at_ms` (another live's frame: it joins no open segment) would
    close, i.e. what a watermark of `at_ms` closes."""
    later = ContentItem("frame", "probe", buf.author_id, "probe-live", at_ms,
                        np.zeros(CFG.frame_dim, np.float32))  # fmt: skip
    return update(buf, later, CFG)[1]


@given(
    ts=st.integers(min_value=946_684_800_000, max_value=4_102_444_799_999),
    seg=st.integers(min_value=1, max_value=3_600_000),
    late=st.integers(min_value=0, max_value=3_600_000),
)
def test_window_arithmetic(ts: int, seg: int, late: int) -> None:
    start = ts - ts % seg  # the segment holding ts: [k * seg, (k + 1) * seg)
    # the segment holding ts closes exactly when the watermark reaches its end + lateness
    if not 946_684_800_000 <= start < start + seg + late < 4_102_444_800_000:
        return  # the schema's event-time range (years 2000-2099) holds the segment and probe
    one = ContentItem("frame", "a", "a1", "l1", ts, np.zeros(4, np.float32))
    small = SegmentConfig(segment_ms=seg, allowed_lateness_ms=late, frame_dim=4, text_dim=3)
    buf = update(SegmentBuffer.empty("a1"), one, small)[0]
    assert [s.start_ms for s in close_all(buf, small)[1]] == [start]

    def closed_by(at: int) -> int:
        probe = ContentItem("frame", "p", "a1", "l1", at, np.zeros(4, np.float32))
        return len(update(buf, probe, small)[1])

    assert closed_by(start + seg + late) == 1
    assert closed_by(start + seg + late - 1) == 0


def test_pooled_means_and_counts() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(5, 4)).astype(np.float32)
    buf = SegmentBuffer.empty("a1")
    for i, v in enumerate(vecs):
        buf, closed, rejects = update(
            buf, ContentItem("frame", f"f{i}", "a1", "l1", T0 + 100 * i, v), CFG
        )
        assert closed == [] and rejects == []
    buf, c, _ = update(buf, item("c1", 300, "comment", 2.0), CFG)
    buf, c, _ = update(buf, item("s1", 400, "asr", -1.0), CFG)
    buf, closed, rejects = update(buf, item("x", 1_200, "comment"), CFG)  # 1200 = 1000 + 200
    assert rejects == [] and len(closed) == 1
    seg = closed[0]
    assert (seg.start_ms, seg.end_ms) == (T0, T0 + 1_000)
    assert (seg.n_frames, seg.n_comments, seg.n_asr) == (5, 1, 1)
    np.testing.assert_allclose(decode_embedding(seg.frame_mean), vecs.mean(0), atol=1e-6)
    np.testing.assert_array_equal(decode_embedding(seg.comment_mean), [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(decode_embedding(seg.asr_mean), [-1.0, -1.0, -1.0])
    assert buf.closed == (seg,)
    assert [s.start_ms for s in buf.open] == [T0 + 1_000]


def test_missing_modality_pools_to_none() -> None:
    buf, _, _ = update(SegmentBuffer.empty("a1"), item("f", 0), CFG)
    buf, closed = close_all(buf, CFG)
    assert closed[0].comment_mean is None and closed[0].asr_mean is None
    assert closed[0].n_comments == 0


def test_lateness_boundary() -> None:
    buf, _, _ = update(SegmentBuffer.empty("a1"), item("a", 900), CFG)
    buf, closed, _ = update(buf, item("b", 1_199), CFG)  # watermark 1199: segment 0 still open
    assert closed == []
    buf, _, rejects = update(buf, item("c", 10), CFG)  # 1189 ms behind, within lateness
    assert rejects == []
    buf, closed, _ = update(buf, item("d", 1_200), CFG)  # closes segment 0
    assert [s.n_frames for s in closed] == [2]
    buf2, _, rejects = update(buf, item("e", 999), CFG)
    assert [r.reason for r in rejects] == ["late"]
    assert state(buf2) == state(buf)
    buf3, _, rejects = update(buf, item("f", 1_000), CFG)  # next segment is still open
    assert rejects == []


def test_duplicates_apply_once() -> None:
    buf, _, _ = update(SegmentBuffer.empty("a1"), item("a", 0), CFG)
    once = state(buf)
    buf, _, rejects = update(buf, item("a", 5, value=9.0), CFG)
    assert [r.reason for r in rejects] == ["duplicate"]
    assert state(buf) == once
    # shortly after its segment closed a re-sent event is still a duplicate, not "late"
    buf, closed, _ = update(buf, item("b", 1_500), CFG)
    assert len(closed) == 1
    _, _, rejects = update(buf, item("a", 0), CFG)
    assert [r.reason for r in rejects] == ["duplicate"]


def test_bad_vectors_are_rejected() -> None:
    buf = SegmentBuffer.empty("a1")
    wrong = item("w", 0)._replace(vector=np.ones(5, np.float32))
    nan = item("n", 0)._replace(vector=np.array([1, np.nan, 0, 0], np.float32))
    huge = item("h", 0)._replace(vector=np.array([1e30, 0, 0, 0], np.float32))
    for bad in (wrong, nan, huge):
        out, closed, rejects = update(buf, bad, CFG)
        assert [r.reason for r in rejects] == ["validation_error"] and out is buf


def test_wrong_author_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="author"):
        update(SegmentBuffer.empty("a2"), item("x", 0), CFG)


def test_update_does_not_modify_its_input() -> None:
    buf, _, _ = update(SegmentBuffer.empty("a1"), item("a", 0), CFG)
    before = state(buf)
    update(buf, item("b", 10), CFG)
    update(buf, item("c", 5_000), CFG)
    assert state(buf) == before


def test_replays_are_recognised_and_change_nothing() -> None:
    buf = SegmentBuffer.empty("a1")
    for off in range(3):
        buf, _, _ = update(buf, item(f"e{off}", 10 * off, offset=off), CFG)
    again = item("e1", 10, offset=1)
    out, closed, rejects = update(buf, again, CFG)
    assert out is buf and closed == [] and rejects == []  # a replay: nothing, not a duplicate
    assert update(buf, item("e3", 30, offset=3), CFG)[0] is not buf  # a new offset applies
    # no source: not a replay, so the same id is a duplicate
    assert [r.reason for r in update(buf, item("e1", 10), CFG)[2]] == ["duplicate"]


def test_keeps_last_l_segments_and_resets_on_a_new_live() -> None:
    buf = SegmentBuffer.empty("a1")
    for k in range(6):
        buf, _, _ = update(buf, item(f"f{k}", 1_000 * k), CFG)
    buf, _, _ = update(buf, item("n", 20_000, live="l2"), CFG)  # closes 5_000 on the way
    assert [(s.live_id, s.start_ms - T0) for s in buf.closed] == [
        ("l1", 3_000),
        ("l1", 4_000),
        ("l1", 5_000),
    ]
    buf, closed = close_all(buf, CFG)
    assert [(s.live_id, s.start_ms - T0) for s in buf.closed] == [("l2", 20_000)]
    assert [s.live_id for s in closed] == ["l2"]
    assert append_closed(buf.closed[:0], closed, CFG) == tuple(closed)


def test_an_item_far_behind_the_watermark_closes_nothing_and_is_late() -> None:
    buf, _, _ = update(SegmentBuffer.empty("a1"), item("a", 5_000), CFG)
    out, closed, rejects = update(buf, item("b", 0), CFG)
    assert closed == [] and out.watermark_ms == buf.watermark_ms
    assert [r.reason for r in rejects] == ["late"]
    assert len(closes(buf, T0 + 6_200)) == 1


def test_live_id_is_the_latest_items() -> None:
    buf = SegmentBuffer.empty("a1")
    for eid, ts, live in [("b", 500, "l2"), ("a", 100, "l1")]:
        buf, _, _ = update(buf, item(eid, ts, live=live), CFG)
    _, closed = close_all(buf, CFG)
    assert closed[0].live_id == "l2"


def test_state_round_trip() -> None:
    buf = SegmentBuffer.empty("a1")
    for k in range(8):
        mod = ["frame", "comment", "asr"][k % 3]
        buf, _, _ = update(buf, item(f"e{k}", 450 * k, mod, offset=k), CFG)
    assert buf.closed and buf.open
    head, refs = decode_head(encode_head(buf))
    assert refs == tuple((s.start_ms, s.live_id) for s in buf.closed)
    assert encode_head(head, refs) == encode_head(buf)
    assert segment_key("a1", 5) == "a1|5"


def test_refs_follow_the_same_rule_as_closed_segments() -> None:
    buf = SegmentBuffer.empty("a1")
    refs: tuple[tuple[int, str], ...] = ()
    evicted_all: list[tuple[int, str]] = []
    for k in range(7):
        buf, closed, _ = update(buf, item(f"f{k}", 1_000 * k, live="l2" if k >= 5 else "l1"), CFG)
        refs, evicted = append_refs(refs, closed, CFG)
        evicted_all += evicted
    assert refs == tuple((s.start_ms, s.live_id) for s in buf.closed)
    kept = set(refs)
    assert kept.isdisjoint(evicted_all) and len(kept) + len(evicted_all) == 5


def test_id_set() -> None:
    ids = IdSet()
    for i in range(600):
        ids = ids.add(f"e{i}")
    assert len(ids) == 600 and len(ids.chunks) == 10
    assert "e599" in ids and "e600" not in ids
    assert IdSet.of(ids.to_list()).to_list() == ids.to_list()


def test_items_from_events() -> None:
    cfg = SegmentConfig(frame_dim=4, text_dim=3)
    ctx = cfg.validation_context()
    frame = FrameEvent.model_validate(
        dict(event_id="f", ts_ms=T0, live_id="l", author_id="a", embedding=[1, 2, 3, 4]),
        context=ctx,
    )
    comment = CommentEvent.model_validate(
        dict(event_id="c", ts_ms=T0, user_id="u", author_id="a", live_id="l", text="hi",
             text_embedding=encode_embedding(np.ones(3))),
        context=ctx,
    )  # fmt: skip
    asr = AsrSegment.model_validate(
        dict(event_id="s", ts_ms=T0, end_ms=T0 + 4_000, live_id="l", author_id="a", text="x"),
        context=ctx,
    )
    f = ContentItem.from_event(frame, source="live.frames", offset=7)
    assert f.modality == "frame" and f.vector.tolist() == [1, 2, 3, 4] and f.offset == 7
    assert ContentItem.from_event(comment).vector.tolist() == [1, 1, 1]
    s = ContentItem.from_event(asr, np.zeros(3, np.float32))
    assert s.modality == "asr" and s.ts_ms == T0 + 2_000
    with pytest.raises(ValueError, match="no embedding"):
        ContentItem.from_event(asr)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[ContentItem], list[ContentItem]]:
    """Items of two authors in event-time order, and an arrival order where every item is at
    most `allowed_lateness_ms` behind the latest item seen before it."""
    n = draw(st.integers(min_value=1, max_value=40))
    items = []
    for i in range(n):
        ts = draw(st.integers(min_value=0, max_value=6_000))
        mod = draw(st.sampled_from(["frame", "comment", "asr"]))
        author = draw(st.sampled_from(["a1", "a2"]))
        value = draw(st.floats(min_value=-3, max_value=3, allow_nan=False, width=32))
        items.append(item(f"e{i}", ts, mod, value, author=author))
    jitter = [draw(st.integers(min_value=0, max_value=CFG.allowed_lateness_ms)) for _ in items]
    keys = [(i.ts_ms + j, k) for k, (i, j) in enumerate(zip(items, jitter, strict=True))]
    arrival = [items[k] for _, k in sorted(keys)]
    by_time = sorted(items, key=lambda i: (i.ts_ms, i.event_id))
    return by_time, arrival


@settings(max_examples=60, deadline=None)
@given(streams())
def test_order_within_lateness_does_not_matter(
    case: tuple[list[ContentItem], list[ContentItem]],
) -> None:
    by_time, arrival = case
    ref, ref_closed, ref_rejects = fold(by_time, CFG)
    got, got_closed, got_rejects = fold(arrival, CFG)
    assert ref_rejects == [] and got_rejects == []
    assert {a: state(b) for a, b in got.items()} == {a: state(b) for a, b in ref.items()}
    key = lambda s: (s.author_id, s.start_ms)  # noqa: E731
    assert sorted(got_closed, key=key) == sorted(ref_closed, key=key)


@settings(max_examples=40, deadline=None)
@given(streams(), st.data())
def test_duplicates_anywhere_change_nothing(
    case: tuple[list[ContentItem], list[ContentItem]], data: st.DataObject
) -> None:
    by_time, _ = case
    dup_at = data.draw(st.lists(st.integers(0, len(by_time) - 1), max_size=5))
    stream = list(by_time)
    for pos in sorted(dup_at, reverse=True):
        stream.insert(pos + 1, by_time[pos])
    ref, ref_closed, _ = fold(by_time, CFG)
    got, got_closed, rejects = fold(stream, CFG)
    assert {a: state(b) for a, b in got.items()} == {a: state(b) for a, b in ref.items()}
    assert got_closed == ref_closed
    assert len(rejects) == len(dup_at) and {r.reason for r in rejects} <= {"duplicate"}


# --- the batch paths against an independent per-item reference ------------------------------
#
# `reference_update` is the straightforward per-item implementation `update` had before the
# mutable `LiveBuffer` took over (immutable rebuild per item, one numpy conversion per vector).
# The fast paths must give exactly its buffers, closed segments and rejects.


def _ref_vector_reject(it: ContentItem, cfg: SegmentConfig) -> Reject | None:
    vec, want = it.vector, cfg.dim(it.modality)
    if vec.ndim != 1 or vec.shape[0] != want:
        return Reject(
            it.event_id,
            "validation_error",
            f"{it.modality} embedding has shape {tuple(vec.shape)}, expected ({want},)",
        )
    peak = float(np.abs(vec).max())
    if not peak <= MAX_ABS_VALUE:
        if not np.isfinite(vec).all():
            return Reject(it.event_id, "validation_error", "embedding has non-finite values")
        return Reject(
            it.event_id,
            "validation_error",
            f"embedding value {peak:.3g} exceeds the supported magnitude {MAX_ABS_VALUE:.0f}",
        )
    return None


def _ref_close(seg: OpenSegment, author: str, cfg: SegmentConfig) -> SegmentClosed:
    def mean(total: np.ndarray | None, n: int) -> str | None:
        if total is None or n == 0:
            return None
        return encode_embedding((total.astype(np.float64) / (n * 2.0**24)).astype(np.float32))

    return SegmentClosed.model_validate(
        {
            "author_id": author, "live_id": seg.live_id, "start_ms": seg.start_ms,
            "end_ms": seg.start_ms + cfg.segment_ms, "n_frames": seg.counts[0],
            "n_comments": seg.counts[1], "n_asr": seg.counts[2],
            "frame_mean": mean(seg.sums[0], seg.counts[0]),
            "comment_mean": mean(seg.sums[1], seg.counts[1]),
            "asr_mean": mean(seg.sums[2], seg.counts[2]),
        },
        context=cfg.validation_context(),
    )  # fmt: skip


def reference_update(
    buf: SegmentBuffer, it: ContentItem, cfg: SegmentConfig
) -> tuple[SegmentBuffer, list[SegmentClosed], list[Reject]]:
    if it.source is not None and it.offset is not None:
        done = buf.applied.get(it.source)
        if done is not None and it.offset <= done:
            return buf, [], []
    bad = _ref_vector_reject(it, cfg)
    if bad is not None:
        return buf, [], [bad]
    eid, ts, seg_ms, late = it.event_id, it.ts_ms, cfg.segment_ms, cfg.allowed_lateness_ms
    if eid in buf.recent_closed_ids or any(eid in s.ids for s in buf.open):
        return buf, [], [Reject(eid, "duplicate", "event_id already applied")]
    wm = buf.watermark_ms
    if wm is not None and ts < ((wm - late) // seg_ms) * seg_ms:
        return buf, [], [Reject(eid, "late", "")]
    start, m = (ts // seg_ms) * seg_ms, ["frame", "comment", "asr"].index(it.modality)
    q = np.rint(it.vector.astype(np.float32) * np.float32(2**24)).astype(np.int64)
    opened = {s.start_ms: s for s in buf.open}
    seg = opened.get(start)
    if seg is None:
        sums: list[np.ndarray | None] = [None, None, None]
        sums[m] = q
        counts = [0, 0, 0]
        counts[m] = 1
        seg = OpenSegment(start, it.live_id, (ts, eid), tuple(sums), tuple(counts),  # type: ignore[arg-type]
                          IdSet().add(eid))  # fmt: skip
    else:
        if seg.counts[m] >= MAX_ITEMS_PER_SEGMENT:
            return buf, [], [Reject(eid, "oversized", "")]
        sums = list(seg.sums)
        sums[m] = q if sums[m] is None else sums[m] + q
        counts = list(seg.counts)
        counts[m] += 1
        live = (it.live_id, (ts, eid)) if (ts, eid) > seg.live_key else (seg.live_id, seg.live_key)
        seg = OpenSegment(start, *live, tuple(sums), tuple(counts), seg.ids.add(eid))  # type: ignore[arg-type]
    opened[start] = seg
    applied = dict(buf.applied)
    if it.source is not None and it.offset is not None:
        applied[it.source] = it.offset
    new_wm = ts if wm is None else max(wm, ts)
    horizon = ((new_wm - late) // seg_ms) * seg_ms
    due = [opened.pop(s) for s in sorted(opened) if s < horizon]
    closed = [_ref_close(s, buf.author_id, cfg) for s in due]
    recent = IdSet(tuple(c for s in due for c in s.ids.chunks)) if due else buf.recent_closed_ids
    return (
        SegmentBuffer(buf.author_id, append_closed(buf.closed, closed, cfg),
                      tuple(opened[s] for s in sorted(opened)), new_wm, recent, applied),
        closed,
        [],
    )  # fmt: skip


@st.composite
def messy_batches(draw: st.DrawFn) -> tuple[list[ContentItem], list[int]]:
    """Items of three authors with late arrivals, re-sent ids, redelivered offsets, bad vectors
    and live changes, plus a random cut of them into batches."""
    n = draw(st.integers(min_value=1, max_value=60))
    items: list[ContentItem] = []
    offsets: dict[str, int] = {}
    for i in range(n):
        author = draw(st.sampled_from(["a1", "a2", "a3"]))
        kind = draw(st.sampled_from(["new"] * 6 + ["resend", "redeliver", "nan", "huge", "width"]))
        if kind in ("resend", "redeliver") and items:
            old = draw(st.sampled_from(items))
            items.append(old if kind == "redeliver" else old._replace(offset=None))
            continue
        mod = draw(st.sampled_from(["frame", "comment", "asr"]))
        ts = draw(st.integers(min_value=0, max_value=8_000))
        value = draw(st.floats(min_value=-4, max_value=4, allow_nan=False, width=32))
        live = "l2" if ts > 6_000 and author == "a1" else "l1"
        src = f"live.{mod}"
        off = offsets[src] = offsets.get(src, -1) + 1
        it = item(f"e{i}", ts, mod, value, author=author, live=live)._replace(
            source=src, offset=off
        )
        if kind == "nan":
            it = it._replace(vector=np.full(CFG.dim(mod), np.nan, np.float32))  # type: ignore[arg-type]
        elif kind == "huge":
            it = it._replace(vector=np.full(CFG.dim(mod), 3e6, np.float32))  # type: ignore[arg-type]
        elif kind == "width":
            it = it._replace(vector=np.ones(CFG.dim(mod) + 1, np.float32))  # type: ignore[arg-type]
        items.append(it)
    cuts = sorted(draw(st.lists(st.integers(0, len(items)), max_size=6)))
    return items, cuts


def _chunks(items: list[ContentItem], cuts: list[int]) -> list[list[ContentItem]]:
    edges = [0, *cuts, len(items)]
    return [items[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def _same_rejects(got: list[Reject], want: list[Reject]) -> None:
    assert [(r.event_id, r.reason) for r in got] == [(r.event_id, r.reason) for r in want]


@settings(max_examples=80, deadline=None)
@given(messy_batches())
def test_update_and_batches_equal_the_per_item_reference(
    case: tuple[list[ContentItem], list[int]],
) -> None:
    items, cuts = case
    ref, ref_closed, ref_rejects = fold(items, CFG, reference_update)
    got, got_closed, got_rejects = fold(items, CFG)  # update, item by item
    assert {a: state(b) for a, b in got.items()} == {a: state(b) for a, b in ref.items()}
    assert got_closed == ref_closed
    _same_rejects(got_rejects, ref_rejects)
    # the agent's way: one LiveBuffer per stream, vectors quantized per batch, snapshots between
    lives: dict[str, LiveBuffer] = {}
    live_closed: list[SegmentClosed] = []
    live_rejects: list[Reject] = []
    snaps: list[tuple[SegmentBuffer, bytes]] = []
    for chunk in _chunks(items, cuts):
        for it, q in zip(chunk, quantize_vectors(chunk, CFG), strict=True):
            live = lives.setdefault(it.author_id, LiveBuffer(SegmentBuffer.empty(it.author_id)))
            outcome, c = live.apply(it, q, CFG)
            live_closed += c
            if isinstance(outcome, Reject):
                live_rejects.append(outcome)
        for live in lives.values():
            snap = live.snapshot()  # shares the sums: later adds must copy, not write through
            snaps.append((snap, state(snap)))
    assert live_closed == ref_closed
    _same_rejects(live_rejects, ref_rejects)
    assert all(state(snap) == data for snap, data in snaps)
    for author, live in lives.items():
        want = ref[author]
        refs = [(s.start_ms, s.live_id) for s in want.closed]
        assert encode_head(live.snapshot(), refs) == encode_head(want)


def test_snapshots_are_not_changed_by_later_items() -> None:
    live = LiveBuffer(SegmentBuffer.empty("a1"))
    first = [item("e0", 0), item("e1", 100, "comment")]
    for it, q in zip(first, quantize_vectors(first, CFG), strict=True):
        live.apply(it, q, CFG)
    snap = live.snapshot()
    before = state(snap)
    more = [item("e2", 200, value=5.0), item("e3", 300, "comment", value=-2.0)]
    for it, q in zip(more, quantize_vectors(more, CFG), strict=True):
        assert live.apply(it, q, CFG)[0] == "applied"
    assert state(snap) == before
    assert live.snapshot().open[0].counts == (2, 2, 0)


def test_id_set_extend_is_adding_one_by_one() -> None:
    ids = [f"e{i}" for i in range(150)]
    one_by_one = IdSet()
    for i in ids[:30]:
        one_by_one = one_by_one.add(i)
    bulk = one_by_one.extend(ids[30:])
    for i in ids[30:]:
        one_by_one = one_by_one.add(i)
    assert bulk == one_by_one and len(bulk.chunks) == 3
