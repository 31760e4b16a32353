"""Component `segments`: frames, comments and ASR text -> rolling segment buffers.

One agent over `live.frames`, `live.comments`, `live.asr` (keyed by author, co-partitioned);
closed segments go to `content.segments`. Read top to bottom: `config`; the step `apply` (one
item applied to its stream's `mmbee.state.segments.LiveBuffer`); `CODEC` (a table row);
`SegmentRuntime`, which feeds the step; `register`; `COMPONENT`.

Per batch the envelope decodes and checks keys, content without an embedding is embedded
(`mmbee.streams.featurize`), and items wait until every topic has passed their event time
(`AlignedWorkingSet`; docs/streams.md). Streams stay in memory; the tables are written when a
segment closes (or a stream's unstored events are `segment_checkpoint_events` old), and an
event is acked only once a write covers it. After a crash the stored applied offsets make the
replay idempotent: an item at or below them is a replay, acked without effect.

Choices (issue 18): the step's state is the mutable `LiveBuffer`, updated in place (a copy
per event would cost more than the agent's budget per event; runtime/component.py); the row is
its immutable snapshot with the refs. Replays are told apart before the step
(`LiveBuffer.is_replay`; for the step they are no-ops): they are acked at once when stored,
and counted apart from applied items.

Example:
    >>> cfg = SegmentConfig(segment_ms=1_000, allowed_lateness_ms=0, frame_dim=2, text_dim=2)
    >>> items = [ContentItem("frame", f"e{i}", "a1", "l1", 1_700_000_000_000 + 600 * i,
    ...                      np.ones(2, np.float32)) for i in range(3)]
    >>> live = LiveBuffer(windows.SegmentBuffer.empty("a1"))
    >>> steps = [apply(cfg, live, it) for it in zip(items, windows.quantize_vectors(items, cfg))]
    >>> [len(s.outputs) for s in steps], steps[2].outputs[0].n_frames
    ([0, 0, 1], 2)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import numpy as np
from faust.types import TP, EventT, StreamT

from mmbee.schemas.events import SegmentClosed
from mmbee.settings import Settings
from mmbee.state import segments as windows
from mmbee.state.segments import ContentItem, LiveBuffer, SegmentConfig
from mmbee.streams.featurize import Featurizers, content_items
from mmbee.streams.runtime.agent import Bad, Envelope
from mmbee.streams.runtime.component import Component, Reject, Step
from mmbee.streams.runtime.context import Sample, StreamContext, clear_event_context
from mmbee.streams.runtime.workingset import AlignedWorkingSet

__all__ = ["AGENT_SEGMENTS", "CODEC", "COMPONENT", "SOURCES", "SegmentRuntime", "apply", "config"]

log = logging.getLogger("mmbee.streams.components.segments")

AGENT_SEGMENTS = "segments"
SOURCES = ("live.frames", "live.comments", "live.asr")  # catalogue topics, keyed by author_id


def config(settings: Settings) -> SegmentConfig:
    """The segment buffer's frozen config under these settings."""
    return SegmentConfig(settings.segment_ms, settings.segments_kept,
                         settings.allowed_lateness_ms, settings.frame_dim, settings.text_dim)  # fmt: skip


def apply(
    config: SegmentConfig, state: LiveBuffer, item: tuple[ContentItem, np.ndarray | windows.Reject]
) -> Step[LiveBuffer, SegmentClosed]:
    """One content item with its `quantize_vectors` entry, applied to its stream's buffer:
    outputs are the segments it closed (oldest first); a late, duplicate, invalid or oversized
    item is a reject and changes nothing (a replay changes nothing either)."""
    content, q = item
    outcome, closed = state.apply(content, q, config)
    if type(outcome) is str:
        return Step(state, tuple(closed)) if closed else Step(state)
    assert isinstance(outcome, windows.Reject)
    return Step(state, rejects=(Reject(outcome.reason, outcome.detail, outcome.event_id),))


CODEC = windows.HeadCodec()
"""Table `segment_buffers`: author_id -> (the buffer without its closed segments, refs to them);
table `segments`: '<author_id>|<start_ms>' -> the SegmentClosed JSON of the segments it holds
(`windows.store_buffer` writes both; every closed segment is also on `content.segments`)."""


@dataclass
class _Entry:
    """A stream in memory (`persisted`: the applied offsets its stored row holds)."""

    live: LiveBuffer
    partition: int
    persisted: dict[str, int]
    refs: tuple[windows.ClosedRef, ...] = ()
    pending: list[EventT] = field(default_factory=list)
    first_seq: int = 0


class SegmentRuntime:
    """The segment agent on one worker: its tables and its working set of streams."""

    def __init__(self, ctx: StreamContext, featurizers: Featurizers | None = None) -> None:
        s = ctx.settings
        self.ctx, self.config = ctx, config(s)
        self.table = ctx.table("segment_buffers", help="rolling segment buffer head per author")
        self.segments = ctx.table("segments", help="closed segments held by the buffers")
        self.featurizers = featurizers or Featurizers.for_settings(s)
        self.envelope = Envelope(ctx, AGENT_SEGMENTS, SOURCES, key_required=True)
        self.work = AlignedWorkingSet(ctx, AGENT_SEGMENTS, SOURCES, self.envelope,
                                      s.segment_checkpoint_events, self._load, self._store,
                                      self._apply, s.segment_align_wait_ms / 1000)  # fmt: skip
        self.entries: dict[str, _Entry] = self.work.entries

    def on_revoked(self, revoked: set[TP]) -> None:
        """Forget revoked partitions: their unacked events are redelivered and re-applied."""
        self.work.revoke(revoked)

    async def process(self, stream: StreamT, events: Sequence[EventT]) -> None:
        """Decode and embed one batch, hold it for alignment, apply what is aligned (the loops
        never await, so a rebalance cannot change the working state under them)."""
        work, metrics, moved = self.work, self.ctx.metrics, self.envelope.moved
        work.stream = stream
        metrics.observe(AGENT_SEGMENTS, len(events))
        async with work.lock:
            generation = self.ctx.app.consumer_generation_id
            bad, taken = self.envelope.take(events, generation)
            items, empty, unreadable = await content_items(
                self.ctx, self.featurizers, AGENT_SEGMENTS, taken
            )
            if moved(generation):
                metrics.count(AGENT_SEGMENTS, "batches_dropped_on_rebalance")
                return  # partitions moved while we embedded: the events will be redelivered
            now = self.ctx.monotonic()
            for ev, item in items:
                work.hold(ev, item.source, item.ts_ms, item, now)  # type: ignore[arg-type]
            work.read([b[0] for b in bad + unreadable] + empty)  # a read is a read
            if empty:
                metrics.count(AGENT_SEGMENTS, "asr_empty", len(empty))
            if bad or empty or unreadable:
                await work.finish(stream, bad + unreadable, empty)
                if moved(generation):
                    return  # revoked meanwhile: the working state was forgotten
            await work.batch_done(stream, now)
            metrics.count(AGENT_SEGMENTS, "processed", len(events))

    async def _apply(self, stream: StreamT, ready: Sequence[tuple[EventT, ContentItem]]) -> None:
        """Apply aligned items in order; a stream that closed segments is stored once, after
        its last item of the batch (the write covers every event of it applied so far)."""
        work, cfg, bad, finished = self.work, self.config, cast(list[Bad], []), []
        closing: dict[str, tuple[_Entry, EventT, list[SegmentClosed]]] = {}
        applied = replayed = 0
        seq, entries, load = work.seq, work.entries, work.get
        vectors = windows.quantize_vectors([item for _, item in ready], cfg)
        for (ev, item), q in zip(ready, vectors, strict=True):
            seq += 1
            author = item.author_id
            entry = entries.get(author) or load(author, ev)
            if entry.live.is_replay(item):  # acked at once if stored, else with the next write
                replayed += 1
                if item.offset <= entry.persisted.get(item.source, -1):  # type: ignore[operator, arg-type]
                    finished.append(ev)
                else:
                    work.applied(author, entry, ev, seq)
                continue
            step = apply(cfg, entry.live, (item, q))
            if step.rejects:
                bad += [(ev, r.reason, r.detail, r.event_id) for r in step.rejects]  # type: ignore[misc]
                continue
            applied += 1
            work.applied(author, entry, ev, seq)
            if step.outputs:
                got = closing.get(author)
                closing[author] = (entry, ev, [*(got[2] if got else ()), *step.outputs])
        work.seq = seq
        for name, n in (("applied", applied), ("replayed", replayed)):
            if n:
                self.ctx.metrics.count(AGENT_SEGMENTS, name, n)
        if bad or finished:
            await work.finish(stream, bad, finished)
        for author, (entry, last, closed_now) in closing.items():
            if entries.get(author) is entry:  # not forgotten by a revocation meanwhile
                keep = entry.live.is_open()
                await work.persist(stream, author, entry, last, closed_now, keep=keep)

    def _load(self, author: str, partition: int) -> _Entry:
        buf, refs = windows.load_buffer(self.table, author)
        return _Entry(LiveBuffer(buf), partition, dict(buf.applied), refs)

    async def _store(self, author: str, entry: _Entry, closed_now: Sequence[SegmentClosed]) -> None:
        """Write the stream (`windows.store_buffer`), then publish the segments it closed."""
        entry.refs, rows = windows.store_buffer(self.table, self.segments, entry.live.snapshot(),
                                                entry.refs, closed_now, self.config)  # fmt: skip
        entry.persisted = dict(entry.live.applied)
        for seg, row in zip(closed_now, rows, strict=True):
            await self.ctx.publish("content.segments", author.encode(), row)
            log.debug("segment_closed author_id=%s live_id=%s start_ms=%s frames=%s comments=%s asr=%s",
                      author, seg.live_id, seg.start_ms, seg.n_frames, seg.n_comments, seg.n_asr)  # fmt: skip
        self.ctx.metrics.count(AGENT_SEGMENTS, "segments_closed", len(closed_now))
        self.ctx.metrics.count(AGENT_SEGMENTS, "table_writes")

    def samples(self) -> Iterator[Sample]:
        """The buffers' gauges for `/metrics` (runtime.context.Inspectable)."""
        entries, work, prefix = list(self.entries.values()), self.work, "mmbee_segment_buffer_"
        yield prefix + "streams", {}, float(len(entries))
        yield prefix + "open_segments", {}, float(sum(len(e.live.opens) for e in entries))
        yield prefix + "closed_segments", {}, float(sum(len(e.refs) for e in entries))
        yield prefix + "held_events", {}, float(work.held)
        yield prefix + "unpersisted_events", {}, float(work.pending)

    def describe(self) -> dict[str, Any]:
        """This worker's buffers in numbers (one stream: `describe_author`)."""
        return {name.removeprefix("mmbee_segment_buffer_"): v for name, _, v in self.samples()}

    def describe_author(self, author_id: str) -> dict[str, Any]:
        """One stream's buffer (`LiveBuffer.describe`): the in-memory one if this worker has it."""
        clear_event_context()  # reads look in every local partition
        entry = self.entries.get(author_id)
        if entry is None:
            buf, refs = windows.load_buffer(self.table, author_id)
            live, pending = LiveBuffer(buf), 0
        else:
            live, refs, pending = entry.live, entry.refs, len(entry.pending)
        closed = windows.load_closed(self.segments, author_id, refs, self.config)
        return {**live.describe(closed), "unpersisted_events": pending}


def register(ctx: StreamContext) -> None:
    """The segment agent, its tables, its alignment timer and `/mmbee/segments/{author_id}/`."""
    runtime = ctx.runtimes[AGENT_SEGMENTS] = SegmentRuntime(ctx)
    ctx.on_partitions_revoked(runtime.on_revoked)
    settings = ctx.settings
    ctx.batch_agent("segments", SOURCES, runtime.process)

    @ctx.app.timer(max(settings.segment_align_wait_ms / 4000, 0.02), name="mmbee.segments.align")
    async def release_aligned() -> None:
        await runtime.work.tick()

    @ctx.app.page("/mmbee/segments/{author_id}/")
    async def segment_buffer(
        self: faust.web.View, request: faust.web.Request, author_id: str
    ) -> Any:
        return self.json(runtime.describe_author(author_id))


COMPONENT = Component(name="segments", config=config, apply=apply, codec=CODEC, register=register)
