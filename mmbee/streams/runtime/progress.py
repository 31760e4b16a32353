"""How far a worker has read its partitions: the one "caught up" notion of every agent, and the
progress marks that carry event time across a repartition hop.

Event-time alignment needs it: a source that has delivered everything it holds must not hold
back the others' frontier. Kafka tells the consumer a partition's high watermark with each
fetch; Faust remembers the next offset it will read.

The answer is as of the last fetch response, and a response can be one fetch out of date in a
way that matters: a long-poll fetch answered by a producer's first records carries, for the
topics that producer has not reached yet, the high watermarks of that moment. So "caught up"
never means idle at once: the alignment takes a source as idle only for events held
`Settings.align_idle_ms` (runtime/alignment.py, the joiner; docs/streams.md).

A topic re-keyed onto another (gifts and comments by viewer onto `user.activity`, watch enters
by streamer onto `author.activity`) loses its source partitions' event-time progress; `Progress`
keeps it per source partition and sends it on as *marks* (`mmbee.state.align.frontier_of` reads
them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from mmbee.schemas.serving import AuthorActivity, UserActivity
from mmbee.schemas.types import TS_MIN_MS
from mmbee.streams.publish import FaustPublisher
from mmbee.streams.runtime.compat import read_offsets

if TYPE_CHECKING:
    from mmbee.streams.runtime.context import StreamContext

__all__ = ["Progress", "assigned", "caught_up", "send_partition"]


def caught_up(consumer: Any, tp: Any, seen_offset: int | None) -> bool | None:
    """Whether `consumer` has nothing more to deliver of `tp` now: the agent saw the offset just
    below the high watermark (`seen_offset`), or, before it saw anything, the consumer starts at
    the high watermark. None when unknown (no fetch yet, no consumer under `test_context`)."""
    try:
        hw = consumer.highwater(tp)
    except (ConsumerNotStarted, AssertionError, KeyError, AttributeError):
        return None
    if hw is None:
        return None
    if seen_offset is not None:
        return bool(seen_offset + 1 >= hw)
    start = read_offsets(consumer).get(tp)
    return hw == 0 or (start is not None and start >= hw)


def assigned(ctx: StreamContext, topics: set[str]) -> set[TP]:
    """The active partitions of (full) `topics` assigned to this worker (empty: unknown)."""
    try:
        actives = ctx.app.assignor.assigned_actives()
    except AttributeError:
        return set()
    return {tp for tp in actives if tp.topic in topics}


async def send_partition(
    ctx: StreamContext, name: str, partition: int, value: bytes, key: bytes | None = None
) -> None:
    """Send a message to one partition of catalogue topic `name`. Outside a worker (a memory
    publisher under test) the key names the partition instead."""
    full = ctx.topic_name(name)
    if isinstance(ctx.publisher, FaustPublisher):
        topic = ctx.app.topic(full, key_serializer="raw", value_serializer="raw")
        await topic.send(key=key, value=value, partition=partition)
    else:
        await ctx.publisher.send(full, f"~partition:{partition}".encode(), value)


class Progress:
    """Per source partition this worker reads: the largest event time seen, and the marks
    ("topic:partition" -> that time, or None when the partition is read to its end, or
    `TS_MIN_MS` while it has records waiting and none was seen yet: a partition left out of a
    mark keeps the receiver's earlier value, which may be a stale None).

    Args:
        ctx: the stream context.
        names: catalogue names of the source topics.
    """

    def __init__(self, ctx: StreamContext, names: tuple[str, ...]) -> None:
        self.ctx = ctx
        self.names = {ctx.topic_name(n): n for n in names}
        self.ts: dict[TP, int] = {}
        self.offsets: dict[TP, int] = {}
        self._last: dict[str, int | None] = {}
        self._sent_s = float("-inf")

    def seen(self, tp: TP, offset: int, ts_ms: int | None) -> None:
        if offset > self.offsets.get(tp, -1):
            self.offsets[tp] = offset
        if ts_ms is not None and ts_ms > self.ts.get(tp, 0):
            self.ts[tp] = ts_ms

    def idle(self, tp: TP) -> bool | None:
        return caught_up(self.ctx.app.consumer, tp, self.offsets.get(tp))

    def forget(self, revoked: set[TP]) -> None:
        """Forget revoked partitions: whoever reads them next starts at the committed offset,
        behind what was seen here, and must not mark (or judge idle) by the old progress."""
        for tp in revoked:
            self.ts.pop(tp, None)
            self.offsets.pop(tp, None)

    def marks(self) -> dict[str, int | None]:
        tps = assigned(self.ctx, set(self.names)) or set(self.offsets)
        out: dict[str, int | None] = {}
        for tp in sorted(tps):
            key = f"{self.names[tp.topic]}:{tp.partition}"
            if self.idle(tp):
                out[key] = None
            elif tp in self.ts:
                out[key] = self.ts[tp]
            elif tp in self.offsets or self.idle(tp) is False:
                out[key] = TS_MIN_MS  # records wait, their time unknown: hold the others back
        return out

    async def broadcast(
        self, name: str, mark: type[UserActivity] | type[AuthorActivity], now_s: float
    ) -> bool:
        """Send the marks, as a `mark` message, to every partition of catalogue topic `name`
        when they changed (`changed`); True when sent."""
        marks = self.changed(now_s)
        if marks is None:
            return False
        value = self.ctx.codec.encode(mark(kind="mark", marks=marks))
        for p in range(self.ctx.settings.partitions):
            await send_partition(self.ctx, name, p, value)
        return True

    def changed(self, now_s: float) -> dict[str, int | None] | None:
        """The marks when they changed since the last call that returned them (or a second
        passed); else None."""
        marks = self.marks()
        if not marks or (marks == self._last and now_s - self._sent_s < 1.0):
            return None
        self._last, self._sent_s = marks, now_s
        return marks
