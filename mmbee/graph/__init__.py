"""mmbee.graph: U2A/A2A gifting graphs, MMBee's five metapath expansions, GraphCL, walk cache.

Never imports Faust, Kafka, streams or settings; networkx only in `convert.py`; torch only in
`graphcl.py` (loaded on first use of a GraphCL name).
Read in this order: `state.py` (the graph), `metapaths.py` (expansions of one node), `bulk.py`
(every node at once, bitwise equal), `walk_cache.py` (serving / point-in-time reads),
`graphcl.py` (node embeddings), `convert.py` (networkx). Design choices: docs/graph.md.

The API in five lines (what the scorer and the agents use):

    graph = GiftGraph(GraphConfig())                  # or build(gifts, GraphConfig())
    cache = WalkCache(graph, MemoryCacheStore())      # or RocksCacheStore(path)
    cache.observe(gift)                               # a GiftEvent, in event-time order
    cache.user_expansions(user_id, now_ms)   -> {"u2a2u": [(user_id, w)...], "u2a2u2a": [(author_id, w)...], "u2a2a": [...]}
    cache.author_expansions(author_id, now_ms) -> {"a2a": [(author_id, w)...], "a2u2a": [...]}

* Point in time (training examples): replay gifts with `cache.observe(g)` in time order and, at
  an impression at time t, call `user_expansions(user, t)` / `author_expansions(author, t)`
  after observing exactly the gifts with ts_ms < t. You get what serving would have read then:
  the node is recomputed first if a gift touched its neighbourhood or its entry is older than
  `CacheConfig.max_staleness_ms` (event time). Lists are heaviest first, at most
  `ExpansionConfig.top_n` (20) long, empty for unknown nodes; weights are metapath-walk
  probabilities (a2a: the shrunk co-gifting cosine). `METAPATH_KIND` says whether a list holds
  users or authors.
* Serving: `cache.lookup_user(user_id)` / `cache.lookup_author(author_id)` only read; a miss
  returns empty lists at once and schedules the node; `cache.refresh(now_ms)` recomputes what is
  dirty or stale, `cache.rebuild()` is the periodic full job.
* No cache: `user_expansions(graph, user_id)` / `author_expansions(graph, author_id)` compute
  from the current graph directly.
* Embeddings: `emb = NodeEmbeddings.load(path)` (a checkpoint from `train_graphcl` /
  `mmbee graph train`); `emb.lookup(ids, "user" | "author") -> (vectors (n, d), known (n,))`,
  unknown ids give zero vectors and False; `emb.for_expansions(expansions, n)` gives each
  metapath's list as padded `ExpansionTensors(vectors (n, d), weights (n,), mask (n,))`.
"""

from typing import Any

from mmbee.graph.metapaths import (
    AUTHOR_METAPATHS,
    METAPATH_KIND,
    USER_METAPATHS,
    ExpansionConfig,
    Expansions,
    author_expansions,
    expand,
    user_expansions,
)
from mmbee.graph.state import GiftGraph, GraphConfig, build, load_graph, save_graph
from mmbee.graph.walk_cache import (
    CacheConfig,
    CacheEntry,
    MemoryCacheStore,
    RocksCacheStore,
    WalkCache,
)

__all__ = [
    "GiftGraph",
    "GraphConfig",
    "build",
    "save_graph",
    "load_graph",
    "ExpansionConfig",
    "Expansions",
    "USER_METAPATHS",
    "AUTHOR_METAPATHS",
    "METAPATH_KIND",
    "expand",
    "user_expansions",
    "author_expansions",
    "CacheConfig",
    "CacheEntry",
    "MemoryCacheStore",
    "RocksCacheStore",
    "WalkCache",
    "GraphCLConfig",
    "GraphCL",
    "NodeEmbeddings",
    "ExpansionTensors",
    "train_graphcl",
]

_LAZY = {"GraphCLConfig", "GraphCL", "NodeEmbeddings", "ExpansionTensors", "train_graphcl"}


def __getattr__(name: str) -> Any:
    """GraphCL names import torch on first use only: the graph state and cache do not need it."""
    if name in _LAZY:
        from mmbee.graph import graphcl

        return getattr(graphcl, name)
    raise AttributeError(f"module 'mmbee.graph' has no attribute {name!r}")
