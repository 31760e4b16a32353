"""Component `joiner`: training examples from the stream, point in time, same code as serving.

Three agents (docs/serving.md has the picture), one file each, registered together:

- `joiner_forward` (here) over `live.gifts` + `live.comments` (key author): re-keys every gift
  and comment by its viewer onto `user.activity` (the pure step `forward`, with the origin of
  each, `source`/`source_offset`: a re-forward is told apart, `mmbee.state.received`), and
  every `joiner_mark_interval_s` sends each `user.activity` partition a *mark*: per source partition
  it owns, the largest event time forwarded (None when the partition has nothing waiting; the
  least valid time when it has records waiting but forwarded none yet;
  `mmbee.streams.runtime.progress.Progress`). Marks carry the event-time progress of the
  author-partitioned topics across the repartition hop.
- `joiner` (`components/users.py`) over `live.watch` + `user.activity` (key user): aligns them
  by event time, applies them to the user rows, and emits each decided example on
  `train.examples` once its streamer side is complete (`components/examples.py`).
- `authors` (`components/authors.py`) over `author.activity` + `live.gifts` (key author): the
  streamer's time-indexed counters, published to the compacted `author.state`.

Bad input (undecodable, invalid, a key that is not the partitioning field) goes to the DLQ,
and so do events too late to apply (`late`), each counted. A redelivered event whose id was
applied already changes nothing and is acked and counted (`duplicates`), not dead-lettered.

Example:
    >>> from mmbee.schemas import GiftEvent
    >>> g = GiftEvent(event_id="g1", ts_ms=1_700_000_000_000, user_id="u1", author_id="a1",
    ...               live_id="l1", gift_value=5.0)
    >>> step = forward(joiner_settings(Settings()), None, Read(g, "live.gifts:3", 42))
    >>> act = step.outputs[0]
    >>> act.kind, act.user_id, act.source, act.source_offset, step.state
    ('gift', 'u1', 'live.gifts:3', 42, None)
"""

from __future__ import annotations

from dataclasses import dataclass

from faust.types import EventT, StreamT

from mmbee.schemas.events import CommentEvent, GiftEvent
from mmbee.schemas.serving import UserActivity
from mmbee.settings import Settings
from mmbee.state.users import JoinerConfig
from mmbee.streams.codec import Rejected
from mmbee.streams.components import authors, users
from mmbee.streams.components.authors import AuthorConfig, author_config
from mmbee.streams.components.users import MARK_SOURCES, joiner_config
from mmbee.streams.runtime.agent import Envelope
from mmbee.streams.runtime.component import Component, Step
from mmbee.streams.runtime.context import StreamContext
from mmbee.streams.runtime.progress import Progress

__all__ = [
    "AGENT_FORWARD",
    "COMPONENT",
    "PARTS",
    "ForwardRuntime",
    "JoinerSettings",
    "Read",
    "forward",
    "joiner_settings",
    "register",
]

AGENT_FORWARD = "joiner_forward"


@dataclass(frozen=True)
class JoinerSettings:
    """Component `joiner`'s frozen config: its parts' and the forwarder's mark interval."""

    users: JoinerConfig
    authors: AuthorConfig
    mark_interval_s: float


def joiner_settings(settings: Settings) -> JoinerSettings:
    """The config of component `joiner` (the forwarder's step needs none of it)."""
    return JoinerSettings(
        users=joiner_config(settings),
        authors=author_config(settings),
        mark_interval_s=settings.joiner_mark_interval_s,
    )


@dataclass(frozen=True)
class Read:
    """A gift or comment as read: the event, and its origin, the message it was read from
    (`source` "live.gifts:3", `offset`): the joiner tells a re-forward by it."""

    event: GiftEvent | CommentEvent
    source: str
    offset: int


def forward(config: JoinerSettings, state: None, item: Read) -> Step[None, UserActivity]:
    """A gift or comment as the `user.activity` message that carries it, with its origin, to its
    viewer's partition (stateless: the marks are the runtime's, they follow the consumer)."""
    ev = item.event
    act = UserActivity.model_construct(
        kind="gift" if isinstance(ev, GiftEvent) else "comment",
        event_id=ev.event_id,
        ts_ms=ev.ts_ms,
        user_id=ev.user_id,
        author_id=ev.author_id,
        live_id=ev.live_id,
        gift_value=ev.gift_value if isinstance(ev, GiftEvent) else None,
        marks={},
        source=item.source,
        source_offset=item.offset,
    )
    return Step(state, outputs=(act,))


class ForwardRuntime:
    """`live.gifts` / `live.comments` -> `user.activity`, plus progress marks.

    Args:
        ctx: the stream context.
    """

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.config = joiner_settings(ctx.settings)
        self.progress = Progress(ctx, MARK_SOURCES)
        self.envelope = Envelope(ctx, AGENT_FORWARD, MARK_SOURCES)

    async def forward(self, ev: EventT) -> None:
        """Re-key one gift or comment by its viewer. Its offset counts as seen (for the marks)
        only once it is sent: the marks timer runs while the send awaits the producer, and a
        mark that called the partition idle (read to its end) before its last forward was sent
        could reach `user.activity` ahead of it, letting the joiner decide impressions before
        that gift or comment arrived (tests/streams/test_marks.py)."""
        ctx, metrics = self.ctx, self.ctx.metrics
        msg = ev.message
        decoded = self.envelope.decode(ev)
        if type(decoded) is Rejected:
            await self.envelope.rejected(ev, decoded)
            self.progress.seen(msg.tp, msg.offset, None)
        else:
            assert isinstance(decoded, GiftEvent | CommentEvent)
            read = Read(decoded, f"{self.envelope.name(ev)}:{msg.partition}", msg.offset)
            for act in forward(self.config, None, read).outputs:
                await ctx.publish("user.activity", decoded.user_id.encode(), ctx.codec.encode(act))
            self.progress.seen(msg.tp, msg.offset, decoded.ts_ms)
            metrics.count(AGENT_FORWARD, "forwarded")
        metrics.count(AGENT_FORWARD, "processed")

    async def tick(self, now_s: float) -> bool:
        """Send the marks to every `user.activity` partition when they changed (and at least
        every second); True when sent."""
        sent = await self.progress.broadcast("user.activity", UserActivity, now_s)
        if sent:
            self.ctx.metrics.count(AGENT_FORWARD, "marks_sent")
        return sent


def register(ctx: StreamContext) -> None:
    """Component `joiner`: the forwarder here, then the joiner agent (`users`) and the author
    agent (`authors`), with their tables, timers and `/mmbee/joiner/`."""
    runtime = ForwardRuntime(ctx)
    ctx.runtimes[AGENT_FORWARD] = runtime
    ctx.on_partitions_revoked(runtime.progress.forget)

    async def joiner_forward(stream: StreamT) -> None:
        async for ev in stream.events():
            await runtime.forward(ev)

    ctx.app.agent(ctx.topic(*MARK_SOURCES), name="mmbee.joiner_forward")(joiner_forward)

    @ctx.app.timer(runtime.config.mark_interval_s, name="mmbee.joiner.marks")
    async def send_marks() -> None:
        await runtime.tick(ctx.monotonic())

    for part in PARTS:
        part.register(ctx)


PARTS = (users.COMPONENT, authors.COMPONENT)
"""The components `joiner` registers after its forwarder (they have no name of their own in
`Settings.components`)."""

COMPONENT = Component(
    name="joiner", config=joiner_settings, apply=forward, codec=None, register=register
)
