"""The gift graph's stream state: the exact graph, the ids it applied, and one gift's step.

The `graph` stream component (`mmbee.streams.components.graph`) holds the whole U2A/A2A graph
on one worker. Its state is a `GiftGraph` (`mmbee.graph.state`) plus a `DedupeWindow` of the
gift ids applied within a horizon of event time; it is stored as one row per user (`UserRow`):
the user's exact edges and the ids of the user's gifts within the horizon. `apply_gift` is the
step on a gift (pure as `mmbee.streams.runtime.component` means it: it updates the state in
place and touches nothing else). The walk cache (derived, rebuilt after every load) is not part
of the state: the step only says which nodes it touched (`Applied`), and the agent marks them.

Choices (issue 18):
- A duplicate id is a `duplicate` problem (the envelope counts it, never dead-letters it); a
  gift older than the horizon before the watermark is `late`: past the horizon its id may be
  forgotten, so it could not be told from a duplicate; a gift the graph refuses (too far before
  `GraphConfig.epoch_ms`, a NUL in an id) is a `validation_error`.
- `GraphState` equality is the graph's fingerprint and the remembered ids by user: two states
  are equal when they hold the same exact graph and would refuse the same duplicates.

Example:
    >>> from mmbee.graph import GraphConfig
    >>> from mmbee.schemas.events import GiftEvent
    >>> s = GraphState.empty(GraphConfig(), horizon_ms=3_600_000)
    >>> g = GiftEvent(event_id="g1", ts_ms=1_750_000_000_000, user_id="u1", author_id="a1",
    ...               live_id="l1", gift_value=1.0)
    >>> apply_gift(s, g)
    Applied(user_id='u1', author_id='a1', rows=('u1',))
    >>> apply_gift(s, g)
    ('duplicate', 'applied already')
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mmbee.graph import GiftGraph, GraphConfig, WalkCache
from mmbee.graph.state import Edge, restore, user_row
from mmbee.schemas.events import DeadLetterReason, GiftEvent
from mmbee.schemas.graph import AuthorExpansions, UserExpansions
from mmbee.state.dedupe import DedupeWindow

__all__ = [
    "Applied",
    "CacheSchedule",
    "GraphState",
    "Problem",
    "UserRow",
    "UserRowCodec",
    "apply_gift",
    "describe",
    "expansion_messages",
    "node_view",
    "samples",
    "state_digest",
]

UserRow = tuple[dict[str, Edge], dict[str, int]]
"""One user's stored row: (exact edges by author, `mmbee.graph.state.user_row`; {gift id: ts_ms}
of the user's gifts within the dedupe horizon)."""


@dataclass(frozen=True)
class Applied:
    """A gift changed the graph: the nodes whose walk-cache entries it touched, and the users
    whose stored rows changed (its user, and users whose old ids left the horizon), sorted."""

    user_id: str
    author_id: str
    rows: tuple[str, ...]


Problem = tuple[DeadLetterReason, str]
"""Why a gift was refused: (dead-letter reason, detail)."""


@dataclass(eq=False)
class GraphState:
    """The exact gift graph and the ids it applied within the horizon, by the user row keeping
    them."""

    graph: GiftGraph
    seen: DedupeWindow

    @classmethod
    def empty(cls, config: GraphConfig, horizon_ms: int) -> GraphState:
        return cls(GiftGraph(config), DedupeWindow(horizon_ms))

    @classmethod
    def from_rows(
        cls, config: GraphConfig, horizon_ms: int, rows: Iterable[tuple[str, UserRow]]
    ) -> GraphState:
        """The state stored as these user rows (bit for bit the graph of their gifts)."""
        listed = list(rows)
        seen = DedupeWindow(horizon_ms)
        seen.load((u, ids) for u, (_, ids) in listed)
        return cls(restore(config, [(u, edges) for u, (edges, _) in listed]), seen)

    def row(self, user_id: str) -> UserRow:
        """The user's stored row."""
        return user_row(self.graph, user_id), self.seen.of(user_id)

    def rows(self) -> Iterator[tuple[str, UserRow]]:
        """Every user's row, by user id."""
        for u in self.graph.users():
            yield u, self.row(u)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GraphState):
            return NotImplemented
        return (
            self.graph.config == other.graph.config
            and self.seen.horizon_ms == other.seen.horizon_ms
            and self.graph.fingerprint() == other.graph.fingerprint()
            and dict(self.rows()) == dict(other.rows())
        )

    __hash__ = None  # type: ignore[assignment]  # mutable


class UserRowCodec:
    """A `UserRow` as the table stores it: JSON `{"e": edges, "s": {event_id: ts_ms}}` (Python's
    json keeps the big fixed-point ints exact)."""

    def dumps(self, row: UserRow) -> bytes:
        return json.dumps({"e": row[0], "s": row[1]}).encode()

    def loads(self, raw: bytes) -> UserRow:
        obj = json.loads(raw)
        return obj["e"], obj["s"]


def apply_gift(state: GraphState, gift: GiftEvent) -> Applied | Problem:
    """One gift: a duplicate id, a late gift or one the graph refuses is a `Problem`; any other
    is added to the graph and remembered (in place), and what it touched returned."""
    graph, seen = state.graph, state.seen
    if gift.event_id in seen:  # a redelivery: changes nothing
        return "duplicate", "applied already"
    horizon = (graph.watermark_ms or gift.ts_ms) - seen.horizon_ms
    if gift.ts_ms < horizon:
        return "late", f"ts_ms {gift.ts_ms} is before the dedupe horizon {horizon}"
    try:
        graph.add_gift(gift.user_id, gift.author_id, gift.ts_ms, gift.gift_value)
    except ValueError as exc:  # e.g. too far before GraphConfig.epoch_ms
        return "validation_error", str(exc)
    wm = graph.watermark_ms or gift.ts_ms
    changed = seen.remember(gift.user_id, gift.event_id, gift.ts_ms, wm)
    return Applied(gift.user_id, gift.author_id, tuple(sorted(changed)))


@dataclass
class CacheSchedule:
    """When the walk cache is refreshed (dirty nodes, stale entries) or fully rebuilt: after a
    (re)load, when event time moved `rebuild_interval_ms` since the last rebuild, and once the
    stream was quiet `idle_rebuild_s` (monotonic seconds) after changes: late gifts do not move
    event time, so without it their 2-3 hop effects would wait until the stream moves on.

    Example:
        >>> from mmbee.graph import GraphConfig
        >>> plan = CacheSchedule(rebuild_interval_ms=1_000, idle_rebuild_s=5.0, last_gift_s=0.0)
        >>> from mmbee.graph.walk_cache import MemoryCacheStore
        >>> g = GiftGraph(GraphConfig())
        >>> cache = WalkCache(g, MemoryCacheStore())
        >>> plan.due(g, cache, now_s=1.0)  # never rebuilt
        'rebuild'
        >>> plan.rebuilt(g); plan.due(g, cache, now_s=1.0) is None
        True
    """

    rebuild_interval_ms: int
    idle_rebuild_s: float
    last_gift_s: float
    needs_rebuild: bool = False
    rebuilt_at_ms: int | None = None
    rebuilt_gifts: int = -1  # num_gifts at the last full rebuild

    def due(self, graph: GiftGraph, cache: WalkCache, now_s: float) -> str | None:
        """ "rebuild", "refresh" (`cache` has dirty or stale entries) or None."""
        wm = graph.watermark_ms or 0
        last = self.rebuilt_at_ms
        due = last is None or wm >= last + self.rebuild_interval_ms
        quiet = now_s - self.last_gift_s >= self.idle_rebuild_s
        if self.needs_rebuild or due or (quiet and graph.num_gifts != self.rebuilt_gifts):
            return "rebuild"
        return "refresh" if cache.pending or cache.stale_keys() else None

    def rebuilt(self, graph: GiftGraph) -> None:
        """A full rebuild of `graph`'s cache finished."""
        self.rebuilt_at_ms, self.needs_rebuild = graph.watermark_ms or 0, False
        self.rebuilt_gifts = graph.num_gifts


def expansion_messages(
    cache: WalkCache, keys: Iterable[str]
) -> Iterator[tuple[str, str, UserExpansions | AuthorExpansions]]:
    """(catalogue topic, node id, message) of the cached expansions of `keys` ("u:<id>" /
    "a:<id>"); evicted entries are left out (serving keeps the last entry, then misses)."""
    for key in keys:
        entry = cache.store.get(key)
        if entry is None:
            continue
        node = key[2:]
        if key[0] == "u":
            yield (
                "graph.user_expansions",
                node,
                UserExpansions(user_id=node, built_at_ms=entry.built_at_ms, **entry.expansions),
            )
        else:
            yield (
                "graph.author_expansions",
                node,
                AuthorExpansions(author_id=node, built_at_ms=entry.built_at_ms, **entry.expansions),
            )


def node_view(cache: WalkCache | None, kind: str, node_id: str) -> dict[str, Any]:
    """The cached expansions of one node (what was last published for it)."""
    if cache is None:
        return {"loaded": False}
    entry = cache.store.get(("u:" if kind == "user" else "a:") + node_id)
    if entry is None:
        return {"loaded": True, "cached": False}
    return {"loaded": True, "cached": True, "built_at_ms": entry.built_at_ms, **entry.expansions}


def samples(state: GraphState | None) -> Iterator[tuple[str, dict[str, str], float]]:
    """The graph's size as Prometheus samples (name, labels, value)."""
    graph = None if state is None else state.graph
    yield "mmbee_graph_loaded", {}, 0.0 if graph is None else 1.0
    if graph is not None:
        yield "mmbee_graph_users", {}, float(graph.num_users)
        yield "mmbee_graph_authors", {}, float(graph.num_authors)
        yield "mmbee_graph_edges", {}, float(graph.num_edges)
        yield "mmbee_graph_gifts", {}, float(graph.num_gifts)


def describe(
    state: GraphState | None, cache: WalkCache | None, rebuilt_gifts: int
) -> dict[str, Any]:
    """Sizes, watermark, walk-cache backlog and the digest of the exact graph (equal digests =
    equal graphs; compare with `state_digest(build(gifts, config))`)."""
    if state is None or cache is None:
        return {"loaded": False}
    graph = state.graph
    return {
        "loaded": True,
        "users": graph.num_users,
        "authors": graph.num_authors,
        "edges": graph.num_edges,
        "gifts": graph.num_gifts,
        "watermark_ms": graph.watermark_ms,
        "pending": cache.pending,
        "stale": len(cache.stale_keys()),
        "rebuilt_at_gifts": rebuilt_gifts,
        "digest": state_digest(graph),
    }


def state_digest(graph: GiftGraph) -> str:
    """sha256 of the graph's canonical fingerprint (equal digests = equal graphs)."""
    return hashlib.sha256(repr(graph.fingerprint()).encode()).hexdigest()
