"""The networkx boundary: export the U2A/A2A graph (GraphML) and summarise it.

networkx is imported here only, and lazily. Node names carry their type (`u:<id>`, `a:<id>`),
so a user and an author with the same id stay two nodes. Edge weights are decayed to `at_ms`
(default: the graph's watermark).

Example:
    >>> from mmbee.graph.state import GiftGraph, GraphConfig
    >>> g = GiftGraph(GraphConfig())
    >>> for u, a in [("u1", "a1"), ("u1", "a2"), ("u2", "a2")]:
    ...     _ = g.add_gift(u, a, 1_750_000_000_000, 1.0)
    >>> nxg = to_networkx(g)
    >>> sorted(nxg.nodes), nxg.edges["a:a1", "a:a2"]["relation"]
    (['a:a1', 'a:a2', 'u:u1', 'u:u2'], 'a2a')
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbee.graph.metapaths import a2a_neighbours
from mmbee.graph.state import GiftGraph

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["to_networkx", "write_graphml", "graph_stats"]


def to_networkx(graph: GiftGraph, *, at_ms: int | None = None, a2a: bool = True) -> nx.Graph:
    """An undirected networkx Graph: U2A edges (`relation="u2a"`: count, value, weight,
    last_ts_ms) and, with `a2a`, each author's top-k A2A edges (`relation="a2a"`: similarity)."""
    import networkx as nx

    at = at_ms if at_ms is not None else (graph.watermark_ms or 0)
    out = nx.Graph()
    for u in graph.users():
        out.add_node("u:" + u, kind="user", bipartite=0)
    for a in graph.authors():
        out.add_node("a:" + a, kind="author", bipartite=1)
    for u in graph.users():
        for a in sorted(graph.user_out[u]):
            count, value_micro, w, last = graph.edge(u, a)  # type: ignore[misc]
            out.add_edge(
                "u:" + u,
                "a:" + a,
                relation="u2a",
                count=count,
                value=value_micro / 1e6,
                weight=graph.weight_at(w, at),
                last_ts_ms=last,
            )
    if a2a:
        for a in graph.authors():
            for b, sim in a2a_neighbours(graph, a):
                out.add_edge("a:" + a, "a:" + b, relation="a2a", similarity=sim, weight=sim)
    return out


def write_graphml(
    graph: GiftGraph, path: Path | str, *, at_ms: int | None = None, a2a: bool = True
) -> Path:
    """Write the graph as GraphML (readable by networkx, Gephi, igraph); returns the path."""
    import networkx as nx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nx.write_graphml(to_networkx(graph, at_ms=at_ms, a2a=a2a), str(path))
    return path


def _describe(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "max": 0.0}
    return {
        "mean": round(statistics.fmean(values), 4),
        "median": float(statistics.median(values)),
        "max": float(max(values)),
    }


def graph_stats(graph: GiftGraph) -> dict[str, Any]:
    """Sizes, degree distributions, connected components of U2A, and A2A coverage."""
    import networkx as nx

    u2a = to_networkx(graph, a2a=False)
    components = sorted((len(c) for c in nx.connected_components(u2a)), reverse=True)
    top1 = [nb[0][1] for a in graph.authors() if (nb := a2a_neighbours(graph, a, 1))]
    n_u, n_a, n_e = graph.num_users, graph.num_authors, graph.num_edges
    return {
        "users": n_u,
        "authors": n_a,
        "u2a_edges": n_e,
        "gifts": graph.num_gifts,
        "watermark_ms": graph.watermark_ms,
        "density": round(n_e / (n_u * n_a), 6) if n_u and n_a else 0.0,
        "user_degree": _describe([len(r) for r in graph.user_out.values()]),
        "author_degree": _describe([len(r) for r in graph.author_in.values()]),
        "components": len(components),
        "largest_component": components[0] if components else 0,
        "a2a_pairs": graph.num_a2a_pairs,
        "authors_with_a2a": len(top1),
        "a2a_top1_similarity_mean": round(statistics.fmean(top1), 4) if top1 else 0.0,
    }
