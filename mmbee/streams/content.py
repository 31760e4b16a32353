"""Content agents: frames, comments and ASR text -> rolling segment buffers; audio -> ASR text.

Two components (see `mmbee.streams.app.COMPONENTS`):

- `segments`: one agent over `live.frames`, `live.comments` and `live.asr` (all keyed by author,
  co-partitioned). It decodes raw bytes with the codec, embeds content that arrives without an
  embedding (text and JPEG featurizers, batched, on the executor), and applies each item with
  the pure `mmbee.encoders.segments.update`. Closed segments go to `content.segments`.
- `asr`: `live.audio` AudioChunks -> Whisper (batched, on the executor) -> `live.asr`.

Event time across topics: Faust interleaves the three topics by count, not by time, so the
agent first aligns them per partition (`mmbee.streams.align`): an item is applied once every
topic has passed its event time, except topics the consumer has read to their high watermark
(nothing more to come now); `segment_align_wait_ms` is a safety valve.

State and offsets (docs/streams.md has the full argument): the open segments of each stream are
kept in memory; the changelogged tables are written when a segment closes, not per event:
`segments` gets the closed segment, `segment_buffers` the stream's small head (open
accumulators, applied offsets, refs to its closed segments). An event is acked only once a table
write covers it, so Faust's commit (the highest *contiguous* acked offset) never passes an event
whose effect is not stored. A stream that has held unstored events for
`segment_checkpoint_events` events is written anyway (a checkpoint), which bounds replay and
memory. After a crash the stored applied offsets make the replay idempotent.

Example:
    >>> from mmbee.settings import Settings
    >>> segment_config(Settings(segment_ms=5_000)).segment_ms
    5000
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import faust
import numpy as np
from faust.types import TP, EventT, StreamT, TableT

from mmbee.encoders.segments import (
    ClosedRef,
    ContentItem,
    LiveBuffer,
    Reject,
    SegmentBuffer,
    SegmentConfig,
    append_refs,
    decode_head,
    encode_head,
    quantize_vectors,
    segment_key,
)
from mmbee.schemas.events import (
    AsrSegment,
    AudioChunk,
    CommentEvent,
    DeadLetterReason,
    FrameEvent,
    SegmentClosed,
)
from mmbee.schemas.types import MAX_EVENT_ID_LEN, MAX_TEXT_CHARS
from mmbee.settings import Settings
from mmbee.streams.acks import AckSequencer
from mmbee.streams.align import Aligner
from mmbee.streams.codec import Rejected
from mmbee.streams.runtime.compat import pause_fetching
from mmbee.streams.runtime.context import (
    Sample,
    StreamContext,
    clear_event_context,
    in_event_context,
)
from mmbee.streams.runtime.progress import caught_up

if TYPE_CHECKING:
    from mmbee.encoders.featurizers import FrameEmbedder, SpeechRecognizer, TextEmbedder, Transcript

__all__ = [
    "SOURCES",
    "AGENT_SEGMENTS",
    "AGENT_ASR",
    "TABLE",
    "SEGMENTS_TABLE",
    "segment_config",
    "Featurizers",
    "SegmentRuntime",
    "AsrRuntime",
    "asr_segment",
    "register_segments",
    "register_asr",
]

log = logging.getLogger("mmbee.streams.content")

SOURCES = ("live.frames", "live.comments", "live.asr")
"""Catalogue topics the segment agent reads (all keyed by author_id)."""
AGENT_SEGMENTS = "segments"
AGENT_ASR = "asr"
TABLE = "segment_buffers"
"""Changelogged table: author_id -> the buffer's head (`mmbee.encoders.segments.encode_head`:
open accumulators, watermark, applied offsets, refs to its closed segments)."""
SEGMENTS_TABLE = "segments"
"""Changelogged table: '<author_id>|<start_ms>' -> SegmentClosed JSON, for the segments a buffer
holds (deleted when they leave it; every closed segment is also on `content.segments`)."""


def segment_config(settings: Settings) -> SegmentConfig:
    """The segment buffer's config under these settings."""
    return SegmentConfig(
        segment_ms=settings.segment_ms,
        segments_kept=settings.segments_kept,
        allowed_lateness_ms=settings.allowed_lateness_ms,
        frame_dim=settings.frame_dim,
        text_dim=settings.text_dim,
    )


_Bad = tuple[EventT, DeadLetterReason, str, "str | None"]
"""A rejected event: (event, dead-letter reason, detail, its event_id if known)."""


class _EmptySpeech:
    """Marker: an ASR segment without speech (empty text); counted, not buffered."""


_EMPTY_SPEECH = _EmptySpeech()


class Featurizers:
    """The text and frame featurizers of one worker, built on first use. Call from the executor.

    Example:
        >>> f = Featurizers(text_model=None, frame_model="efficientnet-lite0", text_dim=384,
        ...                 frame_dim=1280)
        >>> f.embed([], [])
        (None, [])
    """

    def __init__(
        self,
        *,
        text_model: str | None,
        frame_model: str,
        text_dim: int,
        frame_dim: int,
        text_cache_size: int = 0,
    ) -> None:
        self._text_model = text_model
        self._text_cache_size = text_cache_size
        self._frame_model = frame_model
        self._text_dim = text_dim
        self._frame_dim = frame_dim
        self._text: TextEmbedder | None = None
        self._frames: FrameEmbedder | None = None

    def text(self) -> TextEmbedder:
        """The text embedder (loaded now if needed); its width must match `text_dim`."""
        if self._text is None:
            from mmbee.encoders.featurizers import TextEmbedder

            emb = TextEmbedder(model_path=self._text_model, cache_size=self._text_cache_size)
            if emb.dim != self._text_dim:
                raise ValueError(
                    f"text model gives {emb.dim}-d embeddings but MMBEE_TEXT_DIM={self._text_dim}"
                )
            self._text = emb
        return self._text

    @property
    def text_cache_hits(self) -> int:
        """Texts embedded from the text cache so far (0 before the text model is loaded)."""
        return 0 if self._text is None else self._text.hits

    def frames(self) -> FrameEmbedder:
        """The frame embedder (loaded now if needed); its width must match `frame_dim`."""
        if self._frames is None:
            from mmbee.encoders.featurizers import FrameEmbedder

            emb = FrameEmbedder(name=self._frame_model)
            if emb.dim != self._frame_dim:
                raise ValueError(
                    f"frame model gives {emb.dim}-d features but MMBEE_FRAME_DIM={self._frame_dim}"
                )
            self._frames = emb
        return self._frames

    def embed(
        self, texts: Sequence[str], jpegs: Sequence[bytes]
    ) -> tuple[np.ndarray | None, list[np.ndarray | str]]:
        """Embed a batch.

        Shapes:
            texts: N strings -> (N, d_t) float32 (None when N == 0).
            jpegs: M images -> M entries, each a (d_v,) float32 vector or, for an image that
                does not decode, the reason as a string.
        """
        text_vecs = self.text().encode(list(texts)) if texts else None
        frame_out: list[np.ndarray | str] = []
        if jpegs:
            from mmbee.encoders.featurizers import FrameDecodeError, decode_jpeg

            images, ok = [], []
            frame_out = [""] * len(jpegs)
            for i, data in enumerate(jpegs):
                try:
                    images.append(decode_jpeg(data, i))
                    ok.append(i)
                except FrameDecodeError as exc:
                    frame_out[i] = exc.reason
            if images:
                vecs = self.frames().encode_images(images)  # (len(ok), d_v)
                for row, i in enumerate(ok):
                    frame_out[i] = vecs[row]
        return text_vecs, frame_out


@dataclass
class _Entry:
    """In-memory working state of one stream on this worker (its closed segments stay in the
    table, referred to by `refs`). `pending`: applied events not yet covered by a table write
    (not acked); `persisted`: the applied offsets the stored head holds."""

    live: LiveBuffer
    partition: int
    persisted: Mapping[str, int]
    refs: tuple[ClosedRef, ...] = ()
    pending: list[EventT] = field(default_factory=list)
    first_seq: int = 0

    @property
    def buffer(self) -> SegmentBuffer:
        """The stream's buffer as an immutable `SegmentBuffer` (closed segments left out: see
        `refs`); built on each access, so prefer `live` (e.g. `len(live.opens)`)."""
        return self.live.snapshot()


class SegmentRuntime:
    """The segment agent's working set on one worker: per-stream open state, unacked events.

    Args:
        ctx: the stream context (codec, DLQ, metrics, publisher, executor).
        table: the `segment_buffers` table (heads).
        segments: the `segments` table (closed segments by '<author>|<start_ms>').
        config: segment geometry and widths.
        checkpoint_events: persist a stream whose oldest unpersisted event is this many events
            old (and keep at most about this many events unacked).
    """

    def __init__(
        self,
        ctx: StreamContext,
        table: TableT,
        segments: TableT,
        config: SegmentConfig,
        checkpoint_events: int,
        featurizers: Featurizers | None = None,
    ) -> None:
        self.ctx = ctx
        self.table = table
        self.segments = segments
        self.config = config
        self.checkpoint_events = checkpoint_events
        self.featurizers = featurizers or Featurizers(
            text_model=ctx.settings.text_model,
            frame_model=ctx.settings.frame_model,
            text_dim=config.text_dim,
            frame_dim=config.frame_dim,
            text_cache_size=ctx.settings.text_cache_size,
        )
        self.entries: dict[str, _Entry] = {}
        self.dirty: dict[str, None] = {}  # authors with pending events, oldest first
        self.seq = 0
        self.pending = 0
        self.align_wait_s = ctx.settings.segment_align_wait_ms / 1000
        self.aligners: dict[int, Aligner] = {}  # partition -> held (decoded, not yet applied)
        self.stream: StreamT | None = None
        self.pause_at = 2 * ctx.settings.stream_batch_max  # held items of one source
        self._paused: set[TP] = set()
        self._acks = AckSequencer()  # acks leave in arrival order per topic partition
        self._last_batch_s = float("-inf")
        self._lock = asyncio.Lock()
        self._sources = {ctx.topic_name(n): n for n in SOURCES}
        self._source_index = {n: i for i, n in enumerate(SOURCES)}
        self._tp_cache: dict[int, tuple[TP, ...]] = {}

    @property
    def held(self) -> int:
        """Events waiting for event-time alignment (decoded, not applied, not acked)."""
        return sum(len(a) for a in self.aligners.values())

    # --- rebalance ------------------------------------------------------------------------
    def on_revoked(self, revoked: set[TP]) -> None:
        """Forget the working state of revoked partitions: their unacked events will be
        redelivered (to this worker or another) and re-applied onto the stored state."""
        parts = {tp.partition for tp in revoked if tp.topic in self._sources}
        if not parts:
            return
        for author in [a for a, e in self.entries.items() if e.partition in parts]:
            entry = self.entries.pop(author)
            self.pending -= len(entry.pending)
            self.dirty.pop(author, None)
        for p in parts:
            self.aligners.pop(p, None)
        self._paused = {tp for tp in self._paused if tp.partition not in parts}
        self._acks.forget({tp for tp in revoked if tp.topic in self._sources})
        self.ctx.metrics.count(AGENT_SEGMENTS, "revocations")

    # --- one batch ------------------------------------------------------------------------
    async def process(self, stream: StreamT, events: Sequence[EventT]) -> None:
        """Decode and featurize one batch, hold it for alignment, apply what is aligned.

        The loops over events never await (a rebalance cannot change the working state under
        them); dead letters and acks of rejected events are sent after each loop."""
        self.stream = stream
        metrics = self.ctx.metrics
        metrics.observe(AGENT_SEGMENTS, len(events))
        async with self._lock:
            generation = self.ctx.app.consumer_generation_id
            decode = self.ctx.codec.decode_topic
            sources = self._sources
            track = self._acks.track
            bad: list[_Bad] = []
            work: list[tuple[EventT, str, FrameEvent | CommentEvent | AsrSegment]] = []
            unembedded = False  # some event needs the featurizers
            for ev in events:
                msg = ev.message
                gen = msg.generation_id
                if gen is not None and gen != generation:
                    continue  # fetched before the latest rebalance: it will be redelivered
                track(msg.tp, ev)
                name = sources.get(msg.topic)
                if name is None:  # pragma: no cover - the agent subscribes to SOURCES only
                    raise RuntimeError(f"segment agent got a message from {msg.topic}")
                decoded = decode(name, ev.value)
                if type(decoded) is Rejected:
                    bad.append((ev, decoded.reason, decoded.detail, decoded.event_id))
                    continue
                assert isinstance(decoded, FrameEvent | CommentEvent | AsrSegment)
                if ev.key != decoded.author_id.encode():
                    bad.append(
                        (
                            ev,
                            "validation_error",
                            f"message key {ev.key!r} is not the event's author_id "
                            f"{decoded.author_id!r} (content topics are keyed by author)",
                            decoded.event_id,
                        )
                    )
                    continue
                if not unembedded:
                    unembedded = (
                        decoded.embedding is None
                        if type(decoded) is FrameEvent
                        else decoded.text_embedding is None  # type: ignore[union-attr]
                    )
                work.append((ev, name, decoded))
            vectors: Sequence[np.ndarray | str | _EmptySpeech | None]
            if unembedded:
                vectors = await self._featurize(work)
                if self.ctx.app.consumer_generation_id != generation:
                    metrics.count(AGENT_SEGMENTS, "batches_dropped_on_rebalance")
                    return  # partitions moved while we waited: the events will be redelivered
            else:
                vectors = [None] * len(work)  # every event carries its embedding
            now = self.ctx.monotonic()
            aligners = self.aligners
            source_index = self._source_index
            from_event = ContentItem.from_event
            finished: list[EventT] = []  # done without effect on the buffers
            for (ev, name, model), vec in zip(work, vectors, strict=True):
                if vec is None or type(vec) is np.ndarray:
                    msg = ev.message
                    item = from_event(model, vec, source=name, offset=msg.offset)
                    aligner = aligners.get(msg.partition)
                    if aligner is None:
                        aligner = aligners[msg.partition] = Aligner(self.align_wait_s, len(SOURCES))
                    aligner.push(
                        ts=item.ts_ms,
                        source=source_index[name],
                        offset=msg.offset,
                        item=(ev, item),
                        now_s=now,
                    )
                elif vec is _EMPTY_SPEECH:
                    metrics.count(AGENT_SEGMENTS, "asr_empty")
                    finished.append(ev)
                else:
                    assert isinstance(vec, str)
                    bad.append((ev, "decode_error", vec, model.event_id))
            if bad or finished:
                await self._finish(stream, bad, finished)
                if self.ctx.app.consumer_generation_id != generation:
                    return  # revoked meanwhile: the working state was forgotten
            await self._release(stream, now, valve=self.align_wait_s == 0)  # 0: no alignment
            self._last_batch_s = now
            metrics.count(AGENT_SEGMENTS, "processed", len(events))

    async def tick(self) -> None:
        """Re-check held events (runs on a timer): a source may have become quiet without a new
        batch arriving, and when input has stalled for `segment_align_wait_ms` the safety
        valve releases what waited that long."""
        if self.stream is None or not self.held:
            return
        async with self._lock:
            now = self.ctx.monotonic()
            await self._release(
                self.stream, now, valve=now - self._last_batch_s >= self.align_wait_s
            )

    def _tps(self, partition: int) -> tuple[TP, ...]:
        """The topic partitions of `partition` of the sources, in SOURCES order."""
        tps = self._tp_cache.get(partition)
        if tps is None:
            tps = self._tp_cache[partition] = tuple(
                TP(self.ctx.topic_name(name), partition) for name in SOURCES
            )
        return tps

    def _quiet_sources(self, partition: int, aligner: Aligner) -> set[int]:
        """Sources of `partition` with nothing more to deliver now (`runtime.progress`);
        unknown (no fetch yet, no consumer under test_context): not quiet."""
        consumer = self.ctx.app.consumer
        return {
            i
            for i, tp in enumerate(self._tps(partition))
            if caught_up(consumer, tp, aligner.last_offset(i))
        }

    async def _fetching(self, tp: TP, on: bool) -> bool:
        """Pause (on=False) or resume fetching one partition at the Kafka client
        (`compat.pause_fetching` says why not Faust's own pause). False when there is no
        started Kafka consumer (test_context) or the partition is not assigned."""
        return await pause_fetching(self.ctx.app.consumer, tp, paused=not on)

    async def _backpressure(self, partition: int, aligner: Aligner) -> None:
        """Pause fetching a source that has run far ahead of the others in event time (its
        items pile up waiting for the frontier); resume it once they drained."""
        for i, tp in enumerate(self._tps(partition)):
            held = aligner.held(i)
            if tp not in self._paused and held > self.pause_at:
                if await self._fetching(tp, on=False):
                    self._paused.add(tp)
                    self.ctx.metrics.count(AGENT_SEGMENTS, "source_pauses")
            elif tp in self._paused and held <= self.pause_at // 2:
                self._paused.discard(tp)
                await self._fetching(tp, on=True)

    async def _release(self, stream: StreamT, now_s: float, valve: bool) -> None:
        ready: list[tuple[EventT, ContentItem]] = []
        for partition, aligner in list(self.aligners.items()):
            if not len(aligner):
                await self._backpressure(partition, aligner)
                continue
            quiet = self._quiet_sources(partition, aligner)
            ready += aligner.ready(now_s, quiet, valve)
            await self._backpressure(partition, aligner)
        if ready:
            await self._apply(stream, ready)
        await self._checkpoint_old(stream)
        metrics = self.ctx.metrics
        if ready:
            metrics.observe(AGENT_SEGMENTS, 0)  # stamps the time of the latest applied event
        metrics.gauge(AGENT_SEGMENTS, "held", self.held)
        metrics.gauge(AGENT_SEGMENTS, "unpersisted", self.pending)
        metrics.gauge(AGENT_SEGMENTS, "paused_sources", len(self._paused))

    async def _featurize(
        self, work: Sequence[tuple[EventT, str, FrameEvent | CommentEvent | AsrSegment]]
    ) -> list[np.ndarray | str | _EmptySpeech | None]:
        out: list[np.ndarray | str | _EmptySpeech | None] = [None] * len(work)
        text_at: list[int] = []
        texts: list[str] = []
        jpeg_at: list[int] = []
        jpegs: list[bytes] = []
        for i, (_, _, model) in enumerate(work):
            if isinstance(model, FrameEvent):
                if model.embedding is None:
                    assert model.image_jpeg is not None
                    jpeg_at.append(i)
                    jpegs.append(model.image_jpeg)
            elif model.text_embedding is None:
                if isinstance(model, AsrSegment) and not model.text.strip():
                    out[i] = _EMPTY_SPEECH
                    continue
                text_at.append(i)
                texts.append(model.text)
        if not texts and not jpegs:
            return out
        hits = self.featurizers.text_cache_hits
        text_vecs, frame_vecs = await self.ctx.run_blocking(self.featurizers.embed, texts, jpegs)
        if text_vecs is not None:
            for row, i in enumerate(text_at):
                out[i] = text_vecs[row]
        for j, i in enumerate(jpeg_at):
            out[i] = frame_vecs[j]
        self.ctx.metrics.count(AGENT_SEGMENTS, "featurized_texts", len(texts))
        self.ctx.metrics.count(
            AGENT_SEGMENTS, "text_cache_hits", self.featurizers.text_cache_hits - hits
        )
        self.ctx.metrics.count(AGENT_SEGMENTS, "featurized_frames", len(jpegs))
        return out

    async def _apply(self, stream: StreamT, ready: Sequence[tuple[EventT, ContentItem]]) -> None:
        """Apply aligned items in order: each stream's state is updated in memory; the streams
        that closed a segment are stored once for the whole batch (after its last item), which
        covers every event of theirs applied so far."""
        config = self.config
        entries = self.entries
        closing: dict[str, tuple[_Entry, EventT, list[SegmentClosed]]] = {}
        bad: list[_Bad] = []
        finished: list[EventT] = []  # replays of stored events: acked at once
        applied = replayed = 0
        seq = self.seq
        vectors = quantize_vectors([item for _, item in ready], config)
        for (ev, item), q in zip(ready, vectors, strict=True):
            seq += 1
            author = item.author_id
            entry = entries.get(author)
            if entry is None:
                entry = self._load(author, ev)
            outcome, closed = entry.live.apply(item, q, config)
            if outcome == "applied" or outcome == "replayed":
                if outcome == "replayed":
                    replayed += 1
                    assert item.source is not None and item.offset is not None
                    if item.offset <= entry.persisted.get(item.source, -1):
                        finished.append(ev)
                        continue
                else:
                    applied += 1
                pending = entry.pending
                if not pending:  # the stream's oldest unstored event
                    entry.first_seq = seq
                    self.dirty[author] = None
                pending.append(ev)
                if closed:
                    got = closing.get(author)
                    closing[author] = (entry, ev, closed if got is None else got[2] + closed)
            else:
                assert isinstance(outcome, Reject)
                bad.append((ev, outcome.reason, outcome.detail, outcome.event_id))
        self.seq = seq
        self.pending += applied + replayed - len(finished)
        metrics = self.ctx.metrics
        if applied:
            metrics.count(AGENT_SEGMENTS, "applied", applied)
        if replayed:
            metrics.count(AGENT_SEGMENTS, "replayed", replayed)
        if bad or finished:
            await self._finish(stream, bad, finished)
        for author, (entry, last, closed_now) in closing.items():
            if entries.get(author) is entry:  # not forgotten by a revocation meanwhile
                await self._persist(stream, author, entry, last, closed_now)

    def _load(self, author: str, ev: EventT) -> _Entry:
        in_event_context(ev)  # reads go to the event's partition of the store
        raw = self.table.get(author.encode())
        buf, refs = decode_head(raw) if raw else (SegmentBuffer.empty(author), ())
        entry = _Entry(LiveBuffer(buf), ev.message.partition, dict(buf.applied), refs)
        self.entries[author] = entry
        return entry

    async def _persist(
        self,
        stream: StreamT,
        author: str,
        entry: _Entry,
        ev: EventT,
        closed_now: Sequence[SegmentClosed],
    ) -> None:
        """Store the stream: its newly closed segments (one row each), then its head (which
        refers to them), then drop the rows it no longer holds; publish the closed segments and
        ack every event the write covers. A crash between the steps replays into the same rows."""
        in_event_context(ev)
        key = author.encode()
        codec = self.ctx.codec
        evicted: list[ClosedRef] = []
        rows = [codec.encode(seg) for seg in closed_now]
        if closed_now:
            for seg, row in zip(closed_now, rows, strict=True):
                self.segments[segment_key(author, seg.start_ms).encode()] = row
            entry.refs, evicted = append_refs(entry.refs, closed_now, self.config)
        self.table[key] = encode_head(entry.live.snapshot(), entry.refs)
        for start, _ in evicted:
            # already gone only if a crash between these steps made us replay them
            with contextlib.suppress(KeyError):
                del self.segments[segment_key(author, start).encode()]
        metrics = self.ctx.metrics
        for seg, row in zip(closed_now, rows, strict=True):
            await self.ctx.publish("content.segments", key, row)
            log.debug(
                "segment_closed author_id=%s live_id=%s start_ms=%s frames=%s comments=%s asr=%s",
                seg.author_id,
                seg.live_id,
                seg.start_ms,
                seg.n_frames,
                seg.n_comments,
                seg.n_asr,
            )
        metrics.count(AGENT_SEGMENTS, "segments_closed", len(closed_now))
        metrics.count(AGENT_SEGMENTS, "table_writes")
        for ready in self._acks.done_many([(ev.message.tp, ev) for ev in entry.pending]):
            await stream.ack(ready)
        self.pending -= len(entry.pending)
        entry.pending = []
        entry.persisted = dict(entry.live.applied)
        self.dirty.pop(author, None)
        if not entry.live.is_open():
            self.entries.pop(author, None)

    async def _checkpoint_old(self, stream: StreamT) -> None:
        oldest_allowed = self.seq - self.checkpoint_events
        while self.dirty:
            author = next(iter(self.dirty))
            entry = self.entries[author]
            if entry.first_seq > oldest_allowed and self.pending <= self.checkpoint_events:
                return
            await self._persist(stream, author, entry, entry.pending[-1], [])
            self.entries.pop(author, None)
            self.ctx.metrics.count(AGENT_SEGMENTS, "checkpoints")

    async def _finish(
        self, stream: StreamT, bad: Sequence[_Bad], finished: Sequence[EventT]
    ) -> None:
        """Dead-letter `bad` (in order), then ack it and `finished`, with whatever later events
        of their partitions they held back."""
        dlq = self.ctx.dlq
        for ev, reason, detail, event_id in bad:
            msg = ev.message
            await dlq.send(
                ev.value if isinstance(ev.value, bytes) else None,
                source_topic=msg.topic,
                agent=AGENT_SEGMENTS,
                reason=reason,
                detail=detail,
                partition=msg.partition,
                offset=msg.offset,
                event_id=event_id,
            )
        done = [(ev.message.tp, ev) for ev, *_ in bad]
        done += [(ev.message.tp, ev) for ev in finished]
        for ready in self._acks.done_many(done):
            await stream.ack(ready)

    # --- inspection (runtime.context.Inspectable) -----------------------------------------
    def samples(self) -> Iterator[Sample]:
        """The buffers' gauges for `/metrics`."""
        entries = list(self.entries.values())
        yield "mmbee_segment_buffer_streams", {}, float(len(entries))
        yield "mmbee_segment_buffer_open_segments", {}, float(sum(len(e.buffer.open) for e in entries))
        yield "mmbee_segment_buffer_closed_segments", {}, float(sum(len(e.refs) for e in entries))
        yield "mmbee_segment_buffer_held_events", {}, float(self.held)
        yield "mmbee_segment_buffer_unpersisted_events", {}, float(self.pending)

    def describe(self) -> dict[str, Any]:
        """This worker's buffers in numbers (one stream: `describe_author`)."""
        return {name.removeprefix("mmbee_segment_buffer_"): v for name, _, v in self.samples()}

    def describe_author(self, author_id: str) -> dict[str, Any]:
        """The stream's buffer as JSON-able data: stored closed segments, open segments (the
        in-memory ones when this worker holds the stream), watermark, unpersisted events."""
        clear_event_context()
        stored = self.table.get(author_id.encode())
        buf, refs = decode_head(stored) if stored else (SegmentBuffer.empty(author_id), ())
        entry = self.entries.get(author_id)
        if entry is not None:
            buf, refs = entry.live.snapshot(), entry.refs
        closed = []
        for start, _ in refs:
            row = self.segments.get(segment_key(author_id, start).encode())
            if row is not None:
                seg = SegmentClosed.model_validate_json(
                    row, context=self.config.validation_context()
                )
                closed.append(seg.model_dump(mode="json"))
        return {
            "author_id": author_id,
            "closed": closed,
            "open": [
                {"start_ms": s.start_ms, "live_id": s.live_id, "counts": list(s.counts)}
                for s in buf.open
            ],
            "watermark_ms": buf.watermark_ms,
            "applied": dict(buf.applied),
            "unpersisted_events": len(entry.pending) if entry else 0,
        }


def _stale(ev: EventT, generation: int) -> bool:
    """True for an event fetched before the latest rebalance (it will be redelivered)."""
    gen = ev.message.generation_id
    return gen is not None and gen != generation


# --- ASR ----------------------------------------------------------------------------------


def asr_segment(chunk: AudioChunk, transcript: Transcript) -> AsrSegment:
    """The AsrSegment of a transcribed chunk. Its event_id derives from the chunk's, so a
    re-transcribed (redelivered) chunk is recognised downstream as a duplicate.

    Example:
        >>> from mmbee.encoders.featurizers import Transcript
        >>> c = AudioChunk(event_id="c1", ts_ms=1_700_000_000_000, live_id="l", author_id="a",
        ...                pcm_s16le=b"\\0\\0" * 16_000)
        >>> s = asr_segment(c, Transcript("hello", "en", (), 1.0))
        >>> s.event_id, s.end_ms - s.ts_ms, s.audio_event_id
        ('asr-c1', 1000, 'c1')
    """
    event_id = f"asr-{chunk.event_id}"
    if len(event_id) > MAX_EVENT_ID_LEN:
        event_id = "asr-" + hashlib.sha1(chunk.event_id.encode()).hexdigest()
    language = transcript.language if 2 <= len(transcript.language) <= 8 else "und"
    return AsrSegment(
        event_id=event_id,
        ts_ms=chunk.ts_ms,
        end_ms=chunk.ts_ms + chunk.duration_ms,
        live_id=chunk.live_id,
        author_id=chunk.author_id,
        text=transcript.text[:MAX_TEXT_CHARS],
        language=language,
        audio_event_id=chunk.event_id,
    )


class AsrRuntime:
    """The ASR agent's worker state: the recognizer (loaded on first use, on the executor).

    Args:
        ctx: the stream context.
        recognizer: a ready recognizer; None = build one from the settings when first needed.
    """

    def __init__(self, ctx: StreamContext, recognizer: SpeechRecognizer | None = None) -> None:
        self.ctx = ctx
        self._recognizer = recognizer

    def _load(self) -> SpeechRecognizer:
        if self._recognizer is None:
            from mmbee.encoders.featurizers import build_recognizer

            s = self.ctx.settings
            self._recognizer = build_recognizer(
                s.asr_backend,
                s.asr_model,
                threads=s.featurizer_threads,
                cache_dir=s.model_cache_dir,
            )
        return self._recognizer

    def _transcribe(self, pcms: list[np.ndarray]) -> list[Transcript]:
        return self._load().transcribe_batch(pcms)

    async def process(self, stream: StreamT, events: Sequence[EventT]) -> None:
        """Transcribe one batch of audio chunks and publish their AsrSegments, then ack them."""
        ctx, metrics = self.ctx, self.ctx.metrics
        metrics.observe(AGENT_ASR, len(events))
        generation = ctx.app.consumer_generation_id
        chunks: list[tuple[EventT, AudioChunk]] = []
        live = [ev for ev in events if not _stale(ev, generation)]
        for ev in live:
            decoded = ctx.codec.decode_topic("live.audio", ev.value)
            if isinstance(decoded, Rejected):
                await self._reject(stream, ev, decoded.reason, decoded.detail, decoded.event_id)
                continue
            assert isinstance(decoded, AudioChunk)
            if ev.key != decoded.author_id.encode():
                await self._reject(
                    stream,
                    ev,
                    "validation_error",
                    f"message key {ev.key!r} is not the chunk's author_id {decoded.author_id!r}",
                    decoded.event_id,
                )
                continue
            chunks.append((ev, decoded))
        if not chunks:
            await self._ack_in_order(stream, live)
            metrics.count(AGENT_ASR, "processed", len(events))
            return
        from mmbee.encoders.featurizers import pcm16_to_float32

        await ctx.run_blocking(self._load)  # a missing model fails loudly, not per chunk
        pcms = [pcm16_to_float32(c.pcm_s16le) for _, c in chunks]
        results: list[Transcript | str]
        try:
            results = list(await ctx.run_blocking(self._transcribe, pcms))
        except (RuntimeError, ValueError) as exc:  # the batch failed: find the chunk(s) to blame
            log.warning("asr batch of %d failed (%s); retrying one by one", len(pcms), exc)
            results = []
            for pcm in pcms:
                try:
                    results.extend(await ctx.run_blocking(self._transcribe, [pcm]))
                except (RuntimeError, ValueError) as one:
                    results.append(f"transcription failed: {one}")
        if ctx.app.consumer_generation_id != generation:
            metrics.count(AGENT_ASR, "batches_dropped_on_rebalance")
            return
        for (ev, chunk), result in zip(chunks, results, strict=True):
            if isinstance(result, str):
                await self._reject(stream, ev, "processing_error", result, chunk.event_id)
                continue
            seg = asr_segment(chunk, result)
            await ctx.publish("live.asr", chunk.author_id.encode(), ctx.codec.encode(seg))
            metrics.count(AGENT_ASR, "transcribed")
            metrics.count(AGENT_ASR, "audio_ms", chunk.duration_ms)
            if not seg.text:
                metrics.count(AGENT_ASR, "empty_transcripts")
        await self._ack_in_order(stream, live)
        metrics.count(AGENT_ASR, "processed", len(events))

    @staticmethod
    async def _ack_in_order(stream: StreamT, events: Sequence[EventT]) -> None:
        """Ack a finished batch in arrival order (Faust's commit expects in-order acks; see
        `mmbee.streams.acks`)."""
        for ev in events:
            await stream.ack(ev)

    async def _reject(
        self, stream: StreamT, ev: EventT, reason: Any, detail: str, event_id: str | None
    ) -> None:
        msg = ev.message
        await self.ctx.dlq.send(
            ev.value if isinstance(ev.value, bytes) else None,
            source_topic=msg.topic,
            agent=AGENT_ASR,
            reason=reason,
            detail=detail,
            partition=msg.partition,
            offset=msg.offset,
            event_id=event_id,
        )


# --- registration -------------------------------------------------------------------------


def register_segments(ctx: StreamContext) -> None:
    """Component `segments`: the segment agent, its table and `/mmbee/segments/{author_id}/`."""
    settings = ctx.settings
    table = ctx.table(TABLE, help="rolling segment buffer head per author")
    segments_table = ctx.table(SEGMENTS_TABLE, help="closed segments held by the buffers")
    runtime = SegmentRuntime(
        ctx, table, segments_table, segment_config(settings), settings.segment_checkpoint_events
    )
    ctx.runtimes[AGENT_SEGMENTS] = runtime
    ctx.on_partitions_revoked(runtime.on_revoked)
    batch, within = settings.stream_batch_max, settings.stream_batch_wait_ms / 1000

    async def segments(stream: StreamT) -> None:
        batches = cast(faust.Stream, stream).noack_take(batch, within=within)
        async for events in batches:
            await runtime.process(stream, events)

    ctx.app.agent(ctx.topic(*SOURCES), name="mmbee.segments")(segments)
    tick_s = max(settings.segment_align_wait_ms / 4000, 0.02)

    @ctx.app.timer(tick_s, name="mmbee.segments.align")
    async def release_aligned() -> None:
        await runtime.tick()

    @ctx.app.page("/mmbee/segments/{author_id}/")
    async def segment_buffer(
        self: faust.web.View, request: faust.web.Request, author_id: str
    ) -> Any:
        return self.json(runtime.describe_author(author_id))


def register_asr(ctx: StreamContext) -> None:
    """Component `asr`: AudioChunk -> Whisper -> AsrSegment."""
    runtime = AsrRuntime(ctx)
    ctx.runtimes[AGENT_ASR] = runtime
    batch, within = ctx.settings.asr_batch_max, ctx.settings.stream_batch_wait_ms / 1000

    async def asr(stream: StreamT) -> None:
        batches = cast(faust.Stream, stream).noack_take(batch, within=within)
        async for events in batches:
            await runtime.process(stream, events)

    ctx.app.agent(ctx.topic("live.audio"), name="mmbee.asr")(asr)
