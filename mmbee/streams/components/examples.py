"""Part of component `joiner` (`components/users.py`): the user rows and their examples.

`UserRows` holds the user rows of this worker, one `PartitionJoiner` per user partition,
backed by the `joiner_users` table: rows load on first use, rows with waiting impressions are
adopted when a partition is first read (after a restart or a rebalance), and a row is written
whole after the events that changed it. Row `~received~<p>` holds what partition p received
(`mmbee.state.received`: redeliveries are recognised by their origin offsets) and its watermark,
written after the user rows of a release and loaded with the partition.

The user side of an example is copied when its impression is applied; its streamer side (the
author timelines, segments, expansions) comes from other partitions, so a decided impression
waits until that side is complete up to the impression: the global views have caught up, and
the author agent has published every author event before it (its marks,
`Views.authors.complete_through`). Then `mmbee.state.users.complete` reads it as of the
impression time and the example is published, keyed by user. An example that breaks an
invariant is dead-lettered (`processing_error`) and the agent lives on.

`WatchFeed` sends the joiner agent's watch "enter"s (with their origin) and the `live.watch`
progress marks on to the author agent (`author.activity`, keyed by streamer).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from faust.types import TP, EventT, TableT

from mmbee.schemas.events import WatchEvent
from mmbee.schemas.serving import AuthorActivity
from mmbee.scorer.examples import to_message
from mmbee.scorer.features import FeatureConfig
from mmbee.state.users import JoinerConfig, PartitionJoiner, Pending, UserRow, complete
from mmbee.streams.runtime.alignment import MarkedAlignment
from mmbee.streams.runtime.component import StateCodec
from mmbee.streams.runtime.context import StreamContext, in_event_context
from mmbee.streams.runtime.progress import Progress
from mmbee.streams.runtime.received import Redeliveries
from mmbee.streams.views import Views

__all__ = ["AGENT_JOINER", "ExampleEmitter", "Part", "UserRows", "WatchFeed"]

log = logging.getLogger("mmbee.streams.components.joiner")

AGENT_JOINER = "joiner"


@dataclass
class Part:
    """The joiner's rows of one user partition, and its last event (the table partition)."""

    joiner: PartitionJoiner
    last_event: EventT | None = None
    scanned: bool = False


class UserRows:
    """The user rows of this worker, per user partition.

    Args:
        ctx: the stream context (metrics).
        table: the `joiner_users` table.
        config: the joiner config.
        codec: the table's row codec (`users.CODEC`: a row and its partition).
    """

    def __init__(
        self, ctx: StreamContext, table: TableT, config: JoinerConfig,
        codec: StateCodec[tuple[UserRow, int]],
    ) -> None:  # fmt: skip
        self.ctx, self.table, self.config, self.codec = ctx, table, config, codec
        self.parts: dict[int, Part] = {}
        self.received = Redeliveries(ctx, AGENT_JOINER, table)

    def part(self, partition: int, now_s: float | None = None) -> Part:
        """The rows of `partition` (made on first use; with `now_s`, in an event of it, what it
        received, its watermark and its stored rows with waiting impressions are loaded
        first)."""
        got = self.parts.get(partition)
        if got is None:
            got = self.parts[partition] = Part(PartitionJoiner(self.config, self._load))
        if now_s is not None and not got.scanned:
            self._scan(partition, got, now_s)
        return got

    def _load(self, user_id: str) -> UserRow | None:
        raw = self.table.get(user_id.encode())
        return None if raw is None else self.codec.loads(raw)[0]

    def _scan(self, partition: int, part: Part, now_s: float) -> None:
        """Load what `partition` received and its watermark, and adopt its rows that hold
        waiting impressions: their deadlines and decided examples must not wait for the user's
        next event."""
        extra, j = self.received.load(partition), part.joiner  # (no event context: all stores)
        j.watermark_ms, j.max_ts = extra.get("watermark_ms"), extra.get("max_ts")
        n = 0
        for key, raw in self.table.items():
            if key.startswith(b"~"):  # '~' is in no id: the partitions' `Received` rows
                continue
            user = key.decode()
            if user not in part.joiner.rows:
                row, p = self.codec.loads(raw)
                if p == partition and row.pending:
                    part.joiner.adopt(user, row, now_s)
                    n += 1
        part.scanned = True
        if n:
            self.ctx.metrics.count(AGENT_JOINER, "rows_adopted", n)

    def write(self, partition: int, user: str) -> None:
        """Store the user's row (call in an event of `partition`)."""
        joiner = self.parts[partition].joiner
        joiner.prune(user)
        row = joiner.rows.get(user)
        if row is not None:
            self.table[user.encode()] = self.codec.dumps((row, partition))

    def store(self, partition: int, users: Iterable[str], ev: EventT) -> None:
        """Store the users' rows, then what `partition` received and its watermark (a restarted
        partition judges lateness against the same watermark), in the event `ev` of it."""
        in_event_context(ev)  # the changelog partition is the source partition
        for user in users:
            self.write(partition, user)
        j = self.parts[partition].joiner
        self.received.write(ev, watermark_ms=j.watermark_ms, max_ts=j.max_ts)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop revoked partitions (their rows and `Received` stay in the table)."""
        parts = set(partitions)
        for p in parts:
            self.parts.pop(p, None)
        self.received.forget(parts)

    def user_row(self, partition: int, user_id: str) -> UserRow | None:
        """The user's row on `partition` (None: unknown user). Call in an event of that
        partition (the table read goes to its store)."""
        joiner = self.part(partition).joiner
        return joiner.rows[user_id] if joiner.known(user_id) else None


class WatchFeed:
    """The joiner agent's side of `author.activity`: each watch "enter" re-keyed by streamer,
    and the `live.watch` progress marks (how far it was forwarded) for the author frontier."""

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.progress = Progress(ctx, ("live.watch",))

    async def watched(self, tp: TP, offset: int, ev: WatchEvent, forward: bool = True) -> None:
        """Forward `ev` (read at `offset` of `tp`, its origin) when it is an enter (and not
        `forward`ed before); note its time."""
        ctx = self.ctx
        if ev.action == "enter" and forward:
            act = AuthorActivity.model_construct(
                kind="watch", event_id=ev.event_id, ts_ms=ev.ts_ms, author_id=ev.author_id,
                user_id=ev.user_id, live_id=ev.live_id,
                source=f"{ctx.catalogue_name(tp.topic)}:{tp.partition}", source_offset=offset,
            )  # fmt: skip
            await ctx.publish("author.activity", ev.author_id.encode(), ctx.codec.encode(act))
        self.progress.seen(tp, offset, ev.ts_ms)

    async def send_marks(self, now_s: float) -> bool:
        """Send the `live.watch` marks to every `author.activity` partition (when changed)."""
        return await self.progress.broadcast("author.activity", AuthorActivity, now_s)


class ExampleEmitter:
    """Completes settled decisions into training examples and publishes them (`views`: where
    the streamer side is read; `features`: the offline build's point-in-time config;
    `source_topic`: where a broken example's dead letter says it comes from)."""

    def __init__(
        self, ctx: StreamContext, views: Views, features: FeatureConfig, source_topic: str
    ) -> None:
        self.ctx, self.views, self.features, self.source_topic = ctx, views, features, source_topic
        self.emitted = 0  # examples published
        self.emitting: dict[int, int] = {}  # partition -> taken from its rows, not yet published

    async def emit(self, rows: UserRows, now: float, generation: int | None = None) -> int:
        """Emit what is due in every partition, and store the rows the emission changed; stop
        if a rebalance (past consumer `generation`) forgot the rows meanwhile (the next owner
        emits them again). Returns the number of examples published."""
        if not self.views.reader.caught_up.is_set():
            return 0
        complete_through = self.views.authors.complete_through(self.ctx.settings.partitions)
        if complete_through is None:
            return 0
        n = 0
        for partition, part in list(rows.parts.items()):
            due = part.joiner.due(now, complete_through)
            if not due:
                continue
            self.emitting[partition] = len(due)  # out of the rows, not all published yet
            for user, pending in due:
                n += await self._publish(user, pending)
                self.emitting[partition] -= 1
            if generation is not None and self.ctx.app.consumer_generation_id != generation:
                break
            if part.last_event is not None:
                in_event_context(part.last_event)
                for user in {user for user, _ in due}:
                    rows.write(partition, user)
        if n:
            self.ctx.metrics.count(AGENT_JOINER, "examples", n)
        return n

    async def _publish(self, user: str, pending: Pending) -> int:
        """Complete one decided impression and publish its example (1), or dead-letter it (0)."""
        ex = complete(user, pending, self.views.sources, self.features)
        try:
            msg = to_message(ex)
        except ValueError as exc:  # an invariant broke: keep the agent alive, say so
            log.error("example_invalid event_id=%s error=%s", pending.event_id, exc)
            await self.ctx.dlq.send(
                json.dumps({"event_id": pending.event_id, "user_id": user}).encode(),
                source_topic=self.source_topic, agent=AGENT_JOINER,
                reason="processing_error", detail=f"training example: {exc}"[:1000],
                event_id=pending.event_id,
            )  # fmt: skip
            return 0
        await self.ctx.publish("train.examples", user.encode(), self.ctx.codec.encode(msg))
        self.emitted += 1
        return 1

    def describe(self, rows: UserRows, alignment: MarkedAlignment) -> dict[str, Any]:
        """Per partition: watermark, held events, waiting impressions; totals."""
        authors = self.views.authors
        return {
            "emitted": self.emitted,
            "partitions": {
                str(p): {
                    "watermark_ms": part.joiner.watermark_ms,
                    "held": len(alignment.aligner(p)),
                    "waiting": part.joiner.waiting,
                    "unemitted": part.joiner.unemitted + self.emitting.get(p, 0),
                    "users": len(part.joiner.rows),
                    "frontier": alignment.frontier(p),
                    "counts": dict(part.joiner.counts),
                }
                for p, part in sorted(rows.parts.items())
            },
            "views_caught_up": self.views.reader.caught_up.is_set(),
            # examples wait until the streamer side is complete up to their impression
            "author_marks": {str(q): m for q, m in sorted(authors.marks.items())},
            "author_complete_through": authors.complete_through(self.ctx.settings.partitions),
        }
