"""A stateful agent's working set: per-key state in memory, with the events not yet stored.

An agent that stores its state less often than per event (the segment agent writes a stream
when a segment closes) keeps, per key, the events applied since the last write. They are acked
only once a write covers them, so Faust's commit never passes an event whose effect is not
stored. The working set tracks them and says which key to store next: the one whose oldest
unstored event is oldest (`checkpoint`), which bounds both the replay after a crash and the
events held unacked.

`StoredWorkingSet` adds the table and ack mechanics around it, the same for any such agent:
loading a key's row on first touch (in its event's partition of the store), writing a key and
acking what the write covers, checkpoints, dead letters, and revocation. What a row holds and
what a write publishes is the component's (`store` and `load` are its callbacks).
`AlignedWorkingSet` feeds it in event-time order across co-partitioned topics (held items, the
timer, the safety valve), as the segment agent reads frames, comments and ASR.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class E:
    ...     partition: int
    ...     pending: list = field(default_factory=list)
    ...     first_seq: int = 0
    >>> ws = WorkingSet()
    >>> e = ws.add("a1", E(partition=0))
    >>> ws.applied("a1", e, "ev1", seq=1); ws.applied("a1", e, "ev2", seq=2); ws.seq = 2
    >>> ws.pending, ws.checkpoint(limit=1)
    (2, 'a1')
    >>> ws.stored("a1", e), ws.pending
    (['ev1', 'ev2'], 0)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from faust.types import TP, EventT, StreamT

from mmbee.streams.runtime.agent import Bad, Envelope
from mmbee.streams.runtime.alignment import SourceAlignment
from mmbee.streams.runtime.context import StreamContext, in_event_context

__all__ = ["AlignedWorkingSet", "Entry", "StoredWorkingSet", "WorkingSet"]


class Entry(Protocol):
    """What the working set needs of a key's in-memory state."""

    partition: int
    pending: list[Any]  # applied events no write covers yet (unacked)
    first_seq: int  # arrival number of the oldest of them


E = TypeVar("E", bound=Entry)


class WorkingSet(Generic[E]):
    """Entries by key, the keys with unstored events (oldest first), and their count."""

    def __init__(self) -> None:
        self.entries: dict[str, E] = {}
        self.dirty: dict[str, None] = {}  # keys with pending events, oldest first
        self.seq = 0  # arrival number of the latest event (the agent counts them)
        self.pending = 0  # events applied and not stored, over all keys

    def add(self, key: str, entry: E) -> E:
        self.entries[key] = entry
        return entry

    def applied(self, key: str, entry: E, event: Any, seq: int) -> None:
        """`event` (arrival number `seq`) changed `entry`; it is acked once a write covers it."""
        if not entry.pending:  # the key's oldest unstored event
            entry.first_seq = seq
            self.dirty[key] = None
        entry.pending.append(event)
        self.pending += 1

    def stored(self, key: str, entry: E) -> list[Any]:
        """A write covered every event `entry` applied: returns them (to ack)."""
        events, entry.pending = entry.pending, []
        self.pending -= len(events)
        self.dirty.pop(key, None)
        return events

    def checkpoint(self, limit: int) -> str | None:
        """The key to store now: its oldest unstored event is `limit` events old, or more than
        `limit` events are unstored in all (None: nothing is due)."""
        if not self.dirty:
            return None
        key = next(iter(self.dirty))
        entry = self.entries[key]
        if entry.first_seq > self.seq - limit and self.pending <= limit:
            return None
        return key

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the entries of revoked partitions (their unacked events are redelivered)."""
        parts = set(partitions)
        for key in [k for k, e in self.entries.items() if e.partition in parts]:
            entry = self.entries.pop(key)
            self.pending -= len(entry.pending)
            self.dirty.pop(key, None)


class StoredWorkingSet(WorkingSet[E]):
    """A working set written to changelogged tables, with the acks that follow the writes.

    Args:
        envelope: the agent's envelope (dead letters, in-order acks, revoked partitions).
        checkpoint_events: store a key whose oldest unstored event is this many events old, or
            the oldest key while more than this many events are unstored in all.
        load: `load(key, partition)` reads the key's stored row and builds its entry (it runs
            in the event's partition of the store).
        store: `await store(key, entry, outputs)` writes the key's rows and publishes
            `outputs` (what the writes made final, e.g. closed segments); it runs in the
            event's partition of the store, and may await (a rebalance may happen meanwhile).
    """

    def __init__(
        self,
        envelope: Envelope,
        checkpoint_events: int,
        load: Callable[[str, int], E],
        store: Callable[[str, E, Sequence[Any]], Awaitable[None]],
    ) -> None:
        super().__init__()
        self.envelope = envelope
        self.checkpoint_events = checkpoint_events
        self._load = load
        self._store = store

    def get(self, key: str, event: EventT) -> E:
        """The key's entry, loaded from its stored row on first touch."""
        entry = self.entries.get(key)
        if entry is None:
            in_event_context(event)  # reads go to the event's partition of the store
            entry = self.entries[key] = self._load(key, event.message.partition)
        return entry

    async def persist(
        self, stream: StreamT, key: str, entry: E, event: EventT, outputs: Sequence[Any],
        *, keep: bool,
    ) -> None:  # fmt: skip
        """Write `entry` (in `event`'s partition), then ack every event the write covers;
        `keep`: the entry stays in memory (False: it is read again from its row when needed).
        An entry forgotten by a revocation during the write acks nothing: its events go to the
        partition's new owner."""
        in_event_context(event)
        await self._store(key, entry, outputs)
        if self.entries.get(key) is not entry:
            return
        await self.envelope.done(stream, self.stored(key, entry))
        if not keep:
            self.entries.pop(key, None)

    async def checkpoint_due(self, stream: StreamT) -> int:
        """Store (and drop from memory) the keys whose unstored events are too old or too
        many (`checkpoint`); returns how many were stored."""
        n = 0
        while (key := self.checkpoint(self.checkpoint_events)) is not None:
            entry = self.entries[key]
            await self.persist(stream, key, entry, entry.pending[-1], (), keep=False)
            n += 1
        return n

    async def finish(self, stream: StreamT, bad: Sequence[Bad], done: Sequence[EventT]) -> None:
        """Dead-letter `bad` (in order; a duplicate is only counted), then ack it and `done`
        (events finished without effect on any entry), with whatever later events of their
        partitions they held back."""
        await self.envelope.reject_all(bad)
        await self.envelope.done(stream, [ev for ev, *_ in bad] + list(done))

    def revoke(self, revoked: set[TP]) -> set[int]:
        """Forget the revoked partitions' held acks and entries (their unacked events will be
        redelivered and re-applied onto the stored rows); returns the partitions forgotten."""
        parts = self.envelope.forget(revoked)
        if parts:
            self.forget(parts)
        return parts


class AlignedWorkingSet(StoredWorkingSet[E]):
    """A stored working set fed in event-time order across co-partitioned source topics.

    Faust interleaves an agent's topics by count, not by time, so items wait in
    `SourceAlignment` until every source has passed their event time; `release` hands the
    aligned ones to `apply_ready` and then stores the keys that are due (`checkpoint_due`).
    A timer calls `tick`: a source may have gone quiet without a new batch arriving, and once
    input has stalled for `wait_s` the safety valve releases what waited that long. `lock`
    serialises batches and ticks; `stream` is the agent's stream (set by its first batch).

    Args:
        ctx: the stream context (consumer, metrics, clock).
        agent: the agent's name in metrics.
        sources: catalogue names of the co-partitioned topics.
        envelope, checkpoint_events, load, store: as for `StoredWorkingSet`.
        apply_ready: `await apply_ready(stream, [(event, item), ...])` applies aligned items.
        wait_s: the safety valve (0: no alignment, every item is applied with its batch).
    """

    def __init__(
        self, ctx: StreamContext, agent: str, sources: tuple[str, ...], envelope: Envelope,
        checkpoint_events: int, load: Callable[[str, int], E],
        store: Callable[[str, E, Sequence[Any]], Awaitable[None]],
        apply_ready: Callable[[StreamT, list[Any]], Awaitable[None]], wait_s: float,
    ) -> None:  # fmt: skip
        super().__init__(envelope, checkpoint_events, load, store)
        self.ctx, self.agent, self.wait_s = ctx, agent, wait_s
        # held (decoded, not yet applied) until every source passed their event time
        pause_at = 2 * ctx.settings.stream_batch_max
        self.alignment = SourceAlignment(ctx, agent, sources, wait_s, pause_at)
        self.lock = asyncio.Lock()
        self.stream: StreamT | None = None
        self._apply_ready = apply_ready
        self._last_batch_s = float("-inf")

    @property
    def held(self) -> int:
        """Items waiting for event-time alignment (decoded, not applied, not acked)."""
        return self.alignment.held

    def hold(self, event: EventT, source: str, ts: int, item: Any, now_s: float) -> None:
        """Hold `item` (read as `event` from `source`, event time `ts`) until it is aligned."""
        msg = event.message
        self.alignment.push(
            msg.partition, source, ts=ts, offset=msg.offset, item=(event, item), now_s=now_s
        )

    def read(self, events: Iterable[EventT]) -> None:
        """Events read with nothing to hold (dead-lettered, no speech): each still counts for
        its source's "read to its end", or a partition whose last message was one of them would
        hold its items until the valve (tests/streams/test_alignment_reads.py)."""
        for ev in events:
            msg = ev.message
            self.alignment.read(msg.partition, self.envelope.name(ev), msg.offset)

    async def batch_done(self, stream: StreamT, now_s: float) -> None:
        """A batch's items are held: apply what is aligned now (everything when `wait_s` is 0)."""
        await self.release(stream, now_s, valve=self.wait_s == 0)
        self._last_batch_s = now_s

    async def tick(self) -> None:
        """Re-check held items (run on a timer; see the class docstring)."""
        if self.stream is None or not self.held:
            return
        async with self.lock:
            now = self.ctx.monotonic()
            await self.release(self.stream, now, valve=now - self._last_batch_s >= self.wait_s)

    async def release(self, stream: StreamT, now_s: float, valve: bool) -> None:
        """Apply the aligned items (`valve`: also those held `wait_s`), store what is due.
        Items of a partition revoked while the release awaited (it pauses and resumes sources
        between partitions) are dropped: they are redelivered, and applied here they would reach
        fresh state ahead of their redelivered predecessors (tests/streams/test_workingset.py)."""
        stale = self.envelope.stale
        ready = [r for r in await self.alignment.release(now_s, valve) if not stale(r[0])]
        if ready:
            await self._apply_ready(stream, ready)
        metrics = self.ctx.metrics
        if checkpoints := await self.checkpoint_due(stream):
            metrics.count(self.agent, "checkpoints", checkpoints)
        if ready:
            metrics.observe(self.agent, 0)  # stamps the time of the latest applied event
        metrics.gauge(self.agent, "held", self.held)
        metrics.gauge(self.agent, "unpersisted", self.pending)
        metrics.gauge(self.agent, "paused_sources", len(self.alignment.paused))

    def revoke(self, revoked: set[TP]) -> set[int]:
        """`StoredWorkingSet.revoke`, and what the revoked partitions held for alignment."""
        parts = super().revoke(revoked)
        if parts:
            self.alignment.forget(parts)
            self.ctx.metrics.count(self.agent, "revocations")
        return parts
