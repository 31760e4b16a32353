"""The joiner component: training examples from the stream, point in time, same code as serving.

Three agents (component `joiner`, docs/serving.md has the picture):

- `joiner_forward` over `live.gifts` + `live.comments` (key author): re-keys every gift and
  comment by its viewer onto `user.activity`, and every `joiner_mark_interval_s` sends each
  `user.activity` partition a *mark*: per source partition it owns, the largest event time
  forwarded (None when the partition has nothing waiting; the least valid time when it has
  records waiting but forwarded none yet). Marks carry the event-time progress of the
  author-partitioned topics across the repartition hop.
- `joiner` over `live.watch` + `user.activity` (key user, co-partitioned): holds events until
  every source has passed their event time (`live.watch` by what it delivered, `user.activity`
  by the marks of every gift/comment partition; a source read to its end, or marked idle, stops
  holding events back only once they waited `align_idle_ms`), applies them in (time, kind, offset) order to
  the partition's `PartitionJoiner` (mmbee.state.users), writes the user's row (one table
  write per event, then the ack), and emits each decided example on `train.examples` (key user)
  once it settled, its streamer side read as of the impression from the global views. Watch
  "enter"s are re-keyed by streamer onto `author.activity` as they arrive.
- `authors` over `author.activity` + `live.gifts` (key author): the streamer's time-indexed
  counters (`Timeline`), one table row per streamer, published to the compacted `author.state`.

Bad input (undecodable, invalid, a key that is not the partitioning field) goes to the DLQ,
and so do events too late to apply (`late`), each counted. A redelivered event whose id was
applied already changes nothing and is acked and counted (`duplicates`), not dead-lettered.

Example:
    >>> from mmbee.settings import Settings
    >>> joiner_config(Settings(label_window_ms=60_000)).labels.window_ms
    60000
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import faust
from faust.types import TP, EventT, StreamT, TableT
from pydantic import BaseModel

from mmbee.schemas.events import CommentEvent, GiftEvent, WatchEvent
from mmbee.schemas.serving import AuthorActivity, AuthorTimeline, UserActivity
from mmbee.schemas.types import TS_MIN_MS
from mmbee.scorer.examples import LabelConfig, to_message
from mmbee.scorer.features import FeatureConfig
from mmbee.settings import Settings
from mmbee.state.authors import Timeline
from mmbee.state.users import JoinerConfig, PartitionJoiner, UserRow, complete
from mmbee.streams.codec import Rejected
from mmbee.streams.publish import FaustPublisher
from mmbee.streams.runtime.agent import Envelope
from mmbee.streams.runtime.context import StreamContext, clear_event_context, in_event_context
from mmbee.streams.runtime.progress import caught_up
from mmbee.streams.views import Views, feature_config, views

__all__ = [
    "AGENT_FORWARD",
    "AGENT_JOINER",
    "AGENT_AUTHORS",
    "USERS_TABLE",
    "AUTHORS_TABLE",
    "RANK",
    "joiner_config",
    "ForwardRuntime",
    "JoinerRuntime",
    "AuthorRuntime",
    "register",
]

log = logging.getLogger("mmbee.streams.components.joiner")

AGENT_FORWARD = "joiner_forward"
AGENT_JOINER = "joiner"
AGENT_AUTHORS = "authors"
USERS_TABLE = "joiner_users"
"""user_id -> `UserRow` JSON (state, deferred events, ids, waiting impressions)."""
AUTHORS_TABLE = "author_timelines"
"""author_id -> `Timeline` JSON (counters' time index and ids)."""
MARK_SOURCES = ("live.gifts", "live.comments")
"""The author-partitioned topics whose events reach the joiner through `user.activity`."""
RANK = {"watch": 3, "comment": 4, "gift": 5}
"""Order of events with the same event time: watches, comments, gifts (the offline reader's
topic rank, `mmbee.simulator.reader.TOPIC_RANK`), so a gift at the impression's millisecond
counts for it, as offline."""


def joiner_config(settings: Settings) -> JoinerConfig:
    """The joiner's config under these settings (its FeatureConfig must be the offline build's:
    H = joiner_history, L = segments_kept, N = graph_top_n)."""
    return JoinerConfig(
        features=feature_config(settings),
        labels=LabelConfig(
            window_ms=settings.label_window_ms,
            watch_threshold_ms=settings.label_watch_threshold_ms,
        ),
        settle_s=settings.joiner_settle_s,
    )


def _caught_up(ctx: StreamContext, tp: TP, seen_offset: int | None) -> bool | None:
    """Whether this worker has read `tp` up to its high watermark (None: unknown)."""
    return caught_up(ctx.app.consumer, tp, seen_offset)


def _assigned(ctx: StreamContext, topics: set[str]) -> set[TP]:
    try:
        actives = ctx.app.assignor.assigned_actives()
    except AttributeError:
        return set()
    return {tp for tp in actives if tp.topic in topics}


async def _send_partition(
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


def frontier_of(marks: dict[str, int | None], expected: set[str]) -> float | None:
    """The event time every expected source partition has passed: None while one has not
    reported, infinity when all are idle (None marks)."""
    if not expected <= marks.keys():
        return None
    busy = [m for k in expected if (m := marks[k]) is not None]
    return float(min(busy)) if busy else float("inf")


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
        return _caught_up(self.ctx, tp, self.offsets.get(tp))

    def forget(self, revoked: set[TP]) -> None:
        """Forget revoked partitions: whoever reads them next starts at the committed offset,
        behind what was seen here, and must not mark (or judge idle) by the old progress."""
        for tp in revoked:
            self.ts.pop(tp, None)
            self.offsets.pop(tp, None)

    def marks(self) -> dict[str, int | None]:
        tps = _assigned(self.ctx, set(self.names)) or set(self.offsets)
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
            await _send_partition(self.ctx, name, p, value)
        return True

    def changed(self, now_s: float) -> dict[str, int | None] | None:
        """The marks when they changed since the last call that returned them (or a second
        passed); else None."""
        marks = self.marks()
        if not marks or (marks == self._last and now_s - self._sent_s < 1.0):
            return None
        self._last, self._sent_s = marks, now_s
        return marks


# --- forwarder -----------------------------------------------------------------------------


class ForwardRuntime:
    """`live.gifts` / `live.comments` -> `user.activity`, plus progress marks.

    Args:
        ctx: the stream context.
    """

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.progress = Progress(ctx, MARK_SOURCES)
        self.envelope = Envelope(ctx, AGENT_FORWARD, MARK_SOURCES)

    async def forward(self, ev: EventT) -> None:
        """Re-key one gift or comment by its viewer."""
        ctx, metrics = self.ctx, self.ctx.metrics
        msg = ev.message
        self.progress.seen(msg.tp, msg.offset, None)
        decoded = self.envelope.decode(ev)
        if type(decoded) is Rejected:
            await self.envelope.rejected(ev, decoded)
        else:
            assert isinstance(decoded, GiftEvent | CommentEvent)
            act = UserActivity.model_construct(
                kind="gift" if isinstance(decoded, GiftEvent) else "comment",
                event_id=decoded.event_id,
                ts_ms=decoded.ts_ms,
                user_id=decoded.user_id,
                author_id=decoded.author_id,
                live_id=decoded.live_id,
                gift_value=decoded.gift_value if isinstance(decoded, GiftEvent) else None,
                marks={},
            )
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


# --- joiner --------------------------------------------------------------------------------


@dataclass
class _Part:
    """The joiner's working state of one user partition."""

    joiner: PartitionJoiner
    heap: list[tuple[int, int, int, int, EventT, BaseModel]] = field(default_factory=list)
    watch_max: int | None = None
    watch_offset: int | None = None
    marks: dict[str, int | None] = field(default_factory=dict)
    last_event: EventT | None = None
    arrivals: deque[float] = field(default_factory=deque)
    scanned: bool = False
    activity_offset: int | None = None
    aging: deque[tuple[float, int]] = field(default_factory=deque)  # (arrival, ts), in order
    aged: int | None = None  # largest ts of an event held `align_idle_ms` (None: none yet)


class ExampleEmitter:
    """Completes settled decisions into training examples and publishes them.

    A decision waits until its streamer side is complete: the views have caught up, and the
    author agent has published every author event up to the impression (its marks).

    Args:
        ctx: the stream context.
        views: the global views the streamer side is read from.
        features: the point-in-time feature config (the offline build's).
        source_topic: where a broken example is said to come from in its dead letter.
    """

    def __init__(
        self, ctx: StreamContext, views: Views, features: FeatureConfig, source_topic: str
    ) -> None:
        self.ctx = ctx
        self.views = views
        self.features = features
        self.source_topic = source_topic
        self.emitted = 0

    async def emit(
        self, parts: dict[int, _Part], now: float, write: Callable[[int, str], None]
    ) -> int:
        """Emit what is due in every partition; `write(partition, user)` stores the rows the
        emission changed. Returns the number of examples published."""
        if not self.views.reader.caught_up.is_set():
            return 0
        complete_through = self.views.authors.complete_through(self.ctx.settings.partitions)
        if complete_through is None:
            return 0
        n = 0
        for partition, part in list(parts.items()):
            due = part.joiner.due(now, complete_through)
            if not due:
                continue
            touched = set()
            for user, pending in due:
                ex = complete(user, pending, self.views.sources, self.features)
                touched.add(user)
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
                    continue
                await self.ctx.publish("train.examples", user.encode(), self.ctx.codec.encode(msg))
                n += 1
            if part.last_event is not None:
                in_event_context(part.last_event)
                for user in touched:
                    write(partition, user)
        if n:
            self.emitted += n
            self.ctx.metrics.count(AGENT_JOINER, "examples", n)
        return n


class JoinerRuntime:
    """The joiner agent's worker state: one `_Part` per user partition, acks, emission.

    Args:
        ctx: the stream context.
        table: the `joiner_users` table.
        config: the joiner config.
        views: the global views (author side, expansions) examples are completed from.
    """

    def __init__(
        self, ctx: StreamContext, table: TableT, config: JoinerConfig, views: Views
    ) -> None:
        self.ctx = ctx
        self.table = table
        self.config = config
        self.views = views
        self.parts: dict[int, _Part] = {}
        self.envelope = Envelope(ctx, AGENT_JOINER, ("live.watch", "user.activity"))
        self._lock = asyncio.Lock()
        self._seq = 0
        self._last_batch_s = float("-inf")
        self.align_wait_s = ctx.settings.joiner_align_wait_ms / 1000
        self.idle_s = ctx.settings.align_idle_ms / 1000
        self.watch_topic = ctx.topic_name("live.watch")
        self.activity_topic = ctx.topic_name("user.activity")
        partitions = ctx.settings.partitions
        self.expected_marks = {f"{n}:{q}" for n in MARK_SOURCES for q in range(partitions)}
        self.stream: StreamT | None = None
        self.emitter = ExampleEmitter(ctx, views, config.features, self.watch_topic)
        self.watch_progress = Progress(ctx, ("live.watch",))

    def part(self, partition: int) -> _Part:
        """The working state of `partition` (made on first use)."""
        got = self.parts.get(partition)
        if got is None:
            got = self.parts[partition] = _Part(PartitionJoiner(self.config, self._loader))
        return got

    def _loader(self, user_id: str) -> UserRow | None:
        raw = self.table.get(user_id.encode())
        return None if raw is None else UserRow.loads(raw)[0]

    def _scan(self, partition: int, part: _Part, now_s: float) -> None:
        """Adopt the rows of `partition` that hold waiting impressions (after a restart or a
        rebalance: their deadlines and decided examples must not wait for the user's next
        event)."""
        clear_event_context()
        n = 0
        for key, raw in self.table.items():
            user = key.decode()
            if user in part.joiner.rows:
                continue
            row, p = UserRow.loads(raw)
            if p == partition and row.pending:
                part.joiner.adopt(user, row, now_s)
                n += 1
        part.scanned = True
        if n:
            self.ctx.metrics.count(AGENT_JOINER, "rows_adopted", n)

    def on_revoked(self, revoked: set[TP]) -> None:
        """Forget revoked partitions (their unacked events will be redelivered)."""
        parts = self.envelope.forget(revoked)
        for p in parts:
            self.parts.pop(p, None)
        self.watch_progress.forget(revoked)
        if parts:
            self.ctx.metrics.count(AGENT_JOINER, "revocations")

    # --- one batch ----------------------------------------------------------------------
    async def process(self, stream: StreamT, events: list[EventT]) -> None:
        """Decode a batch, hold it for alignment, apply and emit what is ready."""
        self.stream = stream
        ctx, metrics = self.ctx, self.ctx.metrics
        now = ctx.monotonic()
        async with self._lock:
            for ev in self.envelope.live(events):  # older generations: will be redelivered
                self.envelope.track(ev)
                await self._take(stream, ev, now)
            for partition in list(self.parts):
                await self._release(stream, partition, now)
            self._last_batch_s = now
            await self._emit(now)
            metrics.count(AGENT_JOINER, "processed", len(events))

    async def _take(self, stream: StreamT, ev: EventT, now: float) -> None:
        ctx = self.ctx
        msg = ev.message
        part = self.part(msg.partition)
        part.last_event = ev
        if not part.scanned:
            self._scan(msg.partition, part, now)
        is_watch = msg.topic == self.watch_topic
        name = "live.watch" if is_watch else "user.activity"
        ctx.metrics.count(AGENT_JOINER, "read_watch" if is_watch else "read_activity")
        decoded = self.envelope.decode(ev, check_key=False)
        if type(decoded) is not Rejected:
            if not is_watch and (part.activity_offset is None or msg.offset > part.activity_offset):
                part.activity_offset = msg.offset
            if isinstance(decoded, UserActivity) and decoded.kind == "mark":
                part.marks.update(decoded.marks)  # marks go to every partition, unkeyed
                await self._done(stream, ev)
                return
            decoded = self.envelope.key_problem(ev, name, decoded) or decoded
        if type(decoded) is Rejected:
            await self.envelope.rejected(ev, decoded)
            await self._done(stream, ev)
            return
        if is_watch:
            assert isinstance(decoded, WatchEvent)
            if part.watch_offset is None or msg.offset > part.watch_offset:
                part.watch_offset = msg.offset
            if part.watch_max is None or decoded.ts_ms > part.watch_max:
                part.watch_max = decoded.ts_ms
            if decoded.action == "enter":
                act = AuthorActivity.model_construct(
                    kind="watch",
                    event_id=decoded.event_id,
                    ts_ms=decoded.ts_ms,
                    author_id=decoded.author_id,
                    user_id=decoded.user_id,
                    live_id=decoded.live_id,
                )
                await ctx.publish(
                    "author.activity", decoded.author_id.encode(), ctx.codec.encode(act)
                )
            # the progress marks tell the author agent how far live.watch was forwarded
            self.watch_progress.seen(msg.tp, msg.offset, decoded.ts_ms)
            rank, ts = RANK["watch"], decoded.ts_ms
        else:
            assert isinstance(decoded, UserActivity)
            assert decoded.ts_ms is not None  # every activity but a mark has one
            rank, ts = RANK[decoded.kind], decoded.ts_ms
        self._seq += 1
        heapq.heappush(part.heap, (ts, rank, msg.offset, self._seq, ev, decoded))
        part.arrivals.append(now)
        part.aging.append((now, ts))

    def frontier(self, partition: int, idle: bool = True) -> float | None:
        """Event time every source of `partition` has passed (None: unknown yet).

        `idle`: a `live.watch` partition read to its end, and a gift/comment partition marked
        idle (None), do not count; they count as long as the marks in hand may be out of date
        (this worker has not read `user.activity` to its end). False: every source counts, an
        idle one as unknown (the frontier events are released by at once, without waiting
        `align_idle_ms`)."""
        part = self.parts[partition]
        ctx = self.ctx
        if idle and _caught_up(ctx, TP(self.watch_topic, partition), part.watch_offset):
            watch: float = float("inf")
        elif part.watch_max is None:
            return None
        else:
            watch = part.watch_max
        if not self.expected_marks <= part.marks.keys():
            return None
        busy = [v for v in part.marks.values() if v is not None]
        if len(busy) < len(part.marks) and not (
            idle and _caught_up(ctx, TP(self.activity_topic, partition), part.activity_offset)
        ):
            return None  # an idle mark, maybe overtaken by marks not read yet
        activity = float(min(busy)) if busy else float("inf")
        return min(watch, activity)

    def _limit(self, part: _Part, partition: int, now: float) -> float | None:
        """Events before this time may be applied: those every source has passed, and, of
        those held `align_idle_ms`, those the sources that are not idle have passed (an idle
        source is judged by the last fetch, which may predate records a producer is sending
        now: docs/streams.md, "Event-time alignment")."""
        aging, aged = part.aging, part.aged
        cutoff = now - self.idle_s
        while aging and aging[0][0] <= cutoff:
            _, ts = aging.popleft()
            if aged is None or ts > aged:
                aged = ts
        part.aged = aged
        limit = self.frontier(partition, idle=False)
        if aged is not None:
            relaxed = self.frontier(partition)
            if relaxed is not None:
                bound = min(relaxed, aged + 1)
                if limit is None or bound > limit:
                    limit = bound
        return limit

    async def _release(self, stream: StreamT, partition: int, now: float) -> None:
        part = self.parts[partition]
        if not part.heap:
            return
        frontier = self._limit(part, partition, now)
        stalled = now - self._last_batch_s >= self.align_wait_s
        valve = stalled and part.arrivals and now - part.arrivals[0] >= self.align_wait_s
        if valve:
            self.ctx.metrics.count(AGENT_JOINER, "valve_releases")
        joiner = part.joiner
        metrics = self.ctx.metrics
        # rows are written once per release, not once per event (a busy user's row is
        # serialised whole), and the applied events are acked only after their rows are written
        touched: set[str] = set()
        applied: list[EventT] = []
        while part.heap and (valve or (frontier is not None and part.heap[0][0] < frontier)):
            ts, _, _, _, ev, model = heapq.heappop(part.heap)
            part.arrivals.popleft()
            in_event_context(ev)
            part.last_event = ev
            res = joiner.apply(model, now)
            if res.outcome == "duplicate":  # a redelivery: counted and acked, not dead-lettered
                metrics.duplicate(AGENT_JOINER)
                await self._done(stream, ev)
                continue
            if res.outcome == "late":
                await self.envelope.reject(ev, "late", res.detail, getattr(model, "event_id", None))
                await self._done(stream, ev)
                continue
            touched |= res.touched
            applied.append(ev)
        if not part.heap:
            part.aging.clear()
            part.aged = None
        if applied:
            in_event_context(applied[-1])  # the changelog partition is the source partition
            for user in touched:
                self._write(partition, user)
            metrics.count(AGENT_JOINER, "applied", len(applied))
            for ev in applied:
                await self._done(stream, ev)
        metrics.gauge(AGENT_JOINER, "held", sum(len(p.heap) for p in self.parts.values()))
        if joiner.watermark_ms is not None:
            metrics.gauge(AGENT_JOINER, f"watermark_ms_p{partition}", joiner.watermark_ms)

    def _write(self, partition: int, user: str) -> None:
        joiner = self.parts[partition].joiner
        joiner.prune(user)
        row = joiner.rows.get(user)
        if row is not None:
            self.table[user.encode()] = row.dumps(partition)

    async def send_marks(self, now_s: float) -> bool:
        """Send the `live.watch` marks to every `author.activity` partition (when changed)."""
        return await self.watch_progress.broadcast("author.activity", AuthorActivity, now_s)

    async def _emit(self, now: float) -> int:
        return await self.emitter.emit(self.parts, now, self._write)

    async def tick(self) -> None:
        """Timer: the safety valve, settled examples, when no batch arrives."""
        if self.stream is None:
            return
        async with self._lock:
            now = self.ctx.monotonic()
            for partition in list(self.parts):
                await self._release(self.stream, partition, now)
            await self._emit(now)

    async def _done(self, stream: StreamT, ev: EventT) -> None:
        await self.envelope.done(stream, (ev,))

    # --- reads for serving -----------------------------------------------------------------
    def user_row(self, partition: int, user_id: str) -> UserRow | None:
        """The user's row on `partition` (None: unknown user). Call in an event of that
        partition (the table read goes to its store)."""
        joiner = self.part(partition).joiner
        return joiner.rows[user_id] if joiner.known(user_id) else None

    def describe(self) -> dict[str, Any]:
        """Per partition: watermark, held events, waiting impressions; totals."""
        return {
            "emitted": self.emitter.emitted,
            "partitions": {
                str(p): {
                    "watermark_ms": part.joiner.watermark_ms,
                    "held": len(part.heap),
                    "waiting": part.joiner.waiting,
                    "unemitted": part.joiner.unemitted,
                    "users": len(part.joiner.rows),
                    "frontier": self.frontier(p),
                    "counts": dict(part.joiner.counts),
                }
                for p, part in sorted(self.parts.items())
            },
            "views_caught_up": self.views.reader.caught_up.is_set(),
            # examples wait until the streamer side is complete up to their impression
            "author_marks": {str(q): m for q, m in sorted(self.views.authors.marks.items())},
            "author_complete_through": self.views.authors.complete_through(
                self.ctx.settings.partitions
            ),
        }


# --- author side ---------------------------------------------------------------------------


class AuthorRuntime:
    """The `authors` agent's state: streamer timelines (table rows), published per batch.

    Args:
        ctx: the stream context.
        table: the `author_timelines` table.
        horizon_ms: how far back the published timelines keep individual event times.
    """

    def __init__(self, ctx: StreamContext, table: TableT, horizon_ms: int) -> None:
        self.ctx = ctx
        self.table = table
        self.horizon_ms = horizon_ms
        self.timelines: dict[str, Timeline] = {}
        self._activity = ctx.topic_name("author.activity")
        self.envelope = Envelope(ctx, AGENT_AUTHORS, ("author.activity", "live.gifts"))
        self.gifts = Progress(ctx, ("live.gifts",))
        self.activity_marks: dict[int, dict[str, int | None]] = {}
        self.expected = {f"live.watch:{q}" for q in range(ctx.settings.partitions)}
        self._sent: dict[int, tuple[int | None, float]] = {}
        self._lock = asyncio.Lock()

    def timeline(self, author: str) -> Timeline:
        tl = self.timelines.get(author)
        if tl is None:
            raw = self.table.get(author.encode())
            tl = Timeline.loads(author, raw) if raw is not None else Timeline(author)
            self.timelines[author] = tl
        return tl

    def on_revoked(self, revoked: set[TP]) -> None:
        self.gifts.forget(revoked)
        if any(tp.topic == self._activity for tp in revoked):
            self.timelines.clear()  # reloaded from the table on next use

    async def process(self, stream: StreamT, events: list[EventT]) -> None:
        """Apply a batch, write the rows, publish the changed timelines and the marks, then ack
        in order."""
        async with self._lock:
            await self._process(stream, events)
            await self._marks(self.ctx.monotonic())

    def frontier(self, q: int) -> float | None:
        """Event time up to which every author event of partition `q` is applied."""
        watch = frontier_of(self.activity_marks.get(q, {}), self.expected)
        tp = TP(self.ctx.topic_name("live.gifts"), q)
        if self.gifts.idle(tp):
            gifts: float | None = float("inf")
        else:
            gifts = float(self.gifts.ts[tp]) if tp in self.gifts.ts else None
        if watch is None or gifts is None:
            return None
        return min(watch, gifts)

    async def _marks(self, now_s: float) -> None:
        """Send each owned partition's frontier to `author.state` (that partition, after its
        timelines) when it moved, or every second."""
        qs = {tp.partition for tp in _assigned(self.ctx, {self._activity})} or set(
            self.activity_marks
        )
        for q in sorted(qs):
            f = self.frontier(q)
            if f is None:
                continue
            as_of = None if f == float("inf") else int(f)
            last = self._sent.get(q)
            if last is not None and last[0] == as_of and now_s - last[1] < 1.0:
                continue
            mark = AuthorTimeline(kind="mark", partition=q, as_of_ms=as_of)
            await _send_partition(
                self.ctx, "author.state", q, self.ctx.codec.encode(mark), f"~mark~{q}".encode()
            )
            self._sent[q] = (as_of, now_s)

    async def tick(self) -> None:
        """Timer: marks of partitions that went quiet."""
        async with self._lock:
            await self._marks(self.ctx.monotonic())

    async def _process(self, stream: StreamT, events: list[EventT]) -> None:
        ctx, metrics = self.ctx, self.ctx.metrics
        dirty: dict[str, None] = {}
        complete: dict[int, float] = {}  # partition -> its frontier when the batch began
        envelope = self.envelope
        live = envelope.live(events)
        for ev in live:
            msg = ev.message
            decoded = envelope.decode(ev, check_key=False)
            if type(decoded) is Rejected:
                await envelope.rejected(ev, decoded)
                continue
            assert isinstance(decoded, AuthorActivity | GiftEvent)
            if isinstance(decoded, AuthorActivity) and decoded.kind == "mark":
                self.activity_marks.setdefault(msg.partition, {}).update(decoded.marks)
                continue
            if isinstance(decoded, GiftEvent):
                self.gifts.seen(msg.tp, msg.offset, decoded.ts_ms)
            assert decoded.author_id is not None  # activities other than marks carry one
            wrong = envelope.key_problem(ev, envelope.name(ev), decoded)
            if wrong is not None:
                await envelope.rejected(ev, wrong)
                continue
            in_event_context(ev)
            assert decoded.event_id is not None and decoded.ts_ms is not None
            tl = self.timeline(decoded.author_id)
            kind: Literal["watch", "gift"] = "gift" if isinstance(decoded, GiftEvent) else "watch"
            if msg.partition not in complete:
                f = self.frontier(msg.partition)
                complete[msg.partition] = float("-inf") if f is None else f
            outcome = tl.add(kind, decoded.event_id, decoded.ts_ms, self.horizon_ms,
                             complete[msg.partition])  # fmt: skip
            if outcome == "applied":
                self.table[decoded.author_id.encode()] = tl.dumps()
                dirty[decoded.author_id] = None
                metrics.count(AGENT_AUTHORS, "applied")
            elif outcome == "duplicate":  # a redelivery: counted (acked below), not dead-lettered
                metrics.duplicate(AGENT_AUTHORS)
            else:
                detail = f"ts_ms {decoded.ts_ms} is before the timeline's base {tl.base_ms}"
                await envelope.reject(ev, outcome, detail, decoded.event_id)
        for author in dirty:
            tl = self.timelines[author]
            await ctx.publish("author.state", author.encode(), ctx.codec.encode(tl.message()))
        metrics.count(AGENT_AUTHORS, "published", len(dirty))
        for ev in live:
            await stream.ack(ev)
        metrics.count(AGENT_AUTHORS, "processed", len(events))


# --- registration --------------------------------------------------------------------------


def register(ctx: StreamContext) -> None:
    """Component `joiner`: the forwarder, the joiner, the author agent, their tables, timers,
    and `/mmbee/joiner/`."""
    settings = ctx.settings
    v = views(ctx)
    config = joiner_config(settings)
    forward = ForwardRuntime(ctx)
    joiner = JoinerRuntime(
        ctx, ctx.table(USERS_TABLE, help="joiner: user state, waiting impressions"), config, v
    )
    authors = AuthorRuntime(
        ctx,
        ctx.table(AUTHORS_TABLE, help="author timelines (counters by event time)"),
        settings.author_horizon_ms,
    )
    ctx.runtimes[AGENT_FORWARD] = forward
    ctx.runtimes[AGENT_JOINER] = joiner
    ctx.runtimes[AGENT_AUTHORS] = authors
    ctx.on_partitions_revoked(forward.progress.forget)
    ctx.on_partitions_revoked(joiner.on_revoked)
    ctx.on_partitions_revoked(authors.on_revoked)
    batch, within = settings.stream_batch_max, settings.stream_batch_wait_ms / 1000

    async def joiner_forward(stream: StreamT) -> None:
        async for ev in stream.events():
            await forward.forward(ev)

    async def joiner_agent(stream: StreamT) -> None:
        async for events in cast(faust.Stream, stream).noack_take(batch, within=within):
            await joiner.process(stream, list(events))

    async def authors_agent(stream: StreamT) -> None:
        async for events in cast(faust.Stream, stream).noack_take(batch, within=within):
            await authors.process(stream, list(events))

    ctx.app.agent(ctx.topic(*MARK_SOURCES), name="mmbee.joiner_forward")(joiner_forward)
    ctx.app.agent(ctx.topic("live.watch", "user.activity"), name="mmbee.joiner")(joiner_agent)
    ctx.app.agent(ctx.topic("author.activity", "live.gifts"), name="mmbee.authors")(authors_agent)

    @ctx.app.timer(settings.joiner_mark_interval_s, name="mmbee.joiner.marks")
    async def send_marks() -> None:
        await forward.tick(ctx.monotonic())

    @ctx.app.timer(0.1, name="mmbee.joiner.tick")
    async def joiner_tick() -> None:
        await joiner.tick()

    @ctx.app.timer(settings.joiner_mark_interval_s, name="mmbee.joiner.watch_marks")
    async def watch_marks() -> None:
        await joiner.send_marks(ctx.monotonic())

    @ctx.app.timer(settings.joiner_mark_interval_s, name="mmbee.authors.marks")
    async def author_marks() -> None:
        await authors.tick()

    @ctx.app.page("/mmbee/joiner/")
    async def joiner_state(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.json(joiner.describe())
