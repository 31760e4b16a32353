"""Rolling per-stream segment buffers: pure event-time windowing of content embeddings (numpy only).

A live stream's content (frame embeddings, comment and ASR text embeddings) falls into fixed
event-time segments `[k * segment_ms, (k + 1) * segment_ms)`. A segment closes when the stream's
watermark (the largest accepted event time) passes its end plus the allowed lateness; closing
pools each modality to a mean vector and yields a `SegmentClosed`. The buffer keeps the last
`segments_kept` (MMBee's L) closed segments of the current live, oldest -> newest.

Everything here is deterministic and side-effect free: the streams agents (`mmbee.streams.
content`) and the scorer's offline feature pipeline call the same functions, so a replayed log
gives the same segments as the live run.

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
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from mmbee.schemas.events import AsrSegment, CommentEvent, FrameEvent, SegmentClosed
from mmbee.schemas.types import encode_embedding

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
    "segment_start",
    "closed_until",
    "is_replay",
    "update",
    "advance",
    "close_all",
    "append_closed",
    "fold",
    "append_refs",
    "ClosedRef",
    "segment_key",
    "encode_state",
    "decode_state",
    "encode_head",
    "decode_head",
]

Modality = Literal["frame", "comment", "asr"]
MODALITIES: tuple[Modality, ...] = ("frame", "comment", "asr")
"""Order of the per-modality accumulators (frames, comments, ASR)."""
_MOD_INDEX: dict[str, int] = {m: i for i, m in enumerate(MODALITIES)}

RejectReason = Literal["late", "duplicate", "validation_error", "oversized"]
ClosedRef = tuple[int, str]
"""A closed segment referred to by (start_ms, live_id)."""
"""Why an item was not applied (a subset of `DeadLetterReason`)."""

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
    buffer's applied offset for that source are recognised as replays (`is_replay`).

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
            vector = np.frombuffer(binascii.a2b_base64(wire), dtype="<f4")  # validated wire form
        return cls(
            modality,
            event.event_id,
            event.author_id,
            event.live_id,
            ts,
            np.asarray(vector, dtype=np.float32).reshape(-1),
            source,
            offset,
        )


class Reject(NamedTuple):
    """An item the buffer refused, with the reason (it goes to the dead-letter topic)."""

    event_id: str
    reason: RejectReason
    detail: str


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

    def __contains__(self, event_id: object) -> bool:
        return any(event_id in c for c in self.chunks)

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

    def n_open_items(self) -> int:
        """Items held in open segments."""
        return sum(sum(s.counts) for s in self.open)


def segment_start(ts_ms: int, config: SegmentConfig) -> int:
    """Start of the segment holding `ts_ms`: the largest multiple of segment_ms <= ts_ms."""
    return (ts_ms // config.segment_ms) * config.segment_ms


def closed_until(watermark_ms: int | None, config: SegmentConfig) -> int | None:
    """Segments starting before this time are closed at `watermark_ms` (None: nothing closed).

    Segment [s, s + S) closes once the watermark reaches s + S + allowed_lateness, so the closed
    horizon is the segment boundary at or below `watermark_ms - allowed_lateness_ms`.
    """
    if watermark_ms is None:
        return None
    return segment_start(watermark_ms - config.allowed_lateness_ms, config)


def is_replay(buffer: SegmentBuffer, item: ContentItem) -> bool:
    """True if `item` was read from a source offset this buffer has already applied."""
    if item.source is None or item.offset is None:
        return False
    done = buffer.applied.get(item.source)
    return done is not None and item.offset <= done


def _check_vector(item: ContentItem, config: SegmentConfig) -> Reject | None:
    vec = item.vector
    want = config.frame_dim if item.modality == "frame" else config.text_dim
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


def _quantize(vec: np.ndarray) -> np.ndarray:
    # x * 2**24 is exact in float32 (a power-of-two scale, |x| <= 2**20), so rounding it there
    # equals rounding the exact product.
    return np.rint(vec.astype(np.float32, copy=False) * _SCALE32).astype(np.int64)  # (d,)


def _add_to_segment(seg: OpenSegment | None, start: int, item: ContentItem) -> OpenSegment:
    m = _MOD_INDEX[item.modality]
    q = _quantize(item.vector)
    key = (item.ts_ms, item.event_id)
    if seg is None:
        sums: list[np.ndarray | None] = [None, None, None]
        counts = [0, 0, 0]
        sums[m], counts[m] = q, 1
        return OpenSegment(
            start,
            item.live_id,
            key,
            (sums[0], sums[1], sums[2]),
            (counts[0], counts[1], counts[2]),
            IdSet((frozenset((item.event_id,)),)),
        )
    sums = list(seg.sums)
    counts = list(seg.counts)
    prev = sums[m]
    sums[m] = q if prev is None else prev + q
    counts[m] += 1
    live_id, live_key = (item.live_id, key) if key > seg.live_key else (seg.live_id, seg.live_key)
    return OpenSegment(
        start,
        live_id,
        live_key,
        (sums[0], sums[1], sums[2]),
        (counts[0], counts[1], counts[2]),
        seg.ids.add(item.event_id),
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


def _close_due(
    buffer: SegmentBuffer, wm: int | None, horizon: int, config: SegmentConfig
) -> tuple[SegmentBuffer, list[SegmentClosed]]:
    due = [s for s in buffer.open if s.start_ms < horizon]
    keep = tuple(s for s in buffer.open if s.start_ms >= horizon)
    closed_now = [_close(s, buffer.author_id, config) for s in due]
    recent = IdSet(tuple(c for s in due for c in s.ids.chunks))
    return (
        SegmentBuffer(
            buffer.author_id,
            append_closed(buffer.closed, closed_now, config),
            keep,
            wm,
            recent,
            buffer.applied,
        ),
        closed_now,
    )


def advance(
    buffer: SegmentBuffer, watermark_ms: int, config: SegmentConfig
) -> tuple[SegmentBuffer, list[SegmentClosed]]:
    """Move the buffer's watermark to `watermark_ms` (never backwards) and close what is due.

    Returns the new buffer and the segments closed by this step, oldest first.
    """
    wm = watermark_ms if buffer.watermark_ms is None else max(buffer.watermark_ms, watermark_ms)
    horizon = segment_start(wm - config.allowed_lateness_ms, config)
    if buffer.open and buffer.open[0].start_ms < horizon:
        return _close_due(buffer, wm, horizon, config)
    if wm == buffer.watermark_ms:
        return buffer, []
    return buffer._replace(watermark_ms=wm), []


def update(
    buffer: SegmentBuffer, item: ContentItem, config: SegmentConfig
) -> tuple[SegmentBuffer, list[SegmentClosed], list[Reject]]:
    """Apply one content item to its stream's buffer.

    Returns `(buffer, closed, rejects)`: the new buffer (the input is not modified), the segments
    this item's event time closed (oldest first), and the rejection of the item if it was
    refused: "duplicate" (its event id is already in an open or just-closed segment), "late"
    (its segment has closed), "validation_error" (wrong width, non-finite or huge values) or
    "oversized" (the segment already holds MAX_ITEMS_PER_SEGMENT items of that modality).
    A replayed item (`is_replay`) changes nothing and is neither applied nor rejected.
    """
    if item.author_id != buffer.author_id:
        raise ValueError(
            f"item of author {item.author_id!r} given to {buffer.author_id!r}'s buffer"
        )
    applied = buffer.applied
    src, off = item.source, item.offset
    if src is not None and off is not None:
        done = applied.get(src)
        if done is not None and off <= done:
            return buffer, [], []
    bad = _check_vector(item, config)
    if bad is not None:
        return buffer, [], [bad]
    eid = item.event_id
    if eid in buffer.recent_closed_ids or any(eid in s.ids for s in buffer.open):
        return buffer, [], [Reject(eid, "duplicate", "event_id already applied")]
    seg_ms, lateness, ts = config.segment_ms, config.allowed_lateness_ms, item.ts_ms
    wm = buffer.watermark_ms
    if wm is not None and ts < ((wm - lateness) // seg_ms) * seg_ms:
        return (
            buffer,
            [],
            [
                Reject(
                    eid,
                    "late",
                    f"ts_ms {ts} falls in segment {(ts // seg_ms) * seg_ms}, closed at watermark "
                    f"{wm} (allowed lateness {lateness} ms)",
                )
            ],
        )
    start = (ts // seg_ms) * seg_ms
    opened = list(buffer.open)
    for idx, seg in enumerate(opened):
        if seg.start_ms == start:
            if seg.counts[_MOD_INDEX[item.modality]] >= MAX_ITEMS_PER_SEGMENT:
                return (
                    buffer,
                    [],
                    [
                        Reject(
                            eid,
                            "oversized",
                            f"segment {start} already holds {MAX_ITEMS_PER_SEGMENT} "
                            f"{item.modality} items",
                        )
                    ],
                )
            opened[idx] = _add_to_segment(seg, start, item)
            break
    else:
        opened.append(_add_to_segment(None, start, item))
        opened.sort(key=lambda s: s.start_ms)
    if src is not None and off is not None:
        applied = {**applied, src: off}
    new_wm = ts if wm is None or ts > wm else wm
    new = SegmentBuffer(
        buffer.author_id, buffer.closed, tuple(opened), new_wm, buffer.recent_closed_ids, applied
    )
    horizon = ((new_wm - lateness) // seg_ms) * seg_ms
    if opened[0].start_ms < horizon:
        new, closed_now = _close_due(new, new_wm, horizon, config)
        return new, closed_now, []
    return new, [], []


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


def fold(
    items: Iterable[ContentItem],
    config: SegmentConfig,
    buffers: Mapping[str, SegmentBuffer] | None = None,
) -> tuple[dict[str, SegmentBuffer], list[SegmentClosed], list[Reject]]:
    """Apply `items` in order to per-author buffers (offline pipelines, reference runs in tests).

    Returns the buffers by author, every segment closed (in closing order) and every reject.
    """
    out = dict(buffers or {})
    closed: list[SegmentClosed] = []
    rejects: list[Reject] = []
    for item in items:
        buf = out.get(item.author_id) or SegmentBuffer.empty(item.author_id)
        buf, c, r = update(buf, item, config)
        out[item.author_id] = buf
        closed.extend(c)
        rejects.extend(r)
    return out, closed, rejects


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


def encode_state(buffer: SegmentBuffer) -> bytes:
    """The whole buffer as bytes: its head, then one `SegmentClosed` JSON per line."""
    lines = [encode_head(buffer)] + [s.model_dump_json().encode() for s in buffer.closed]
    return b"\n".join(lines)


def decode_state(data: bytes, config: SegmentConfig) -> SegmentBuffer:
    """A buffer from `encode_state` bytes (closed segments validated with the config's widths)."""
    head, *rest = data.split(b"\n")
    buffer, refs = decode_head(head)
    ctx = config.validation_context()
    closed = tuple(SegmentClosed.model_validate_json(line, context=ctx) for line in rest)
    if [(s.start_ms, s.live_id) for s in closed] != list(refs):
        raise ValueError("segment state: closed segments do not match the head's references")
    return buffer._replace(closed=closed)
