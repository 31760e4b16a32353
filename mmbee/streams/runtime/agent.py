"""The envelope every stateful agent shares: what happens to a message around a component's logic.

A component decides what an event means for its state. Everything else an agent does with a
Kafka message is the same for all of them, and lives here once:

- **stale generation**: a message fetched before the latest rebalance is skipped; it will be
  redelivered to whoever owns its partition now (`live`, `stale`);
- **decoding and the key check**: raw bytes through the one codec, then the message key against
  the topic's key field (`decode`); a catalogue topic is keyed by one field of its events, and a
  message under another key would land its state on the wrong partition;
- **dead letters with a reason**, and **duplicates** counted, never dead-lettered: a redelivered
  event whose id was applied already is the normal at-least-once path after a rebalance or a
  restart, not poison (`reject`);
- **in-order acks**: events leave as a contiguous prefix of each partition's arrival order, so
  Faust's commit never passes an event whose effect is not stored (`track`, `done`, `forget`;
  `mmbee.streams.acks` says why Faust needs this).

Example:
    >>> from mmbee.streams.codec import Rejected
from mmbee.streams.runtime.component import Reject
    >>> Rejected("decode_error", "not JSON").reason
    'decode_error'
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from faust.types import TP, EventT, StreamT

from mmbee.schemas.events import DeadLetterReason
from mmbee.schemas.topics import TOPICS
from mmbee.streams.acks import AckSequencer
from mmbee.streams.codec import Rejected

if TYPE_CHECKING:
    from mmbee.streams.runtime.component import Reject
    from mmbee.streams.runtime.context import StreamContext

__all__ = ["Bad", "Envelope", "Taken"]

Bad = tuple[EventT, DeadLetterReason, str, "str | None"]
"""A rejected event: (event, dead-letter reason, detail, its event_id if known)."""
Taken = tuple[EventT, str, Any]
"""A decoded event: (event, catalogue name of its topic, its model)."""


class Envelope:
    """One agent's envelope over its source topics.

    Args:
        ctx: the stream context (codec, dead-letter sink, metrics).
        agent: the agent's name in metrics and dead letters.
        sources: catalogue names of the topics the agent reads, or {full topic name: catalogue
            name of its schema} for topics outside the catalogue (Faust-internal ones).
        key_required: a message without a key is refused too (topics whose producers always
            key; elsewhere a missing key is accepted and only a wrong one refused).
    """

    def __init__(
        self,
        ctx: StreamContext,
        agent: str,
        sources: Iterable[str] | Mapping[str, str],
        *,
        key_required: bool = False,
    ) -> None:
        self.ctx = ctx
        self.agent = agent
        self.sources = (
            dict(sources)
            if isinstance(sources, Mapping)
            else {ctx.topic_name(n): n for n in sources}
        )
        self.key_required = key_required
        self.acks = AckSequencer()

    # --- generations ------------------------------------------------------------------------
    def stale(self, ev: EventT, generation: int | None = None) -> bool:
        """Whether `ev` was fetched before the latest rebalance (it will be redelivered)."""
        gen = ev.message.generation_id
        if generation is None:
            generation = self.ctx.app.consumer_generation_id
        return gen is not None and gen != generation

    def live(self, events: Iterable[EventT]) -> list[EventT]:
        """The events of the current consumer generation."""
        generation = self.ctx.app.consumer_generation_id
        return [ev for ev in events if ev.message.generation_id in (None, generation)]

    def moved(self, generation: int) -> bool:
        """Whether a rebalance happened since `generation` was read (state may be forgotten)."""
        return bool(self.ctx.app.consumer_generation_id != generation)

    # --- decoding -----------------------------------------------------------------------------
    def name(self, ev: EventT) -> str:
        """The catalogue name of the topic `ev` came from."""
        return self.sources[ev.message.topic]

    def decode(self, ev: EventT, *, check_key: bool = True) -> Any:
        """The event as its topic's model, or `Rejected` with the reason (never raises)."""
        name = self.sources[ev.message.topic]
        decoded = self.ctx.codec.decode_topic(name, ev.value)
        if check_key and type(decoded) is not Rejected:
            wrong = self.key_problem(ev, name, decoded)
            if wrong is not None:
                return wrong
        return decoded

    def key_problem(self, ev: EventT, name: str, model: Any) -> Rejected | None:
        """`Rejected` when the message key is not the key field of `model` on topic `name`."""
        want = self.ctx.codec.key_of(name, model)
        if want is None or ev.key == want or (ev.key is None and not self.key_required):
            return None
        field = TOPICS[name].key
        return Rejected(
            "validation_error",
            f"message key {ev.key!r} is not the event's {field} {getattr(model, field)!r} "
            f"({name} is keyed by {field})",
            getattr(model, "event_id", None),
        )

    def take(self, events: Iterable[EventT], generation: int) -> tuple[list[Bad], list[Taken]]:
        """A batch through the envelope, without awaiting: events of older generations are
        skipped, the rest held for in-order acks and decoded (key checked). Returns the
        rejected ones and (event, catalogue name, model) of the others, in arrival order."""
        sources, codec, track = self.sources, self.ctx.codec, self.acks.track
        bad: list[Bad] = []
        taken: list[Taken] = []
        for ev in events:
            msg = ev.message
            gen = msg.generation_id
            if gen is not None and gen != generation:
                continue  # fetched before the latest rebalance: it will be redelivered
            track(msg.tp, ev)
            name = sources[msg.topic]
            decoded = codec.decode_topic(name, ev.value)
            if type(decoded) is not Rejected:
                decoded = self.key_problem(ev, name, decoded) or decoded
            if type(decoded) is Rejected:
                bad.append((ev, decoded.reason, decoded.detail, decoded.event_id))
            else:
                taken.append((ev, name, decoded))
        return bad, taken

    # --- dead letters and duplicates --------------------------------------------------------
    async def reject(
        self, ev: EventT, reason: DeadLetterReason, detail: str, event_id: str | None = None
    ) -> None:
        """Dead-letter `ev` with a reason; a duplicate is counted instead."""
        if reason == "duplicate":
            self.ctx.metrics.duplicate(self.agent)
            return
        msg = ev.message
        await self.ctx.dlq.send(
            ev.value if isinstance(ev.value, bytes) else None,
            source_topic=msg.topic,
            agent=self.agent,
            reason=reason,
            detail=detail,
            partition=msg.partition,
            offset=msg.offset,
            event_id=event_id,
        )

    async def rejected(self, ev: EventT, why: Rejected) -> None:
        """Dead-letter `ev` for what the codec (or the key check) found."""
        await self.reject(ev, why.reason, why.detail, why.event_id)

    async def reject_step(self, ev: EventT, rejects: Iterable[Reject]) -> None:
        """Dead-letter (or, a `duplicate`, count) each reject a component's step returned for
        `ev` (`mmbee.streams.runtime.component.Step.rejects`)."""
        for r in rejects:
            await self.reject(ev, cast(DeadLetterReason, r.reason), r.detail, r.event_id)

    async def reject_all(self, bad: Sequence[Bad]) -> None:
        """Dead-letter each of `bad`, in order."""
        for ev, reason, detail, event_id in bad:
            await self.reject(ev, reason, detail, event_id)

    # --- in-order acks --------------------------------------------------------------------------
    def track(self, ev: EventT) -> None:
        """Hold `ev` for an in-order ack (call in arrival order)."""
        self.acks.track(ev.message.tp, ev)

    async def done(self, stream: StreamT, events: Iterable[EventT]) -> None:
        """Mark `events` finished and ack whatever that releases, in arrival order. Events of
        partitions revoked while the caller awaited are skipped: the new owner gets them again
        (without this, a rebalance during a table write or a dead letter crashed the agent:
        `KeyError: ... is not tracked`, found by bench/chaos.py)."""
        finished = [(ev.message.tp, ev) for ev in events]
        for ready in self.acks.done_many(finished, forgotten=True):
            await stream.ack(ready)

    def owned(self, revoked: Iterable[TP]) -> set[TP]:
        """The revoked partitions of this agent's sources."""
        return {tp for tp in revoked if tp.topic in self.sources}

    def forget(self, revoked: Iterable[TP]) -> set[int]:
        """Drop the held acks of revoked source partitions (their events are redelivered);
        returns the partition numbers revoked."""
        mine = self.owned(revoked)
        self.acks.forget(cast("set[Hashable]", mine))
        return {tp.partition for tp in mine}
