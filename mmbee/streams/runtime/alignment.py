"""Event-time alignment of co-partitioned source topics, on a running consumer.

`mmbee.state.align.Aligner` merges one partition's sources in event-time order once each has
passed an item's time. What it cannot know by itself comes from the consumer, and lives here:

- a source that has nothing more to deliver now (read to its high watermark,
  `runtime.progress.caught_up`) is *quiet* and does not hold the others back, but only for
  items held `Settings.align_idle_ms` of wall time: the high watermark is that of the last
  fetch, and a fetch answered by a replay's first records says the topics it has not reached
  yet are empty (docs/streams.md, "Event-time alignment");
- a source that runs far ahead in event time is paused at the Kafka client until the items it
  piled up have drained (`compat.pause_fetching`), so a replay's memory stays bounded;
- revoked partitions are forgotten (their events are redelivered).

`SourceAlignment` does this for an `Aligner` (the segment agent's topics, each its own time);
`MarkedAlignment` for a `MarkAligner` (the joiner's `live.watch` + `user.activity`, the latter
timed by progress marks; `mmbee.state.align` says why the two aligners differ). Both use the
one idle rule (`mmbee.state.align.IdleRule`) and the one "caught up" (`runtime.progress`).

Example:
    >>> from mmbee.state.align import Aligner
    >>> Aligner(wait_s=0.5, sources=3).sources
    3
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from faust.types import TP

from mmbee.schemas.serving import UserActivity
from mmbee.state.align import Aligner, MarkAligner, Source
from mmbee.streams.runtime.compat import pause_fetching
from mmbee.streams.runtime.progress import caught_up

if TYPE_CHECKING:
    from mmbee.streams.runtime.context import StreamContext

__all__ = ["MarkedAlignment", "SourceAlignment"]


class SourceAlignment:
    """One `Aligner` per partition of `sources`, with quiet sources and backpressure.

    Args:
        ctx: the stream context (consumer, metrics).
        agent: the agent's name in metrics.
        sources: catalogue names of the co-partitioned topics, in a fixed order.
        wait_s: the aligner's safety valve (0: no alignment, every item is ready at once).
        pause_at: items held from one source above which that source is paused.
        idle_s: wall time an item waits before quiet sources stop holding it back (None:
            `Settings.align_idle_ms`).
    """

    def __init__(
        self, ctx: StreamContext, agent: str, sources: tuple[str, ...], wait_s: float,
        pause_at: int, idle_s: float | None = None,
    ) -> None:  # fmt: skip
        self.ctx = ctx
        self.idle_s = ctx.settings.align_idle_ms / 1000 if idle_s is None else idle_s
        self.agent = agent
        self.sources = sources
        self.wait_s = wait_s
        self.pause_at = pause_at
        self.aligners: dict[int, Aligner] = {}  # partition -> held (decoded, not yet applied)
        self.paused: set[TP] = set()
        self._index = {name: i for i, name in enumerate(sources)}
        self._tp_cache: dict[int, tuple[TP, ...]] = {}

    @property
    def held(self) -> int:
        """Items waiting for alignment (decoded, not applied, not acked)."""
        return sum(len(a) for a in self.aligners.values())

    def push(
        self, partition: int, source: str, *, ts: int, offset: int, item: Any, now_s: float
    ) -> None:
        """Hold `item` of `source` (at `offset` of `partition`) until its time is aligned."""
        self._aligner(partition).push(
            ts=ts, source=self._index[source], offset=offset, item=item, now_s=now_s
        )

    def read(self, partition: int, source: str, offset: int) -> None:
        """`source` of `partition` was read at `offset` with nothing to hold (dead-lettered, no
        speech): it counts for the source's "read to its end" all the same."""
        self._aligner(partition).read(self._index[source], offset)

    def _aligner(self, partition: int) -> Aligner:
        aligner = self.aligners.get(partition)
        if aligner is None:
            aligner = self.aligners[partition] = Aligner(
                self.wait_s, len(self.sources), self.idle_s
            )
        return aligner

    async def release(self, now_s: float, valve: bool) -> list[Any]:
        """The items every partition can apply now, in event-time order per partition
        (`valve`: also those that waited `wait_s`); pauses and resumes sources on the way."""
        ready: list[Any] = []
        for partition, aligner in list(self.aligners.items()):
            if len(aligner):
                ready += aligner.ready(now_s, self._quiet(partition, aligner), valve)
            await self._backpressure(partition, aligner)
        return ready

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop what revoked partitions held (it will be redelivered)."""
        parts = set(partitions)
        for p in parts:
            self.aligners.pop(p, None)
        self.paused = {tp for tp in self.paused if tp.partition not in parts}

    def _tps(self, partition: int) -> tuple[TP, ...]:
        tps = self._tp_cache.get(partition)
        if tps is None:
            tps = self._tp_cache[partition] = tuple(
                TP(self.ctx.topic_name(name), partition) for name in self.sources
            )
        return tps

    def _quiet(self, partition: int, aligner: Aligner) -> set[int]:
        """Sources of `partition` with nothing more to deliver now; unknown (no fetch yet, no
        consumer under test_context): not quiet."""
        consumer = self.ctx.app.consumer
        return {
            i
            for i, tp in enumerate(self._tps(partition))
            if caught_up(consumer, tp, aligner.last_offset(i))
        }

    async def _backpressure(self, partition: int, aligner: Aligner) -> None:
        """Pause fetching a source that has run far ahead of the others in event time (its
        items pile up waiting for the frontier); resume it once they drained."""
        consumer = self.ctx.app.consumer
        for i, tp in enumerate(self._tps(partition)):
            held = aligner.held(i)
            if tp not in self.paused and held > self.pause_at:
                if await pause_fetching(consumer, tp, paused=True):
                    self.paused.add(tp)
                    self.ctx.metrics.count(self.agent, "source_pauses")
            elif tp in self.paused and held <= self.pause_at // 2:
                self.paused.discard(tp)
                await pause_fetching(consumer, tp, paused=False)


class MarkedAlignment:
    """One `MarkAligner` per partition of a `live.watch`-like topic and a marked one, with the
    consumer's "read to its end" for their quiet rule (no backpressure: `user.activity` items
    wait only for marks, which the forwarders send every `joiner_mark_interval_s`).

    Args:
        ctx: the stream context (consumer, metrics).
        agent: the agent's name in metrics.
        sources: catalogue names of the timed topic and the marked one.
        expected: the mark keys every partition must have heard before its frontier is known.
        wait_s: the aligner's safety valve (applies once the input stalled).
        idle_s: as `SourceAlignment`'s.
    """

    def __init__(
        self, ctx: StreamContext, agent: str, sources: tuple[str, str], expected: set[str],
        wait_s: float, idle_s: float | None = None,
    ) -> None:  # fmt: skip
        self.ctx = ctx
        self.agent = agent
        self.topics = {"watch": ctx.topic_name(sources[0]), "activity": ctx.topic_name(sources[1])}
        self.expected = expected
        self.wait_s = wait_s
        self.idle_s = ctx.settings.align_idle_ms / 1000 if idle_s is None else idle_s
        self.aligners: dict[int, MarkAligner] = {}
        self.offsets: dict[tuple[int, Source], int] = {}  # largest offset read, per source

    @property
    def held(self) -> int:
        """Items waiting for alignment (decoded, not applied, not acked)."""
        return sum(len(a) for a in self.aligners.values())

    def aligner(self, partition: int) -> MarkAligner:
        """The aligner of `partition` (made on first use)."""
        got = self.aligners.get(partition)
        if got is None:
            got = self.aligners[partition] = MarkAligner(self.expected, self.wait_s, self.idle_s)
        return got

    def seen(self, partition: int, source: Source, offset: int) -> None:
        """`source` of `partition` was read at `offset` (for its "read to its end")."""
        key = (partition, source)
        if offset > self.offsets.get(key, -1):
            self.offsets[key] = offset

    def absorb(self, partition: int, source: Source, offset: int, item: Any) -> bool:
        """Take what a decoded item of the marked source says of its progress: its offset
        (before the key check: a read is a read) and, for a mark, the marks (True: nothing else
        to do with it)."""
        if source == "watch":
            return False
        self.seen(partition, source, offset)
        if isinstance(item, UserActivity) and item.kind == "mark":
            self.aligner(partition).mark(item.marks)  # marks go to every partition, unkeyed
            return True
        return False

    def quiet(self, partition: int) -> Callable[[Source], bool | None]:
        """Whether a source of `partition` is read to its end, as of the last fetch."""
        consumer, topics, offsets = self.ctx.app.consumer, self.topics, self.offsets
        return lambda s: caught_up(consumer, TP(topics[s], partition), offsets.get((partition, s)))

    def frontier(self, partition: int) -> float | None:
        """Event time every source of `partition` has passed, quiet ones aside (None: unknown)."""
        return self.aligner(partition).frontier(self.quiet(partition))

    def release(self, partition: int, now_s: float, stalled: bool) -> list[Any]:
        """The items `partition` can apply now, in order (`stalled`: the input has stalled, so
        the valve may release everything held)."""
        ready, valve = self.aligner(partition).ready(now_s, stalled, self.quiet(partition))
        if valve:
            self.ctx.metrics.count(self.agent, "valve_releases")
        return ready

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop what revoked partitions held, their marks and offsets (redelivered)."""
        parts = set(partitions)
        for p in parts:
            self.aligners.pop(p, None)
        self.offsets = {k: v for k, v in self.offsets.items() if k[0] not in parts}
