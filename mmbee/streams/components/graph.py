"""The graph component: gifts -> exact U2A/A2A graph -> walk cache -> expansion topics.

Metapath expansions walk two and three hops across users and authors, so no partitioning of
the gift stream keeps them local; gifts are sparse (tens per second), so one worker holds the
whole graph. Two agents (see docs/graph.md):

- `graph_gifts` over `live.gifts` (key author, all partitions, every worker): decodes with the
  codec, dead-letters bad input, and forwards each valid gift to the internal one-partition topic
  `graph.gifts`. One partition = one owner of the graph at a time, whatever the worker count;
  Faust moves it (and its tables) to another worker on failure.
- `graph` over `graph.gifts`: skips duplicate event ids (counted as `duplicates`, not
  dead-lettered) and dead-letters gifts older than the dedupe horizon (`late`), applies the rest to the in-memory `GiftGraph` and marks the walk
  cache, and writes ONE changelogged table row per gift: the user's exact edges together with
  the event ids applied to them within the horizon. One write per gift makes the update atomic
  under at-least-once delivery: after a crash a redelivered gift is either in its row (and
  dropped as a duplicate) or not applied at all.
  The graph is a pure function of the multiset of gifts, so the interleaving of partitions does
  not matter: the state equals a batch build of the same gifts, bit for bit.

A timer refreshes the walk cache (dirty nodes, stale entries; the full rebuild when event time
has moved `graph_rebuild_interval_ms` since the last one, after a (re)load, and once the stream
has been quiet for `graph_idle_rebuild_s` after changes) on the executor
while the agent waits, and publishes every recomputed entry to the compacted topics
`graph.user_expansions` / `graph.author_expansions`. After a restart the graph is reloaded from
its table (recovered from the changelog) as soon as the recovery completed, and fully rebuilt.

Example:
    >>> from mmbee.settings import Settings
    >>> ctx = build_app(Settings(store="memory://"), components=["graph"])  # doctest: +SKIP
    >>> ctx.runtimes["graph"].describe()["loaded"]  # doctest: +SKIP
    False
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import faust
from faust.types import TP, EventT, StreamT

from mmbee.graph import CacheConfig, ExpansionConfig, GiftGraph, GraphConfig, WalkCache
from mmbee.graph.state import restore, user_row
from mmbee.graph.walk_cache import MemoryCacheStore
from mmbee.schemas.events import DeadLetterReason, GiftEvent
from mmbee.schemas.graph import AuthorExpansions, UserExpansions
from mmbee.state.dedupe import DedupeWindow
from mmbee.streams.codec import Rejected
from mmbee.streams.runtime.agent import Envelope
from mmbee.streams.runtime.context import (
    Sample,
    StreamContext,
    clear_event_context,
    in_event_context,
)
from mmbee.streams.runtime.rocksdb import rocksdb_options

__all__ = [
    "AGENT_FORWARD",
    "AGENT_GRAPH",
    "INTERNAL_TOPIC",
    "TABLE",
    "GraphRuntime",
    "register",
]

log = logging.getLogger("mmbee.streams.graph")

AGENT_FORWARD = "graph_gifts"
AGENT_GRAPH = "graph"
INTERNAL_TOPIC = "graph.gifts"
"""Suffix of the internal one-partition topic (full name: settings prefix + this)."""
TABLE = "graph_users"
"""user_id -> JSON {"e": the user's edges (`mmbee.graph.state.user_row`), "s": {event_id: ts_ms}
of the user's gifts within the dedupe horizon}."""
_GIFT_KEY = b"gifts"


class GraphRuntime:
    """The graph agent's worker state: graph, walk cache, dedupe window, and what to publish.

    Args:
        ctx: the stream context (codec, DLQ, metrics, publisher, executor).
        table: the `graph_users` table.
        configs: graph, expansion and cache configs (`Settings.graph_configs()`).
        dedupe_horizon_ms: how long (event time) event ids are remembered.
        rebuild_interval_ms: event time between full cache rebuilds.
        idle_rebuild_s: wall seconds without a gift after which a graph that changed since the
            last full rebuild is rebuilt: at quiescence the cache converges to the exact
            expansions (late gifts do not move event time, so the staleness bound alone would
            leave their 2-3 hop effects until the stream moves on).
    """

    def __init__(
        self,
        ctx: StreamContext,
        table: Any,
        configs: tuple[GraphConfig, ExpansionConfig, CacheConfig],
        dedupe_horizon_ms: int,
        rebuild_interval_ms: int,
        idle_rebuild_s: float,
    ) -> None:
        self.ctx = ctx
        self.table = table
        self.graph_config, self.expansion_config, self.cache_config = configs
        self.dedupe_horizon_ms = dedupe_horizon_ms
        self.rebuild_interval_ms = rebuild_interval_ms
        self.idle_rebuild_s = idle_rebuild_s
        self._last_gift_s = ctx.monotonic()
        self._rebuilt_gifts = -1  # num_gifts at the last full rebuild
        self.graph: GiftGraph | None = None
        self.cache: WalkCache | None = None
        self.lock = asyncio.Lock()
        self.seen = DedupeWindow(dedupe_horizon_ms)  # gift ids by the user row keeping them
        self._rebuilt_at_ms: int | None = None
        self._needs_rebuild = False
        self.internal_topic = ctx.settings.topic(INTERNAL_TOPIC)
        self.forwarder = Envelope(ctx, AGENT_FORWARD, ("live.gifts",))
        self.envelope = Envelope(ctx, AGENT_GRAPH, {self.internal_topic: "live.gifts"})

    # --- forwarder: live.gifts -> graph.gifts ----------------------------------------------
    async def forward(self, ev: EventT) -> None:
        """Validate one `live.gifts` message and forward it to the one-partition topic."""
        decoded = self.forwarder.decode(ev)
        if type(decoded) is Rejected:
            await self.forwarder.rejected(ev, decoded)
        else:
            await self.ctx.publisher.send(self.internal_topic, _GIFT_KEY, bytes(ev.value))
            self.ctx.metrics.count(AGENT_FORWARD, "forwarded")
        self.ctx.metrics.count(AGENT_FORWARD, "processed")

    # --- the graph agent --------------------------------------------------------------------
    def _load(self) -> None:
        """Build the in-memory graph and dedupe window from the (recovered) table."""
        clear_event_context()
        rows = [(k.decode(), json.loads(v)) for k, v in self.table.items()]
        self.graph = restore(self.graph_config, [(u, row["e"]) for u, row in rows])
        self.cache = WalkCache(
            self.graph, MemoryCacheStore(), self.cache_config, self.expansion_config
        )
        self.seen.load((u, row["s"]) for u, row in rows)
        self._needs_rebuild = True
        self.ctx.metrics.count(AGENT_GRAPH, "loads")
        log.info("graph loaded: %d users, %d gifts", self.graph.num_users, self.graph.num_gifts)

    def _write(self, user_id: str) -> None:
        """The user's one table row: exact edges and the event ids within the horizon."""
        assert self.graph is not None
        row = {"e": user_row(self.graph, user_id), "s": self.seen.of(user_id)}
        self.table[user_id.encode()] = json.dumps(row).encode()

    async def apply(self, ev: EventT) -> None:
        """Apply one `graph.gifts` message (in the agent, so table writes go to partition 0)."""
        metrics = self.ctx.metrics
        decoded = self.envelope.decode(ev, check_key=False)  # keyed b"gifts": one partition
        if type(decoded) is Rejected:
            await self.envelope.rejected(ev, decoded)
            metrics.count(AGENT_GRAPH, "processed")
            return
        assert isinstance(decoded, GiftEvent)
        gift = decoded
        async with self.lock:
            if self.graph is None:
                self._load()
                in_event_context(ev)  # the load read every partition; writes go to this one
            graph, cache = self.graph, self.cache
            assert graph is not None and cache is not None
            horizon = (graph.watermark_ms or gift.ts_ms) - self.dedupe_horizon_ms
            problem: tuple[DeadLetterReason, str] | None = None
            duplicate = gift.event_id in self.seen
            if duplicate:  # a redelivery: changes nothing, counted, not dead-lettered
                metrics.duplicate(AGENT_GRAPH)
            elif gift.ts_ms < horizon:
                problem = ("late", f"ts_ms {gift.ts_ms} is before the dedupe horizon {horizon}")
            else:
                try:
                    graph.add_gift(gift.user_id, gift.author_id, gift.ts_ms, gift.gift_value)
                except ValueError as exc:  # e.g. too far before GraphConfig.epoch_ms
                    problem = ("validation_error", str(exc))
            if problem is None and not duplicate:
                cache.mark_gift(gift.user_id, gift.author_id)
                changed = self.seen.remember(
                    gift.user_id, gift.event_id, gift.ts_ms, graph.watermark_ms or gift.ts_ms
                )
                for user in sorted(changed):  # still in this event's context
                    self._write(user)
                metrics.count(AGENT_GRAPH, "applied")
                self._last_gift_s = self.ctx.monotonic()
                metrics.gauge(AGENT_GRAPH, "watermark_ms", graph.watermark_ms or 0)
        if problem is not None:
            await self.envelope.reject(ev, problem[0], problem[1], gift.event_id)
        metrics.count(AGENT_GRAPH, "processed")

    # --- maintenance (timer) ----------------------------------------------------------------
    async def on_recovered(self) -> None:
        """After each rebalance, once the tables are recovered: a worker that now owns
        `graph.gifts` loads the graph from its table at once, without waiting for the next gift
        (there may be none: the previous owner may have applied every gift before it died)."""
        try:
            owns = TP(self.internal_topic, 0) in self.ctx.app.assignor.assigned_actives()
        except AttributeError:  # no assignor (test context)
            return
        if owns and self.graph is None:
            async with self.lock:
                if self.graph is None:
                    self._load()

    async def tick(self) -> int:
        """Refresh (or rebuild) the walk cache off the event loop and publish what changed;
        returns the number of entries published."""
        if self.graph is None or self.cache is None:
            return 0
        async with self.lock:
            graph, cache = self.graph, self.cache
            wm = graph.watermark_ms or 0
            due = (
                self._rebuilt_at_ms is None or wm >= self._rebuilt_at_ms + self.rebuild_interval_ms
            )
            quiet = self.ctx.monotonic() - self._last_gift_s >= self.idle_rebuild_s
            if self._needs_rebuild or due or (quiet and graph.num_gifts != self._rebuilt_gifts):
                await self.ctx.run_blocking(cache.rebuild)
                self._rebuilt_at_ms, self._needs_rebuild = wm, False
                self._rebuilt_gifts = graph.num_gifts
                self.ctx.metrics.count(AGENT_GRAPH, "rebuilds")
            elif cache.pending or cache.stale_keys():
                await self.ctx.run_blocking(cache.refresh)
                self.ctx.metrics.count(AGENT_GRAPH, "refreshes")
            keys = cache.drain_updates()
            entries = [(key, cache.store.get(key)) for key in keys]
        published = 0
        for key, entry in entries:
            if entry is None:
                continue  # evicted (inactive): serving keeps the last entry, then misses
            node = key[2:]
            if key[0] == "u":
                msg: UserExpansions | AuthorExpansions = UserExpansions(
                    user_id=node, built_at_ms=entry.built_at_ms, **entry.expansions
                )
                name = "graph.user_expansions"
            else:
                msg = AuthorExpansions(
                    author_id=node, built_at_ms=entry.built_at_ms, **entry.expansions
                )
                name = "graph.author_expansions"
            await self.ctx.publish(name, node.encode(), self.ctx.codec.encode(msg))
            published += 1
        self.ctx.metrics.count(AGENT_GRAPH, "published", published)
        return published

    def on_revoked(self, revoked: set[TP]) -> None:
        """Drop the in-memory graph when `graph.gifts` moves away (it reloads on return)."""
        if any(tp.topic == self.internal_topic for tp in revoked):
            self.graph, self.cache = None, None
            self.seen.clear()
            self.ctx.metrics.count(AGENT_GRAPH, "revocations")

    # --- inspection -------------------------------------------------------------------------
    def samples(self) -> Iterator[Sample]:
        """The graph's size for `/metrics` (runtime.context.Inspectable)."""
        g = self.graph
        yield "mmbee_graph_loaded", {}, 0.0 if g is None else 1.0
        if g is not None:
            yield "mmbee_graph_users", {}, float(g.num_users)
            yield "mmbee_graph_authors", {}, float(g.num_authors)
            yield "mmbee_graph_edges", {}, float(g.num_edges)
            yield "mmbee_graph_gifts", {}, float(g.num_gifts)

    def describe(self) -> dict[str, Any]:
        """Sizes, watermark, cache backlog and a digest of the exact state (equal digests =
        equal graphs; compare with `state_digest(build(gifts, config))`)."""
        g = self.graph
        if g is None:
            return {"loaded": False}
        return {
            "loaded": True,
            "users": g.num_users,
            "authors": g.num_authors,
            "edges": g.num_edges,
            "gifts": g.num_gifts,
            "watermark_ms": g.watermark_ms,
            "pending": self.cache.pending if self.cache else 0,
            "stale": len(self.cache.stale_keys()) if self.cache else 0,
            "rebuilt_at_gifts": self._rebuilt_gifts,
            "digest": state_digest(g),
        }

    def node_view(self, kind: str, node_id: str) -> dict[str, Any]:
        """The cached expansions of one node (what was last published for it)."""
        if self.cache is None:
            return {"loaded": False}
        key = ("u:" if kind == "user" else "a:") + node_id
        entry = self.cache.store.get(key)
        if entry is None:
            return {"loaded": True, "cached": False}
        return {
            "loaded": True,
            "cached": True,
            "built_at_ms": entry.built_at_ms,
            **entry.expansions,
        }


def state_digest(graph: GiftGraph) -> str:
    """sha256 of the graph's canonical fingerprint."""
    return hashlib.sha256(repr(graph.fingerprint()).encode()).hexdigest()


def _table(ctx: StreamContext, name: str, help: str) -> Any:
    """A changelogged raw-bytes table with one partition, like the `graph.gifts` topic."""
    settings = ctx.settings
    options = rocksdb_options(settings) if settings.store.startswith("rocksdb") else None
    return ctx.app.Table(
        name,
        default=None,
        key_type=bytes,
        value_type=bytes,
        partitions=1,
        options=options,
        help=help,
    )


def register(ctx: StreamContext) -> None:
    """Component `graph`: the forwarder, the graph agent, its tables, the refresh timer and
    `/mmbee/graph/`, `/mmbee/graph/users/{id}/`, `/mmbee/graph/authors/{id}/`."""
    settings = ctx.settings
    internal = ctx.app.topic(
        settings.topic(INTERNAL_TOPIC),
        partitions=1,
        internal=True,
        key_serializer="raw",
        value_serializer="raw",
    )
    runtime = GraphRuntime(
        ctx,
        _table(ctx, TABLE, "gift graph: user -> exact edges and recent gift ids"),
        settings.graph_configs(),
        settings.graph_dedupe_horizon_ms,
        settings.graph_rebuild_interval_ms,
        settings.graph_idle_rebuild_s,
    )
    ctx.runtimes[AGENT_GRAPH] = runtime
    ctx.on_partitions_revoked(runtime.on_revoked)
    runtime.table.on_recover(runtime.on_recovered)

    async def graph_gifts(stream: StreamT) -> None:
        async for ev in stream.events():
            await runtime.forward(ev)

    async def graph(stream: StreamT) -> None:
        async for ev in stream.events():
            await runtime.apply(ev)

    ctx.app.agent(ctx.topic("live.gifts"), name="mmbee.graph_gifts")(graph_gifts)
    ctx.app.agent(internal, name="mmbee.graph")(graph)

    @ctx.app.timer(settings.graph_refresh_interval_s, name="mmbee.graph.refresh")
    async def refresh_cache() -> None:
        await runtime.tick()

    @ctx.app.page("/mmbee/graph/")
    async def graph_state(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.json(runtime.describe())

    @ctx.app.page("/mmbee/graph/users/{user_id}/")
    async def user_node(self: faust.web.View, request: faust.web.Request, user_id: str) -> Any:
        return self.json(runtime.node_view("user", user_id))

    @ctx.app.page("/mmbee/graph/authors/{author_id}/")
    async def author_node(self: faust.web.View, request: faust.web.Request, author_id: str) -> Any:
        return self.json(runtime.node_view("author", author_id))
