"""What an agent received, per origin partition: the exact test for a redelivery.

After a worker dies, a partition's next owner re-reads its sources from committed offsets that
can lag hours of event time behind the state it recovered (the joiner acks in arrival order and
holds events for alignment; a message of a topic several agents read commits only when all
acked). Two kinds of redelivery reach the state then: (1) the same message again (same topic,
partition, offset), and (2) a *re-forwarded* copy under a new offset: the forwarder re-reads
`live.gifts`/`live.comments` (the joiner `live.watch`) from its own committed offset and sends
the old events again onto `user.activity` (`author.activity`). Event ids alone cannot tell them
from genuinely late events: the rows forget ids a horizon behind the watermark.

So every forwarded event names its *origin*, the message it was read from ("live.gifts:3" and
its offset; `UserActivity.source`/`source_offset`), and a directly read event is its own origin.
`Received` keeps, per origin, the highest offset taken (`high`) and the offsets taken but not
finished yet (`open`). An offset at or below `high` and not open was finished before: a
redelivery. This is exact because the offsets of one origin reach a receiving partition in
increasing order:
- a source partition read directly is delivered in offset order;
- one origin partition is forwarded by one consumer (its owner) at a time, in offset order, and
  Kafka keeps one producer's order per partition (aiokafka mutes a partition while a batch to
  it is in flight, so no retry reorders);
- a re-forward after a takeover starts again from the origin's committed offset, and everything
  below what the earlier owner forwarded was forwarded (in order) before: offsets already
  received. Two owners overlapping for a moment each send an increasing run that begins at or
  below what was received, so no offset at or below `high` was skipped unless its event was
  never forwarded at all (undecodable: no forwarder sends it);
- an event refused before it is taken (undecodable, a wrong key) is dead-lettered and acked
  before a later offset of its origin is taken, so it was finished too.
A genuinely late event has a new origin offset (above `high`): it is judged by the state (and
dead-lettered `late` where it is). The agent stores its `Received` beside its rows, after them
(one changelog partition: a crash keeps a prefix, so what the stored row lists is stored).

Example:
    >>> r = Received()
    >>> r.take("live.gifts:3", 7); r.take("live.gifts:3", 8); r.finish("live.gifts:3", 8)
    >>> r.redelivered("live.gifts:3", 8), r.redelivered("live.gifts:3", 7)
    (True, False)
    >>> Received.loads(r.dumps()).redelivered("live.gifts:3", 9)
    False
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["Received", "ReceivedRows", "origin_of", "received_key"]


def origin_of(model: Any, topic: str, partition: int, offset: int) -> tuple[str, int]:
    """The origin of `model`, read at `offset` of catalogue topic `topic`'s `partition`: its
    `source`/`source_offset` when it was forwarded with them, else that message itself."""
    source, at = getattr(model, "source", None), getattr(model, "source_offset", None)
    if source is not None and at is not None:
        return source, at
    return f"{topic}:{partition}", offset


def received_key(partition: int) -> bytes:
    """The table key of a partition's stored `Received` ('~' is in no id)."""
    return f"~received~{partition}".encode()


class Received:
    """Per origin ("topic:partition"), the highest offset taken and those still open."""

    def __init__(self) -> None:
        self.high: dict[str, int] = {}
        self.open: dict[str, set[int]] = {}

    def redelivered(self, origin: str, offset: int) -> bool:
        """Whether `offset` of `origin` was taken and finished before (skip it)."""
        return offset <= self.high.get(origin, -1) and offset not in self.open.get(origin, ())

    def take(self, origin: str, offset: int) -> None:
        """`offset` of `origin` is being handled (it was not `redelivered`)."""
        high = self.high.get(origin, -1)
        if offset <= high and offset not in self.open.get(origin, ()):
            raise ValueError(f"{origin}@{offset} was finished before (high {high})")
        self.high[origin] = max(high, offset)
        self.open.setdefault(origin, set()).add(offset)

    def finish(self, origin: str, offset: int) -> None:
        """`offset` of `origin` is done with (applied, or refused with a reason)."""
        got = self.open.get(origin)
        if got is not None:
            got.discard(offset)
            if not got:
                del self.open[origin]

    def to_json(self) -> dict[str, list[Any]]:
        """{origin: [high, [[first, last], ...]]}: the open offsets as sorted runs (the events a
        partition holds for alignment are mostly consecutive offsets)."""
        return {o: [h, _runs(self.open.get(o, ()))] for o, h in sorted(self.high.items())}

    @classmethod
    def from_json(cls, v: dict[str, list[Any]]) -> Received:
        r = cls()
        for origin, (high, runs) in v.items():
            r.high[origin] = int(high)
            if runs:
                r.open[origin] = {o for a, b in runs for o in range(int(a), int(b) + 1)}
        return r

    def dumps(self) -> bytes:
        """Compact JSON."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes) -> Received:
        return cls.from_json(json.loads(raw))


def _runs(offsets: Iterable[int]) -> list[list[int]]:
    """Sorted offsets as [first, last] runs of consecutive ones."""
    out: list[list[int]] = []
    for o in sorted(offsets):
        if out and out[-1][1] == o - 1:
            out[-1][1] = o
        else:
            out.append([o, o])
    return out


class Store(Protocol):
    """A table of raw bytes (a Faust table: reads and writes in an event of the partition)."""

    def get(self, key: bytes) -> bytes | None: ...
    def __setitem__(self, key: bytes, value: bytes) -> None: ...


class ReceivedRows:
    """An agent's `Received` per partition, stored in its table as row `~received~<p>` with
    the partition's extra fields (the joiner's watermark), loaded on first use, forgotten on
    revocation (the next owner loads what was stored)."""

    def __init__(self, table: Store) -> None:
        self.table = table
        self.parts: dict[int, Received] = {}

    def load(self, partition: int) -> tuple[Received, dict[str, Any]]:
        """The partition's stored `Received` (now in use) and its extra fields."""
        raw = self.table.get(received_key(partition))
        doc = {} if raw is None else json.loads(raw)
        got = self.parts[partition] = Received.from_json(doc.pop("received", {}))
        return got, doc

    def of(self, partition: int) -> Received:
        """The partition's `Received` (loaded on first use)."""
        got = self.parts.get(partition)
        return got if got is not None else self.load(partition)[0]

    def write(self, partition: int, **extra: Any) -> None:
        """Store the partition's `Received` and `extra` (call in an event of the partition,
        after the rows it covers)."""
        doc = {"received": self.of(partition).to_json(), **extra}
        self.table[received_key(partition)] = json.dumps(doc, separators=(",", ":")).encode()

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop revoked partitions (their rows stay in the table)."""
        for p in partitions:
            self.parts.pop(p, None)
