"""Component `graph`: gifts -> exact U2A/A2A graph -> walk cache -> expansion topics.

Metapath expansions walk 2-3 hops across users and authors, so no partitioning keeps them local;
gifts are sparse, so one worker holds the whole graph (docs/graph.md). Two agents:

- `graph_gifts` over `live.gifts` (every partition, every worker) dead-letters bad input and
  forwards valid gifts to the internal one-partition topic `graph.gifts`: one owner of the graph
  at a time, whatever the worker count; Faust moves it (and its table) on failure.
- `graph` over `graph.gifts` feeds each gift to `apply` (core: `mmbee.state.graph`). A duplicate
  id is counted, an old or refused gift dead-lettered; any other is applied, its nodes marked in
  the walk cache and the user rows it changed written (`CODEC`), in one table write per row: a
  redelivered gift is either in its row (a duplicate) or not applied. The graph equals a batch
  build of the same gifts, bit for bit, in any order.

A timer refreshes the walk cache on the executor (`CacheSchedule`: when to rebuild it all) and
publishes what it recomputed to the compacted `graph.user_expansions` / `graph.author_expansions`.
After a rebalance the new owner reloads the graph from its table, and rebuilds.

Example:
    >>> from mmbee.settings import Settings
    >>> config(Settings(graph_dedupe_horizon_ms=60_000)).dedupe_horizon_ms
    60000
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP, EventT, StreamT

from mmbee.graph import CacheConfig, ExpansionConfig, GraphConfig, WalkCache
from mmbee.graph.walk_cache import MemoryCacheStore
from mmbee.schemas.events import GiftEvent
from mmbee.settings import Settings
from mmbee.state import graph as core
from mmbee.state.graph import Applied, GraphState, state_digest
from mmbee.streams.codec import Rejected
from mmbee.streams.runtime import context
from mmbee.streams.runtime.agent import Envelope
from mmbee.streams.runtime.component import Component, Reject, Step
from mmbee.streams.runtime.context import Sample, StreamContext
from mmbee.streams.runtime.rocksdb import rocksdb_options

__all__ = ["AGENT_GRAPH", "CODEC", "COMPONENT", "INTERNAL_TOPIC", "TABLE", "GraphRuntime",
           "apply", "config", "register", "state_digest"]  # fmt: skip

log = logging.getLogger("mmbee.streams.graph")

AGENT_FORWARD, AGENT_GRAPH = "graph_gifts", "graph"
INTERNAL_TOPIC = "graph.gifts"
"""Suffix of the internal one-partition topic (full name: settings prefix + this)."""
TABLE = "graph_users"
"""user_id -> the user's row (`CODEC`: exact edges and the gift ids within the horizon)."""
CODEC = core.UserRowCodec()
"""How one user's row of the state is stored (the state is the set of its users' rows)."""


@dataclass(frozen=True)
class GraphAgentConfig:
    """The graph, expansion and cache configs, and the schedule.

    Attributes:
        dedupe_horizon_ms: how long (event time) gift ids are remembered.
        rebuild_interval_ms: event time between full cache rebuilds.
        idle_rebuild_s: quiet seconds after which a changed graph is rebuilt (`CacheSchedule`).
        refresh_interval_s: how often the timer refreshes the walk cache.
    """

    graph: GraphConfig
    expansion: ExpansionConfig
    cache: CacheConfig
    dedupe_horizon_ms: int
    rebuild_interval_ms: int
    idle_rebuild_s: float
    refresh_interval_s: float


def config(settings: Settings) -> GraphAgentConfig:
    """The graph component's config under these settings."""
    return GraphAgentConfig(
        *settings.graph_configs(), settings.graph_dedupe_horizon_ms,
        settings.graph_rebuild_interval_ms, settings.graph_idle_rebuild_s,
        settings.graph_refresh_interval_s,
    )  # fmt: skip


def apply(cfg: GraphAgentConfig, state: GraphState, gift: GiftEvent) -> Step[GraphState, Applied]:
    """One gift on the graph state (updated in place): outputs what it touched (the walk-cache
    trigger and the rows to write), or rejects it (`duplicate`, `late`, `validation_error`)."""
    done = core.apply_gift(state, gift)
    if isinstance(done, Applied):
        return Step(state, outputs=(done,))
    return Step(state, rejects=(Reject(done[0], done[1], gift.event_id),))


class GraphRuntime:
    """The graph agent's worker: the state (None until loaded), its walk cache, the schedule."""

    def __init__(self, ctx: StreamContext, table: Any, cfg: GraphAgentConfig) -> None:
        self.ctx, self.table, self.cfg = ctx, table, cfg
        self.state: GraphState | None = None
        self.cache: WalkCache | None = None
        self.lock = asyncio.Lock()
        self.schedule = core.CacheSchedule(cfg.rebuild_interval_ms, cfg.idle_rebuild_s,
                                           ctx.monotonic())  # fmt: skip
        self.internal_topic = ctx.settings.topic(INTERNAL_TOPIC)
        self.forwarder = Envelope(ctx, AGENT_FORWARD, ("live.gifts",))
        self.envelope = Envelope(ctx, AGENT_GRAPH, {self.internal_topic: "live.gifts"})

    async def forward(self, ev: EventT) -> None:
        """Validate one `live.gifts` message and forward it to the one-partition topic."""
        decoded = self.forwarder.decode(ev)
        if type(decoded) is Rejected:
            await self.forwarder.rejected(ev, decoded)
        else:
            await self.ctx.publisher.send(self.internal_topic, b"gifts", bytes(ev.value))
            self.ctx.metrics.count(AGENT_FORWARD, "forwarded")
        self.ctx.metrics.count(AGENT_FORWARD, "processed")

    def _load(self) -> None:
        """The state from the (recovered) table, and a fresh walk cache over it."""
        context.clear_event_context()
        cfg, rows = self.cfg, [(k.decode(), CODEC.loads(v)) for k, v in self.table.items()]
        self.state = state = GraphState.from_rows(cfg.graph, cfg.dedupe_horizon_ms, rows)
        self.cache = WalkCache(state.graph, MemoryCacheStore(), cfg.cache, cfg.expansion)
        self.schedule.needs_rebuild = True
        self.ctx.metrics.count(AGENT_GRAPH, "loads")
        log.info("graph loaded: %d users, %d gifts", state.graph.num_users, state.graph.num_gifts)

    async def handle(self, ev: EventT) -> None:
        """Apply one `graph.gifts` message (in the agent, so table writes go to partition 0)."""
        metrics = self.ctx.metrics
        decoded = self.envelope.decode(ev, check_key=False)  # keyed b"gifts": one partition
        if type(decoded) is Rejected:
            await self.envelope.rejected(ev, decoded)
            metrics.count(AGENT_GRAPH, "processed")
            return
        async with self.lock:
            if self.state is None:
                self._load()
                context.in_event_context(ev)  # the load read every partition; writes go to this one
            assert self.state is not None and self.cache is not None
            step = apply(self.cfg, self.state, decoded)
            for done in step.outputs:  # still in this event's context
                self.cache.mark_gift(done.user_id, done.author_id)
                for user in done.rows:
                    self.table[user.encode()] = CODEC.dumps(self.state.row(user))
                metrics.count(AGENT_GRAPH, "applied")
                self.schedule.last_gift_s = self.ctx.monotonic()
                metrics.gauge(AGENT_GRAPH, "watermark_ms", self.state.graph.watermark_ms or 0)
        await self.envelope.reject_step(ev, step.rejects)  # a duplicate counted, others DLQ
        metrics.count(AGENT_GRAPH, "processed")

    async def on_recovered(self) -> None:
        """After a rebalance, once the table is recovered, the new owner of `graph.gifts` loads
        the graph at once: there may be no next gift (the old one may have applied them all)."""
        try:
            owns = TP(self.internal_topic, 0) in self.ctx.app.assignor.assigned_actives()
        except AttributeError:  # no assignor (test context)
            return
        if owns and self.state is None:
            async with self.lock:
                if self.state is None:
                    self._load()

    async def tick(self) -> int:
        """Refresh or rebuild the walk cache off the loop; publish what changed, return how many."""
        if self.state is None or self.cache is None:
            return 0
        async with self.lock:
            graph, cache = self.state.graph, self.cache
            todo = self.schedule.due(graph, cache, self.ctx.monotonic())
            if todo is not None:  # the cache's rebuild or refresh, off the event loop
                await self.ctx.run_blocking(getattr(cache, todo))
                if todo == "rebuild":
                    self.schedule.rebuilt(graph)
                self.ctx.metrics.count(
                    AGENT_GRAPH, "rebuilds" if todo == "rebuild" else "refreshes"
                )
            messages = list(core.expansion_messages(cache, cache.drain_updates()))
        for topic, node, msg in messages:
            await self.ctx.publish(topic, node.encode(), self.ctx.codec.encode(msg))
        self.ctx.metrics.count(AGENT_GRAPH, "published", len(messages))
        return len(messages)

    def on_revoked(self, revoked: set[TP]) -> None:
        """Drop the in-memory state when `graph.gifts` moves away (it reloads on return)."""
        if any(tp.topic == self.internal_topic for tp in revoked):
            self.state, self.cache = None, None
            self.ctx.metrics.count(AGENT_GRAPH, "revocations")

    def samples(self) -> Iterator[Sample]:
        """The graph's size for `/metrics` (runtime.context.Inspectable)."""
        return core.samples(self.state)

    def describe(self) -> dict[str, Any]:
        """Sizes, watermark, cache backlog and the digest of the exact graph (`state_digest`)."""
        return core.describe(self.state, self.cache, self.schedule.rebuilt_gifts)


def register(ctx: StreamContext) -> None:
    """The forwarder, the graph agent, its one-partition table, the refresh timer and the pages
    `/mmbee/graph/`, `/mmbee/graph/users/{id}/`, `/mmbee/graph/authors/{id}/`."""
    cfg = config(ctx.settings)
    internal = ctx.app.topic(ctx.settings.topic(INTERNAL_TOPIC), partitions=1, internal=True,
                             key_serializer="raw", value_serializer="raw")  # fmt: skip
    options = rocksdb_options(ctx.settings) if ctx.settings.store.startswith("rocksdb") else None
    about = "gift graph: user -> exact edges and recent gift ids"
    table = ctx.app.Table(TABLE, default=None, key_type=bytes, value_type=bytes, partitions=1,
                          options=options, help=about)  # fmt: skip
    runtime = GraphRuntime(ctx, table, cfg)
    ctx.runtimes[AGENT_GRAPH] = runtime
    ctx.on_partitions_revoked(runtime.on_revoked)
    table.on_recover(runtime.on_recovered)

    async def graph_gifts(stream: StreamT) -> None:
        async for ev in stream.events():
            await runtime.forward(ev)

    async def graph(stream: StreamT) -> None:
        async for ev in stream.events():
            await runtime.handle(ev)

    ctx.app.agent(ctx.topic("live.gifts"), name="mmbee.graph_gifts")(graph_gifts)
    ctx.app.agent(internal, name="mmbee.graph")(graph)

    @ctx.app.timer(cfg.refresh_interval_s, name="mmbee.graph.refresh")
    async def refresh_cache() -> None:
        await runtime.tick()

    @ctx.app.page("/mmbee/graph/")
    async def graph_state(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.json(runtime.describe())

    @ctx.app.page("/mmbee/graph/users/{user_id}/")
    async def user_node(self: faust.web.View, request: faust.web.Request, user_id: str) -> Any:
        return self.json(core.node_view(runtime.cache, "user", user_id))

    @ctx.app.page("/mmbee/graph/authors/{author_id}/")
    async def author_node(self: faust.web.View, request: faust.web.Request, author_id: str) -> Any:
        return self.json(core.node_view(runtime.cache, "author", author_id))


COMPONENT = Component(name="graph", config=config, apply=apply, codec=CODEC, register=register)
