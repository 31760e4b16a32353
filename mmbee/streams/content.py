"""Component `segments`: frames, comments and ASR text -> rolling segment buffers.

One agent over `live.frames`, `live.comments` and `live.asr` (all keyed by author,
co-partitioned). It decodes raw bytes through its envelope (`runtime.agent`), embeds content
that arrives without an embedding (`mmbee.streams.featurize`), and applies each item to the
stream's buffer (`mmbee.state.segments.LiveBuffer`). Closed segments go to `content.segments`.
(`mmbee.streams.asr` turns `live.audio` into `live.asr`.)

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
    AsrSegment,
    CommentEvent,
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
from mmbee.streams.codec import Rejected
from mmbee.streams.featurize import EMPTY_SPEECH, EmptySpeech, Featurizers, featurize
from mmbee.streams.runtime.agent import Bad, Envelope
from mmbee.streams.runtime.alignment import SourceAlignment
from mmbee.streams.runtime.context import (
    Sample,
    StreamContext,
    clear_event_context,
    in_event_context,
)

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

log = logging.getLogger("mmbee.streams.content")

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
        # held (decoded, not yet applied) until every source passed their event time
        self.alignment = SourceAlignment(
            ctx, AGENT_SEGMENTS, SOURCES, self.align_wait_s, 2 * ctx.settings.stream_batch_max
        )
        self.stream: StreamT | None = None
        # decoding with the key check, dead letters, in-order acks per topic partition
        self.envelope = Envelope(ctx, AGENT_SEGMENTS, SOURCES, key_required=True)
        self._acks = self.envelope.acks
        self._last_batch_s = float("-inf")
        self._lock = asyncio.Lock()
        self._sources = self.envelope.sources

    @property
    def held(self) -> int:
        """Events waiting for event-time alignment (decoded, not applied, not acked)."""
        return self.alignment.held

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
        self.alignment.forget(parts)
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
            sources = self._sources
            decode = self.envelope.decode
            track = self._acks.track
            bad: list[Bad] = []
            work: list[tuple[EventT, str, FrameEvent | CommentEvent | AsrSegment]] = []
            unembedded = False  # some event needs the featurizers
            for ev in events:
                msg = ev.message
                gen = msg.generation_id
                if gen is not None and gen != generation:
                    continue  # fetched before the latest rebalance: it will be redelivered
                track(msg.tp, ev)
                decoded = decode(ev)  # the codec, then the key (content topics: author_id)
                if type(decoded) is Rejected:
                    bad.append((ev, decoded.reason, decoded.detail, decoded.event_id))
                    continue
                assert isinstance(decoded, FrameEvent | CommentEvent | AsrSegment)
                name = sources[msg.topic]
                if not unembedded:
                    unembedded = (
                        decoded.embedding is None
                        if type(decoded) is FrameEvent
                        else decoded.text_embedding is None  # type: ignore[union-attr]
                    )
                work.append((ev, name, decoded))
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
        metrics.gauge(AGENT_SEGMENTS, "unpersisted", self.pending)
        metrics.gauge(AGENT_SEGMENTS, "paused_sources", len(self.alignment.paused))

    async def _apply(self, stream: StreamT, ready: Sequence[tuple[EventT, ContentItem]]) -> None:
        """Apply aligned items in order: each stream's state is updated in memory; the streams
        that closed a segment are stored once for the whole batch (after its last item), which
        covers every event of theirs applied so far."""
        config = self.config
        entries = self.entries
        closing: dict[str, tuple[_Entry, EventT, list[SegmentClosed]]] = {}
        bad: list[Bad] = []
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
        self, stream: StreamT, bad: Sequence[Bad], finished: Sequence[EventT]
    ) -> None:
        """Dead-letter `bad` (in order; a duplicate, a redelivery of an applied event, is only
        counted), then ack it and `finished`, with whatever later events of their partitions
        they held back."""
        await self.envelope.reject_all(bad)
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
