"""Component `segments`: frames, comments and ASR text -> rolling segment buffers.

One agent over `live.frames`, `live.comments` and `live.asr` (all keyed by author,
co-partitioned). It decodes raw bytes through its envelope (`runtime.agent`), embeds content
that arrives without an embedding (`mmbee.streams.featurize`), and applies each item to the
stream's buffer (`mmbee.state.segments.LiveBuffer`). Closed segments go to `content.segments`.
(`mmbee.streams.components.asr` turns `live.audio` into `live.asr`.)

Event time across topics: Faust interleaves the three topics by count, not by time, so the
agent first aligns them per partition (`mmbee.state.align`): an item is applied once every
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
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import faust
import numpy as np
from faust.types import TP, EventT, StreamT, TableT

from mmbee.schemas.events import (
    FrameEvent,
    SegmentClosed,
)
from mmbee.settings import Settings
from mmbee.state.segments import (
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
from mmbee.streams.featurize import EMPTY_SPEECH, EmptySpeech, Featurizers, featurize
from mmbee.streams.runtime.agent import Bad, Envelope
from mmbee.streams.runtime.alignment import SourceAlignment
from mmbee.streams.runtime.context import (
    Sample,
    StreamContext,
    clear_event_context,
    in_event_context,
)
from mmbee.streams.runtime.workingset import WorkingSet

if TYPE_CHECKING:
    pass

__all__ = [
    "SOURCES",
    "AGENT_SEGMENTS",
    "TABLE",
    "SEGMENTS_TABLE",
    "segment_config",
    "SegmentRuntime",
    "register_segments",
]

log = logging.getLogger("mmbee.streams.components.segments")

SOURCES = ("live.frames", "live.comments", "live.asr")
"""Catalogue topics the segment agent reads (all keyed by author_id)."""
AGENT_SEGMENTS = "segments"
TABLE = "segment_buffers"
"""Changelogged table: author_id -> the buffer's head (`mmbee.state.segments.encode_head`:
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


class SegmentTables:
    """The two changelogged tables of the segment agent: each stream's head, and the closed
    segments it refers to (one row each). Reads and writes go to the current event's partition.

    Args:
        table: the `segment_buffers` table (heads).
        segments: the `segments` table (closed segments by '<author>|<start_ms>').
        config: segment geometry and widths (to validate stored segments).
        codec: encodes the closed segments.
    """

    def __init__(self, table: TableT, segments: TableT, config: SegmentConfig, codec: Any) -> None:
        self.table = table
        self.segments = segments
        self.config = config
        self.codec = codec

    def head(self, author: str) -> tuple[SegmentBuffer, tuple[ClosedRef, ...]]:
        """The stream's stored head (an empty buffer when it has none)."""
        raw = self.table.get(author.encode())
        return decode_head(raw) if raw else (SegmentBuffer.empty(author), ())

    def store(
        self, author: str, buffer: SegmentBuffer, refs: tuple[ClosedRef, ...],
        closed_now: Sequence[SegmentClosed],
    ) -> tuple[tuple[ClosedRef, ...], list[bytes]]:  # fmt: skip
        """Store the newly closed segments (one row each), then the head (which refers to
        them), then drop the rows the buffer no longer holds. Returns the new refs and the
        closed segments' rows. A crash between the steps replays into the same rows."""
        rows = [self.codec.encode(seg) for seg in closed_now]
        evicted: list[ClosedRef] = []
        if closed_now:
            for seg, row in zip(closed_now, rows, strict=True):
                self.segments[segment_key(author, seg.start_ms).encode()] = row
            refs, evicted = append_refs(refs, closed_now, self.config)
        self.table[author.encode()] = encode_head(buffer, refs)
        for start, _ in evicted:
            # already gone only if a crash between these steps made us replay them
            with contextlib.suppress(KeyError):
                del self.segments[segment_key(author, start).encode()]
        return refs, rows

    def closed(self, author: str, refs: Sequence[ClosedRef]) -> list[SegmentClosed]:
        """The stored closed segments `refs` name (those still there)."""
        out = []
        ctx = self.config.validation_context()
        for start, _ in refs:
            row = self.segments.get(segment_key(author, start).encode())
            if row is not None:
                out.append(SegmentClosed.model_validate_json(row, context=ctx))
        return out


    def describe(self, author_id: str, entry: _Entry | None) -> dict[str, Any]:
        """The stream's buffer as JSON-able data: stored closed segments, open segments (the
        in-memory ones of `entry` when given), watermark, unpersisted events."""
        buf, refs = self.head(author_id)
        if entry is not None:
            buf, refs = entry.live.snapshot(), entry.refs
        return {
            "author_id": author_id,
            "closed": [seg.model_dump(mode="json") for seg in self.closed(author_id, refs)],
            "open": [
                {"start_ms": s.start_ms, "live_id": s.live_id, "counts": list(s.counts)}
                for s in buf.open
            ],
            "watermark_ms": buf.watermark_ms,
            "applied": dict(buf.applied),
            "unpersisted_events": len(entry.pending) if entry else 0,
        }


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
        self.tables = SegmentTables(table, segments, config, ctx.codec)
        self.table, self.segments = table, segments
        self.config = config
        self.checkpoint_events = checkpoint_events
        self.featurizers = featurizers or Featurizers.for_settings(ctx.settings)
        self.work: WorkingSet[_Entry] = WorkingSet()  # streams in memory, unstored events
        self.entries = self.work.entries
        self.align_wait_s = ctx.settings.segment_align_wait_ms / 1000
        # held (decoded, not yet applied) until every source passed their event time
        self.alignment = SourceAlignment(
            ctx, AGENT_SEGMENTS, SOURCES, self.align_wait_s, 2 * ctx.settings.stream_batch_max
        )
        self.stream: StreamT | None = None
        # decoding with the key check, dead letters, in-order acks per topic partition
        self.envelope = Envelope(ctx, AGENT_SEGMENTS, SOURCES, key_required=True)
        self._last_batch_s = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def held(self) -> int:
        """Events waiting for event-time alignment (decoded, not applied, not acked)."""
        return self.alignment.held

    # --- rebalance ------------------------------------------------------------------------
    def on_revoked(self, revoked: set[TP]) -> None:
        """Forget the working state of revoked partitions: their unacked events will be
        redelivered (to this worker or another) and re-applied onto the stored state."""
        parts = self.envelope.forget(revoked)  # their held acks go
        if not parts:
            return
        self.work.forget(parts)
        self.alignment.forget(parts)
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
            bad, work = self.envelope.take(events, generation)  # content keys: author_id
            unembedded = any(  # some event needs the featurizers
                (m.embedding if type(m) is FrameEvent else m.text_embedding) is None
                for _, _, m in work
            )
            vectors: Sequence[np.ndarray | str | EmptySpeech | None]
            if unembedded:
                vectors = await featurize(
                    self.ctx, self.featurizers, AGENT_SEGMENTS, [m for _, _, m in work]
                )
                if self.ctx.app.consumer_generation_id != generation:
                    metrics.count(AGENT_SEGMENTS, "batches_dropped_on_rebalance")
                    return  # partitions moved while we waited: the events will be redelivered
            else:
                vectors = [None] * len(work)  # every event carries its embedding
            now = self.ctx.monotonic()
            push = self.alignment.push
            from_event = ContentItem.from_event
            finished: list[EventT] = []  # done without effect on the buffers
            for (ev, name, model), vec in zip(work, vectors, strict=True):
                if vec is None or type(vec) is np.ndarray:
                    msg = ev.message
                    item = from_event(model, vec, source=name, offset=msg.offset)
                    push(msg.partition, name, ts=item.ts_ms, offset=msg.offset, item=(ev, item),
                         now_s=now)  # fmt: skip
                elif vec is EMPTY_SPEECH:
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

    async def _release(self, stream: StreamT, now_s: float, valve: bool) -> None:
        ready: list[tuple[EventT, ContentItem]] = await self.alignment.release(now_s, valve)
        if ready:
            await self._apply(stream, ready)
        await self._checkpoint_old(stream)
        metrics = self.ctx.metrics
        if ready:
            metrics.observe(AGENT_SEGMENTS, 0)  # stamps the time of the latest applied event
        metrics.gauge(AGENT_SEGMENTS, "held", self.held)
        metrics.gauge(AGENT_SEGMENTS, "unpersisted", self.work.pending)
        metrics.gauge(AGENT_SEGMENTS, "paused_sources", len(self.alignment.paused))

    async def _apply(self, stream: StreamT, ready: Sequence[tuple[EventT, ContentItem]]) -> None:
        """Apply aligned items in order: each stream's state is updated in memory; the streams
        that closed a segment are stored once for the whole batch (after its last item), which
        covers every event of theirs applied so far."""
        config = self.config
        work = self.work
        entries = work.entries
        closing: dict[str, tuple[_Entry, EventT, list[SegmentClosed]]] = {}
        bad: list[Bad] = []
        finished: list[EventT] = []  # replays of stored events: acked at once
        applied = replayed = 0
        seq = work.seq
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
                work.applied(author, entry, ev, seq)
                if closed:
                    got = closing.get(author)
                    closing[author] = (entry, ev, closed if got is None else got[2] + closed)
            else:
                assert isinstance(outcome, Reject)
                bad.append((ev, outcome.reason, outcome.detail, outcome.event_id))
        work.seq = seq
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
        buf, refs = self.tables.head(author)
        return self.work.add(
            author, _Entry(LiveBuffer(buf), ev.message.partition, dict(buf.applied), refs)
        )

    async def _persist(
        self,
        stream: StreamT,
        author: str,
        entry: _Entry,
        ev: EventT,
        closed_now: Sequence[SegmentClosed],
    ) -> None:
        """Store the stream (`SegmentTables.store`), publish its newly closed segments and
        ack every event the write covers."""
        in_event_context(ev)
        key = author.encode()
        entry.refs, rows = self.tables.store(author, entry.live.snapshot(), entry.refs, closed_now)
        metrics = self.ctx.metrics
        for seg, row in zip(closed_now, rows, strict=True):
            await self.ctx.publish("content.segments", key, row)
            log.debug("segment_closed author_id=%s live_id=%s start_ms=%s frames=%s comments=%s "
                      "asr=%s", seg.author_id, seg.live_id, seg.start_ms, seg.n_frames,
                      seg.n_comments, seg.n_asr)  # fmt: skip
        metrics.count(AGENT_SEGMENTS, "segments_closed", len(closed_now))
        metrics.count(AGENT_SEGMENTS, "table_writes")
        if self.entries.get(author) is not entry:
            return  # revoked while publishing: forgotten, its events go to the new owner
        await self.envelope.done(stream, self.work.stored(author, entry))
        entry.persisted = dict(entry.live.applied)
        if not entry.live.is_open():
            self.entries.pop(author, None)

    async def _checkpoint_old(self, stream: StreamT) -> None:
        """Store the streams whose unstored events are `checkpoint_events` old (or too many)."""
        while (author := self.work.checkpoint(self.checkpoint_events)) is not None:
            entry = self.entries[author]
            await self._persist(stream, author, entry, entry.pending[-1], [])
            self.entries.pop(author, None)
            self.ctx.metrics.count(AGENT_SEGMENTS, "checkpoints")

    async def _finish(
        self, stream: StreamT, bad: Sequence[Bad], finished: Sequence[EventT]
    ) -> None:
        """Dead-letter `bad` (in order; a duplicate, a redelivery of an applied event, is only
        counted), then ack it and `finished`, with whatever later events of their partitions
        they held back."""
        await self.envelope.reject_all(bad)
        await self.envelope.done(stream, [ev for ev, *_ in bad] + list(finished))

    # --- inspection (runtime.context.Inspectable) -----------------------------------------
    def samples(self) -> Iterator[Sample]:
        """The buffers' gauges for `/metrics`."""
        entries = list(self.entries.values())
        yield "mmbee_segment_buffer_streams", {}, float(len(entries))
        yield "mmbee_segment_buffer_open_segments", {}, float(sum(len(e.buffer.open) for e in entries))
        yield "mmbee_segment_buffer_closed_segments", {}, float(sum(len(e.refs) for e in entries))
        yield "mmbee_segment_buffer_held_events", {}, float(self.held)
        yield "mmbee_segment_buffer_unpersisted_events", {}, float(self.work.pending)

    def describe(self) -> dict[str, Any]:
        """This worker's buffers in numbers (one stream: `describe_author`)."""
        return {name.removeprefix("mmbee_segment_buffer_"): v for name, _, v in self.samples()}

    def describe_author(self, author_id: str) -> dict[str, Any]:
        """The stream's buffer (`SegmentTables.describe`), the in-memory one when this worker
        holds the stream."""
        clear_event_context()
        return self.tables.describe(author_id, self.entries.get(author_id))


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
