"""The envelope's exact redelivery test for agents that store what they received.

An agent whose committed offsets can lag its state (it holds events, or a forwarder re-sends
from its own committed offset) keeps per partition a `mmbee.state.received.Received` (why it is
exact: that module) and stores it in its own table, row `~received~<p>`, after the rows it
covers and before the acks: one changelog partition keeps a prefix of its writes, so what the
stored row lists as finished is stored. A partition's next owner loads it with the partition.

Example (without a broker): see tests/streams/test_redelivery.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from faust.types import EventT, TableT

from mmbee.state.received import Received, ReceivedRows, origin_of
from mmbee.streams.runtime.context import clear_event_context, in_event_context

if TYPE_CHECKING:
    from mmbee.streams.runtime.context import StreamContext

__all__ = ["Redeliveries"]

Origin = tuple[str, int]
"""("<catalogue topic>:<partition>", offset): the message an event was first read from."""


class Redeliveries:
    """One agent's `Received` per partition of its table.

    Args:
        ctx: the stream context (topic names, metrics).
        agent: the agent's name in the duplicate count.
        table: the agent's table (raw bytes; '~' keys are no ids).
    """

    def __init__(self, ctx: StreamContext, agent: str, table: TableT) -> None:
        self.ctx, self.agent = ctx, agent
        self.rows = ReceivedRows(table)

    def load(self, partition: int) -> dict[str, Any]:
        """Load the partition's stored `Received`; returns the extra fields stored with it."""
        clear_event_context()  # the key names the partition; a batch's event may not
        return self.rows.load(partition)[1]

    def of(self, partition: int) -> Received:
        """The partition's `Received` (loaded on first use)."""
        got = self.rows.parts.get(partition)
        if got is None:
            self.load(partition)
            got = self.rows.parts[partition]
        return got

    def origin(self, ev: EventT, model: Any) -> Origin | None:
        """The origin of `ev` (decoded as `model`, not a mark), or None when it is a redelivery:
        finished before, counted as a duplicate; the caller acks it and applies nothing."""
        msg = ev.message
        topic = self.ctx.catalogue_name(msg.topic)
        origin = origin_of(model, topic, msg.partition, msg.offset)
        if self.of(msg.partition).redelivered(*origin):
            self.ctx.metrics.duplicate(self.agent)
            return None
        return origin

    def take(self, partition: int, origin: Origin) -> None:
        """An event of `partition` is being handled (`origin` gave it)."""
        self.of(partition).take(*origin)

    def finish(self, partition: int, origin: Origin) -> None:
        """An event of `partition` is done with: applied, or refused with a reason."""
        self.of(partition).finish(*origin)

    def write(self, ev: EventT, **extra: Any) -> None:
        """Store the `Received` of `ev`'s partition, and `extra`, in `ev`'s event context (after
        the rows it covers, before their acks)."""
        in_event_context(ev)
        self.rows.write(ev.message.partition, **extra)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop revoked partitions (the next owner loads what was stored)."""
        self.rows.forget(partitions)
