"""Rolling per-stream segment buffers: pure event-time windowing of content embeddings (numpy only).

A live stream's content (frame embeddings, comment and ASR text embeddings) falls into fixed
event-time segments `[k * segment_ms, (k + 1) * segment_ms)`. A segment closes when the stream's
watermark (the largest accepted event time) passes its end plus the allowed lateness; closing
pools each modality to a mean vector and yields a `SegmentClosed`. The buffer keeps the last
`segments_kept` (MMBee's L) closed segments of the current live, oldest -> newest.

Everything here is deterministic and side-effect free: the segment agent
(`mmbee.streams.components.segments`) and the scorer's offline feature pipeline call the same
functions, so a replayed log gives the same segments as the live run.

Exactness: sums are accumulated in fixed point (int64, 2**-24 resolution), so the pooled means do
not depend on the order in which events arrive; events reordered within the allowed lateness give
bit-identical segments (float sums would differ in the last bits).

Shapes: d_v = `frame_dim` (1280), d_t = `text_dim` (384).

Example:
    >>> cfg = SegmentConfig(segment_ms=1_000, allowed_lateness_ms=0, frame_dim=2, text_dim=2)
    >>> buf = SegmentBuffer.empty("a1")
    >>> t0 = 1_700_000_000_000
    >>> item = ContentItem("frame", "e1", "a1", "l1", t0, np.ones(2, np.float32))
    >>> buf, closed, rejects = update(buf, item, cfg)
    >>> later = ContentItem("comment", "e2", "a1", "l1", t0 + 1_000, np.ones(2, np.float32))
    >>> buf, closed, rejects = update(buf, later, cfg)
    >>> [(c.start_ms - t0, c.n_frames) for c in closed], rejects
    ([(0, 1)], [])
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from mmbee.schemas.events import AsrSegment, CommentEvent, FrameEvent, SegmentClosed
from mmbee.schemas.types import decode_embedding, encode_embedding

__all__ = [
    "MODALITIES",
    "Modality",
    "RejectReason",
    "FIXED_POINT_SCALE",
    "MAX_ABS_VALUE",
    "MAX_ITEMS_PER_SEGMENT",
    "SegmentConfig",
    "ContentItem",
    "Reject",
    "IdSet",
    "OpenSegment",
    "SegmentBuffer",
    "update",
    "LiveBuffer",
    "quantize_vectors",
    "Outcome",
    "close_all",
    "append_closed",
    "append_refs",
    "ClosedRef",
    "segment_key",
    "store_buffer",
    "load_buffer",
    "load_closed",
    "HeadCodec",
    "encode_head",
    "decode_head",
]

Modality = Literal["frame", "comment", "asr"]
MODALITIES: tuple[Modality, ...] = ("frame", "comment", "asr")
"""Order of the per-modality accumulators (frames, comments, ASR)."""
_MOD_INDEX: dict[str, int] = {m: i for i, m in enumerate(MODALITIES)}

RejectReason = Literal["late", "duplicate", "validation_error", "oversized"]
"""Why an item was not applied (a subset of `DeadLetterReason`)."""
ClosedRef = tuple[int, str]
"""A closed segment referred to by (start_ms, live_id)."""

FIXED_POINT_SCALE = float(2**24)
"""Embedding values are summed as int64 multiples of 2**-24 (exact, order-independent)."""
MAX_ABS_VALUE = float(2**20)
"""Largest |value| accepted in an embedding: keeps 2**19 summed items inside int64."""
MAX_ITEMS_PER_SEGMENT = 100_000
"""Items of one modality in one segment beyond this are rejected as "oversized"."""
_ID_CHUNK = 64


@dataclass(frozen=True)
class SegmentConfig:
    """Segment geometry and feature widths of the rolling buffer.

    Attributes:
        segment_ms: segment length in event time (MMBee uses 30 s).
        segments_kept: L, closed segments kept per stream (5, 10 or 20 in MMBee's Table 6).
        allowed_lateness_ms: a segment stays open this long after its end (in watermark time),
            so events this late still land in it; later ones are rejected as "late".
        frame_dim: width of frame embeddings (d_v).
        text_dim: width of comment and ASR text embeddings (d_t).

    Example:
        >>> SegmentConfig(segment_ms=10_000).segments_kept
        10
    """

    segment_ms: int = 30_000
    segments_kept: int = 10
    allowed_lateness_ms: int = 10_000
    frame_dim: int = 1280
    text_dim: int = 384

    def __post_init__(self) -> None:
        if self.segment_ms <= 0:
            raise ValueError(f"segment_ms must be > 0, got {self.segment_ms}")
        if self.segments_kept <= 0:
            raise ValueError(f"segments_kept must be > 0, got {self.segments_kept}")
        if self.allowed_lateness_ms < 0:
            raise ValueError(f"allowed_lateness_ms must be >= 0, got {self.allowed_lateness_ms}")
        if self.frame_dim <= 0 or self.text_dim <= 0:
            raise ValueError("frame_dim and text_dim must be > 0")

    def dim(self, modality: Modality) -> int:
        """Expected embedding width of `modality`."""
        return self.frame_dim if modality == "frame" else self.text_dim

    def validation_context(self) -> dict[str, int]:
        """The pydantic validation context that sets the embedding widths of the schemas."""
        return {"frame_dim": self.frame_dim, "text_dim": self.text_dim}


class ContentItem(NamedTuple):
    """One embedded piece of content of one stream, ready for the buffer.

    `source` and `offset` identify where the item was read (e.g. the topic name and the Kafka
    offset; the partition is implied by the author); when both are set, items at or below the
    buffer's applied offset for that source are recognised as replays.

    Shapes:
        vector: (d_v,) for frames, (d_t,) for comments and ASR; float32.

    Example:
        >>> ContentItem("comment", "c1", "a1", "l1", 1_700_000_000_000, np.zeros(4, np.float32))[0]
        'comment'
    """

    modality: Modality
    event_id: str
    author_id: str
    live_id: str
    ts_ms: int
    vector: np.ndarray
    source: str | None = None
    offset: int | None = None

    @classmethod
    def from_event(
        cls,
        event: FrameEvent | CommentEvent | AsrSegment,
        vector: np.ndarray | None = None,
        *,
        source: str | None = None,
        offset: int | None = None,
    ) -> ContentItem:
        """The item of a validated content event.

        `vector` is the featurizer's output for events without a precomputed embedding (a frame
        sent as JPEG, a comment or ASR text without `text_embedding`); otherwise the event's own
        embedding is decoded. An ASR segment is placed at the middle of its speech.
        """
        modality: Modality
        if isinstance(event, FrameEvent):
            modality, wire, ts = "frame", event.embedding, event.ts_ms
        elif isinstance(event, CommentEvent):
            modality, wire, ts = "comment", event.text_embedding, event.ts_ms
        elif isinstance(event, AsrSegment):
            modality, wire = "asr", event.text_embedding
            ts = (event.ts_ms + event.end_ms) // 2
        else:  # pragma: no cover - guarded by the type
            raise TypeError(f"not a content event: {type(event).__name__}")
        if vector is None:
            if wire is None:
                raise ValueError(f"event {event.event_id} has no embedding and none was given")
            vector = decode_embedding(wire)  # a validated field carries it: no second decode
        if type(vector) is not np.ndarray or vector.dtype != np.float32 or vector.ndim != 1:
            vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        return cls(
            modality, event.event_id, event.author_id, event.live_id, ts, vector, source, offset
        )


class Reject(NamedTuple):
    """An item the buffer refused, with the reason (it goes to the dead-letter topic)."""

    event_id: str
    reason: RejectReason
    detail: str


Outcome = Reject | Literal["applied", "replayed"]
"""What applying one item did: applied, recognised as a replay, or rejected."""


class IdSet(NamedTuple):
    """An immutable set of event ids with O(chunk) insertion (chunks of <= 64 ids).

    Example:
        >>> ids = IdSet().add("a").add("b")
        >>> "a" in ids, "c" in ids, len(ids)
        (True, False, 2)
    """

    chunks: tuple[frozenset[str], ...] = ()

    def add(self, event_id: str) -> IdSet:
        """A new set with `event_id` added."""
        chunks = self.chunks
        if chunks and len(chunks[-1]) < _ID_CHUNK:
            return IdSet((*chunks[:-1], chunks[-1] | {event_id}))
        return IdSet((*chunks, frozenset((event_id,))))

    def extend(self, event_ids: Sequence[str]) -> IdSet:
        """A new set with `event_ids` (new, distinct ids) added: the same chunks as adding them
        one by one."""
        if not event_ids:
            return self
        chunks = list(self.chunks)
        pos = 0
        if chunks and len(chunks[-1]) < _ID_CHUNK:
            pos = _ID_CHUNK - len(chunks[-1])
            chunks[-1] = chunks[-1] | frozenset(event_ids[:pos])
        for at in range(pos, len(event_ids), _ID_CHUNK):
            chunks.append(frozenset(event_ids[at : at + _ID_CHUNK]))
        return IdSet(tuple(chunks))

    def __contains__(self, event_id: object) -> bool:
        for chunk in self.chunks:
            if event_id in chunk:
                return True
        return False

    def __len__(self) -> int:
        return sum(len(c) for c in self.chunks)

    def to_list(self) -> list[str]:
        """All ids, sorted (a canonical form for serialisation and comparison)."""
        return sorted(i for c in self.chunks for i in c)

    @classmethod
    def of(cls, ids: Iterable[str]) -> IdSet:
        """A set holding `ids`."""
        out = cls()
        for i in sorted(set(ids)):
            out = out.add(i)
        return out


class OpenSegment(NamedTuple):
    """Accumulators of a segment that has not closed yet.

    Attributes:
        start_ms: segment start (a multiple of `segment_ms`).
        live_id: live id of the item with the largest (ts_ms, event_id) so far.
        live_key: that item's (ts_ms, event_id); makes `live_id` independent of arrival order.
        sums: per modality (`MODALITIES` order) an int64 fixed-point sum (d,), or None if empty.
        counts: items per modality.
        ids: event ids applied to this segment.
    """

    start_ms: int
    live_id: str
    live_key: tuple[int, str]
    sums: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]
    counts: tuple[int, int, int]
    ids: IdSet


class SegmentBuffer(NamedTuple):
    """The rolling segment buffer of one stream (author). Immutable; `update` returns a new one.

    Attributes:
        author_id: the stream's author.
        closed: the last L closed segments of the current live, oldest -> newest.
        open: segments still accepting items, by start time.
        watermark_ms: the largest accepted event time, None before the first item.
        recent_closed_ids: ids of the most recently closed segment(s), so a re-sent event is
            reported as "duplicate" rather than "late" shortly after its segment closed.
        applied: per source, the highest offset applied (replay detection after a restart).

    Example:
        >>> SegmentBuffer.empty("a1").watermark_ms is None
        True
    """

    author_id: str
    closed: tuple[SegmentClosed, ...] = ()
    open: tuple[OpenSegment, ...] = ()
    watermark_ms: int | None = None
    recent_closed_ids: IdSet = IdSet()
    applied: Mapping[str, int] = {}

    @classmethod
    def empty(cls, author_id: str) -> SegmentBuffer:
        """A buffer with nothing in it yet."""
        return cls(author_id)


def _check_vector(item: ContentItem, config: SegmentConfig) -> Reject | None:
    vec = item.vector
    want = config.dim(item.modality)
    if vec.ndim != 1 or vec.shape[0] != want:
        return Reject(
            item.event_id,
            "validation_error",
            f"{item.modality} embedding has shape {tuple(vec.shape)}, expected ({want},)",
        )
    peak = float(np.abs(vec).max())
    if not peak <= MAX_ABS_VALUE:  # also catches NaN, whose comparisons are all False
        if not np.isfinite(vec).all():
            return Reject(item.event_id, "validation_error", "embedding has non-finite values")
        return Reject(
            item.event_id,
            "validation_error",
            f"embedding value {peak:.3g} exceeds the supported magnitude {MAX_ABS_VALUE:.0f}",
        )
    return None


_SCALE32 = np.float32(FIXED_POINT_SCALE)


def _quantize(vecs: np.ndarray) -> np.ndarray:
    # x * 2**24 is exact in float32 (a power-of-two scale, |x| <= 2**20), so rounding it there
    # equals rounding the exact product.
    return np.rint(vecs.astype(np.float32, copy=False) * _SCALE32).astype(np.int64)  # (k, d)


def quantize_vectors(
    items: Sequence[ContentItem], config: SegmentConfig
) -> list[np.ndarray | Reject]:
    """Per item, its vector in fixed point (int64, (d,)) or the Reject of a bad vector (wrong
    width, non-finite, |value| > MAX_ABS_VALUE). A few numpy calls per modality for the whole
    batch; the rows are views of one matrix per modality (`LiveBuffer.apply` copies what it
    keeps).
    """
    if len(items) == 1:  # `update`'s case: no stacking
        why = _check_vector(items[0], config)
        return [why if why is not None else _quantize(items[0].vector)]
    out: list[np.ndarray | Reject] = [None] * len(items)  # type: ignore[list-item]
    by_mod: tuple[list[int], list[int], list[int]] = ([], [], [])
    dims = (config.frame_dim, config.text_dim, config.text_dim)
    for i, item in enumerate(items):
        m = _MOD_INDEX[item.modality]
        vec = item.vector
        if vec.ndim == 1 and vec.shape[0] == dims[m]:
            by_mod[m].append(i)
        else:
            out[i] = _check_vector(item, config)  # type: ignore[assignment]
    for idx in by_mod:
        if not idx:
            continue
        if len(idx) == 1:
            vecs = items[idx[0]].vector.reshape(1, -1)  # (1, d)
        else:
            vecs = np.array([items[i].vector for i in idx])  # (k, d); np.stack is slower
        ok = np.abs(vecs).max(axis=1) <= MAX_ABS_VALUE  # (k,); NaN compares False
        if not ok.all():
            vecs = vecs.astype(np.float32)  # a copy whose bad rows are zeroed
            for j in np.flatnonzero(~ok).tolist():
                out[idx[j]] = _check_vector(items[idx[j]], config)  # type: ignore[assignment]
                vecs[j] = 0.0
            q = _quantize(vecs)  # (k, d)
            for j, i in enumerate(idx):
                if ok[j]:
                    out[i] = q[j]
        else:
            q = _quantize(vecs)  # (k, d)
            for j, i in enumerate(idx):
                out[i] = q[j]
    return out


def _empty_segment(start: int, live_id: str, live_key: tuple[int, str]) -> OpenSegment:
    return OpenSegment(start, live_id, live_key, (None, None, None), (0, 0, 0), IdSet())


class _Open:
    """A segment still open, as mutable accumulators (inside a `LiveBuffer`).

    Sums are copy-on-write: an array taken from an immutable `OpenSegment` (or handed out by a
    snapshot) is replaced, not modified, on the next add.
    """

    __slots__ = ("start", "live_id", "live_key", "sums", "owned", "counts", "ids", "new_ids",
                 "new_set")  # fmt: skip

    def __init__(self, seg: OpenSegment) -> None:
        self.start = seg.start_ms
        self.live_id = seg.live_id
        self.live_key = seg.live_key
        self.sums: list[np.ndarray | None] = list(seg.sums)
        self.owned = [False, False, False]
        self.counts = list(seg.counts)
        self.ids = seg.ids
        self.new_ids: list[str] = []  # added since `ids`, in order
        self.new_set: set[str] = set()

    def add(self, m: int, q: np.ndarray) -> None:
        prev = self.sums[m]
        if prev is None:
            self.sums[m] = q.copy()
            self.owned[m] = True
        elif self.owned[m]:
            np.add(prev, q, out=prev)
        else:
            self.sums[m] = prev + q
            self.owned[m] = True

    def freeze(self) -> OpenSegment:
        """The immutable form; it shares the sums, which become copy-on-write here."""
        if self.new_ids:
            self.ids = self.ids.extend(self.new_ids)
            self.new_ids = []
            self.new_set = set()
        self.owned = [False, False, False]
        s, c = self.sums, self.counts
        return OpenSegment(
            self.start,
            self.live_id,
            self.live_key,
            (s[0], s[1], s[2]),
            (c[0], c[1], c[2]),
            self.ids,
        )


class LiveBuffer:
    """One stream's segment buffer as mutable working state: what an agent keeps in memory.

    `apply` has exactly the semantics of `update` (which is built on it), without rebuilding
    the immutable buffer per item; `snapshot()` gives the equivalent `SegmentBuffer`. Closed
    segments are returned by `apply`, not kept (a store keeps them).

    Example:
        >>> cfg = SegmentConfig(segment_ms=1_000, allowed_lateness_ms=0, frame_dim=2, text_dim=2)
        >>> live = LiveBuffer(SegmentBuffer.empty("a1"))
        >>> t0 = 1_700_000_000_000
        >>> items = [ContentItem("frame", f"e{i}", "a1", "l1", t0 + 600 * i,
        ...                      np.full(2, i, np.float32)) for i in range(3)]
        >>> [live.apply(it, q, cfg)[0] for it, q in zip(items, quantize_vectors(items, cfg))]
        ['applied', 'applied', 'applied']
        >>> live.snapshot().open[0].counts, live.watermark_ms - t0
        ((1, 0, 0), 1200)
    """

    __slots__ = ("author_id", "opens", "first", "watermark_ms", "recent", "applied")

    def __init__(self, buffer: SegmentBuffer) -> None:
        self.author_id = buffer.author_id
        self.opens: dict[int, _Open] = {s.start_ms: _Open(s) for s in buffer.open}
        self.first = min(self.opens) if self.opens else None  # earliest open start
        self.watermark_ms = buffer.watermark_ms
        self.recent = buffer.recent_closed_ids
        self.applied: dict[str, int] = dict(buffer.applied)

    @property
    def open_counts(self) -> list[tuple[int, str, tuple[int, int, int]]]:
        """(start_ms, live_id, counts) of the open segments, by start."""
        return [
            (o.start, o.live_id, (o.counts[0], o.counts[1], o.counts[2]))
            for o in sorted(self.opens.values(), key=lambda o: o.start)
        ]

    def is_open(self) -> bool:
        """True while some segment is open."""
        return bool(self.opens)

    def describe(self, closed: Sequence[SegmentClosed] = ()) -> dict[str, Any]:
        """The buffer as JSON-able data, holding `closed` as its closed segments."""
        return {
            "author_id": self.author_id,
            "closed": [seg.model_dump(mode="json") for seg in closed],
            "open": [
                {"start_ms": s, "live_id": lv, "counts": list(c)} for s, lv, c in self.open_counts
            ],
            "watermark_ms": self.watermark_ms,
            "applied": dict(self.applied),
        }

    def is_replay(self, item: ContentItem) -> bool:
        """Whether `item` was read from a source offset this buffer has applied already (a
        redelivery after a restart or a rebalance: `apply` leaves the buffer as it is)."""
        src, off = item.source, item.offset
        if src is None or off is None:
            return False
        done = self.applied.get(src)
        return done is not None and off <= done

    def apply(
        self, item: ContentItem, q: np.ndarray | Reject, config: SegmentConfig
    ) -> tuple[Outcome, list[SegmentClosed]]:
        """Apply one item (`q`: its `quantize_vectors` entry). Returns its outcome ("applied",
        "replayed" or the Reject) and the segments it closed, oldest first."""
        if item.author_id != self.author_id:
            raise ValueError(
                f"item of author {item.author_id!r} given to {self.author_id!r}'s buffer"
            )
        src, off = item.source, item.offset
        if src is not None and off is not None:
            done = self.applied.get(src)
            if done is not None and off <= done:
                return "replayed", []
        if isinstance(q, Reject):
            return q, []
        eid, ts = item.event_id, item.ts_ms
        opens = self.opens
        dup = eid in self.recent
        if not dup:
            for o in opens.values():
                if eid in o.new_set or eid in o.ids:
                    dup = True
                    break
        if dup:
            return Reject(eid, "duplicate", "event_id already applied"), []
        seg_ms, lateness, wm = config.segment_ms, config.allowed_lateness_ms, self.watermark_ms
        if wm is not None and ts < ((wm - lateness) // seg_ms) * seg_ms:
            return (
                Reject(
                    eid,
                    "late",
                    f"ts_ms {ts} falls in segment {(ts // seg_ms) * seg_ms}, closed at watermark "
                    f"{wm} (allowed lateness {lateness} ms)",
                ),
                [],
            )
        start = (ts // seg_ms) * seg_ms
        m = _MOD_INDEX[item.modality]
        key = (ts, eid)
        got = opens.get(start)
        if got is None:
            o = opens[start] = _Open(_empty_segment(start, item.live_id, key))
            if self.first is None or start < self.first:
                self.first = start
        elif got.counts[m] >= MAX_ITEMS_PER_SEGMENT:
            return (
                Reject(
                    eid,
                    "oversized",
                    f"segment {start} already holds {MAX_ITEMS_PER_SEGMENT} {item.modality} items",
                ),
                [],
            )
        else:
            o = got
            if key > o.live_key:
                o.live_id, o.live_key = item.live_id, key
        o.add(m, q)
        o.counts[m] += 1
        o.new_ids.append(eid)
        o.new_set.add(eid)
        if src is not None and off is not None:
            self.applied[src] = off
        if wm is None or ts > wm:
            self.watermark_ms = wm = ts
        horizon = ((wm - lateness) // seg_ms) * seg_ms
        if self.first < horizon:  # type: ignore[operator]
            return "applied", self._close_before(horizon, config)
        return "applied", []

    def _close_before(self, horizon: int, config: SegmentConfig) -> list[SegmentClosed]:
        opens = self.opens
        segs = [opens.pop(st).freeze() for st in sorted(st for st in opens if st < horizon)]
        self.recent = IdSet(tuple(c for seg in segs for c in seg.ids.chunks))
        self.first = min(opens) if opens else None
        return [_close(seg, self.author_id, config) for seg in segs]

    def snapshot(self, closed: tuple[SegmentClosed, ...] = ()) -> SegmentBuffer:
        """The immutable buffer equal to this state, holding `closed` as its closed segments."""
        return SegmentBuffer(
            self.author_id,
            closed,
            tuple(self.opens[st].freeze() for st in sorted(self.opens)),
            self.watermark_ms,
            self.recent,
            dict(self.applied),
        )


def _mean(total: np.ndarray | None, count: int) -> str | None:
    if total is None or count == 0:
        return None
    mean = total.astype(np.float64) / (count * FIXED_POINT_SCALE)  # (d,)
    return encode_embedding(mean.astype(np.float32))


def _close(seg: OpenSegment, author_id: str, config: SegmentConfig) -> SegmentClosed:
    return SegmentClosed.model_validate(
        {
            "author_id": author_id,
            "live_id": seg.live_id,
            "start_ms": seg.start_ms,
            "end_ms": seg.start_ms + config.segment_ms,
            "n_frames": seg.counts[0],
            "n_comments": seg.counts[1],
            "n_asr": seg.counts[2],
            "frame_mean": _mean(seg.sums[0], seg.counts[0]),
            "comment_mean": _mean(seg.sums[1], seg.counts[1]),
            "asr_mean": _mean(seg.sums[2], seg.counts[2]),
        },
        context=config.validation_context(),
    )


def append_closed(
    closed: Sequence[SegmentClosed], new: Iterable[SegmentClosed], config: SegmentConfig
) -> tuple[SegmentClosed, ...]:
    """`closed` followed by `new`, keeping the last L segments of the newest live.

    A segment of a different live than the newest kept one starts a fresh buffer: the buffer
    describes the live that is on now, not the streamer's previous broadcast.
    """
    out = list(closed)
    for seg in new:
        if out and out[-1].live_id != seg.live_id:
            out = []
        out.append(seg)
    return tuple(out[-config.segments_kept :])


def append_refs(
    refs: Sequence[ClosedRef], new: Iterable[SegmentClosed], config: SegmentConfig
) -> tuple[tuple[ClosedRef, ...], list[ClosedRef]]:
    """`append_closed` on references (start_ms, live_id): the kept refs and the evicted ones.

    A store that keeps each closed segment under its own key uses this to know which keys the
    buffer holds and which to delete.
    """
    out = list(refs)
    evicted: list[ClosedRef] = []
    for seg in new:
        if out and out[-1][1] != seg.live_id:
            evicted.extend(out)
            out = []
        out.append((seg.start_ms, seg.live_id))
    cut = max(len(out) - config.segments_kept, 0)
    evicted.extend(out[:cut])
    return tuple(out[cut:]), evicted


def update(
    buffer: SegmentBuffer, item: ContentItem, config: SegmentConfig
) -> tuple[SegmentBuffer, list[SegmentClosed], list[Reject]]:
    """Apply one content item to its stream's buffer.

    Returns `(buffer, closed, rejects)`: the new buffer (the input is not modified), the segments
    this item's event time closed (oldest first), and the rejection of the item if it was
    refused: "duplicate" (its event id is already in an open or just-closed segment), "late"
    (its segment has closed), "validation_error" (wrong width, non-finite or huge values) or
    "oversized" (the segment already holds MAX_ITEMS_PER_SEGMENT items of that modality).
    A replayed item (read from a source offset the buffer has applied already) changes nothing
    and is neither applied nor rejected; a buffer nothing was applied to is returned itself.
    (`LiveBuffer` is the same logic as mutable state, which the segment agent uses.)
    """
    live = LiveBuffer(buffer)
    (q,) = quantize_vectors((item,), config)
    outcome, closed = live.apply(item, q, config)
    if outcome != "applied":
        return buffer, [], [] if isinstance(outcome, str) else [outcome]
    kept = append_closed(buffer.closed, closed, config) if closed else buffer.closed
    return live.snapshot(kept), closed, []


def close_all(
    buffer: SegmentBuffer, config: SegmentConfig
) -> tuple[SegmentBuffer, list[SegmentClosed]]:
    """Close every open segment now (end of a log; the watermark is not moved)."""
    if not buffer.open:
        return buffer, []
    closed_now = [_close(s, buffer.author_id, config) for s in buffer.open]
    recent = IdSet(tuple(c for s in buffer.open for c in s.ids.chunks))
    return (
        buffer._replace(
            closed=append_closed(buffer.closed, closed_now, config),
            open=(),
            recent_closed_ids=recent,
        ),
        closed_now,
    )


# --- serialisation (what the streams tables store) ------------------------------------------
#
# The *head* of a buffer is everything but the closed segments' features: open accumulators,
# watermark, applied offsets, recent ids, and references (start_ms, live_id) to the closed
# segments it holds. It is small and rewritten whenever the buffer is stored; each closed
# segment is stored once, under its own key, as `SegmentClosed` JSON.


def _sum_to_wire(arr: np.ndarray | None) -> str | None:
    if arr is None:
        return None
    return base64.b64encode(np.ascontiguousarray(arr, dtype="<i8").tobytes()).decode("ascii")


def _sum_from_wire(text: str | None) -> np.ndarray | None:
    if text is None:
        return None
    return np.frombuffer(base64.b64decode(text), dtype="<i8").astype(np.int64)


def encode_head(buffer: SegmentBuffer, refs: Sequence[ClosedRef] | None = None) -> bytes:
    """The buffer's head as JSON bytes; `refs` default to those of `buffer.closed`."""
    if refs is None:
        refs = [(s.start_ms, s.live_id) for s in buffer.closed]
    head = {
        "author_id": buffer.author_id,
        "watermark_ms": buffer.watermark_ms,
        "applied": dict(sorted(buffer.applied.items())),
        "recent_closed_ids": buffer.recent_closed_ids.to_list(),
        "closed": [[start, live] for start, live in refs],
        "open": [
            {
                "start_ms": s.start_ms,
                "live_id": s.live_id,
                "live_key": list(s.live_key),
                "counts": list(s.counts),
                "ids": s.ids.to_list(),
                "sums": [_sum_to_wire(x) for x in s.sums],
            }
            for s in buffer.open
        ],
    }
    return json.dumps(head, separators=(",", ":")).encode()


def decode_head(data: bytes) -> tuple[SegmentBuffer, tuple[ClosedRef, ...]]:
    """(buffer without closed segments, refs to its closed segments) from `encode_head` bytes."""
    head = json.loads(data)
    opened = []
    for s in head["open"]:
        sums = tuple(_sum_from_wire(x) for x in s["sums"])
        opened.append(
            OpenSegment(
                int(s["start_ms"]),
                str(s["live_id"]),
                (int(s["live_key"][0]), str(s["live_key"][1])),
                (sums[0], sums[1], sums[2]),
                (int(s["counts"][0]), int(s["counts"][1]), int(s["counts"][2])),
                IdSet.of(s["ids"]),
            )
        )
    buffer = SegmentBuffer(
        author_id=str(head["author_id"]),
        closed=(),
        open=tuple(opened),
        watermark_ms=head["watermark_ms"],
        recent_closed_ids=IdSet.of(head["recent_closed_ids"]),
        applied={str(k): int(v) for k, v in head["applied"].items()},
    )
    return buffer, tuple((int(start), str(live)) for start, live in head["closed"])


def segment_key(author_id: str, start_ms: int) -> str:
    """Key of one closed segment in a segment store: '<author_id>|<start_ms>'."""
    return f"{author_id}|{start_ms}"


def store_buffer(
    heads: MutableMapping[bytes, bytes],
    rows: MutableMapping[bytes, bytes],
    buffer: SegmentBuffer,
    refs: Sequence[ClosedRef],
    new: Sequence[SegmentClosed],
    config: SegmentConfig,
) -> tuple[tuple[ClosedRef, ...], list[bytes]]:
    """Store a buffer that closed `new` (oldest first) where `heads` holds each stream's head
    (`HeadCodec`) under its author and `rows` each closed segment under `segment_key`.

    First the new segments' rows (`SegmentClosed` JSON: the bytes a producer puts on a topic),
    then the head, which refers to them, then the rows the buffer no longer holds are deleted
    (`append_refs`): a crash between the steps replays into the same rows. Returns the new refs
    and the new rows.

    Example:
        >>> heads, rows = {}, {}
        >>> store_buffer(heads, rows, SegmentBuffer.empty("a1"), (), [], SegmentConfig())
        ((), [])
        >>> HeadCodec().loads(heads[b"a1"])[0].author_id
        'a1'
    """
    out = [seg.model_dump_json().encode() for seg in new]
    evicted: list[ClosedRef] = []
    if new:
        for seg, row in zip(new, out, strict=True):
            rows[segment_key(buffer.author_id, seg.start_ms).encode()] = row
        refs, evicted = append_refs(refs, new, config)
    heads[buffer.author_id.encode()] = encode_head(buffer, refs)
    for start, _ in evicted:
        # gone already only if a crash between these steps made us replay them
        with contextlib.suppress(KeyError):
            del rows[segment_key(buffer.author_id, start).encode()]
    return tuple(refs), out


def load_buffer(
    heads: Mapping[bytes, bytes], author_id: str
) -> tuple[SegmentBuffer, tuple[ClosedRef, ...]]:
    """A stream's stored head (`store_buffer`): its buffer without closed segments and the refs
    to them; an empty buffer when it has none."""
    raw = heads.get(author_id.encode())
    return decode_head(raw) if raw else (SegmentBuffer.empty(author_id), ())


def load_closed(
    rows: Mapping[bytes, bytes], author_id: str, refs: Sequence[ClosedRef], config: SegmentConfig
) -> list[SegmentClosed]:
    """The stored closed segments (`store_buffer`) that `refs` name, those still there."""
    ctx = config.validation_context()
    found = (rows.get(segment_key(author_id, start).encode()) for start, _ in refs)
    return [SegmentClosed.model_validate_json(row, context=ctx) for row in found if row is not None]


class HeadCodec:
    """A stream's head as a table row (`encode_head`, the rows `store_buffer` writes and
    `load_buffer` reads): the buffer without its closed segments, and refs to them. A
    `StateCodec` (`mmbee.streams.runtime.component`) of `(buffer, refs)`."""

    def dumps(self, state: tuple[SegmentBuffer, Sequence[ClosedRef]]) -> bytes:
        return encode_head(*state)

    def loads(self, raw: bytes) -> tuple[SegmentBuffer, tuple[ClosedRef, ...]]:
        return decode_head(raw)
