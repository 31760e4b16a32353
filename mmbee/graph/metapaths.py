"""MMBee's five metapath expansions by exact weighted aggregation over the U2A / A2A graphs.

Each metapath is a walk with fixed node types. Steps follow transition probabilities:
    u -> a   W(u, a) / sum_a' W(u, a')            (a user's decayed gifting distribution)
    a -> u   W(u, a) / sum_u' W(u', a)            (an author's decayed donor distribution)
    a -> a'  sim(a, a') / sum over a's top-k A2A neighbours (shrunk co-gifting cosine)
and an expansion's weight is the probability that the walk from the target ends at that node,
computed exactly (no sampling) by sparse propagation, with two bounds that keep it cheap and
deterministic: a node expands only its `max_neighbors` heaviest neighbours, and only the
`beam_width` heaviest intermediate nodes of a hop expand further. Ties break by id; sums run in
a fixed order, so the result is a pure function of the graph state.

    u2a2u    users who gift the same authors as u (u itself excluded)
    u2a2u2a  authors those users gift, excluding every author u already gifted
    u2a2a    A2A neighbours of u's authors
    a2a      a's top A2A neighbours; the weight is the similarity itself, not a probability
    a2u2a    authors that a's donors also gift (a itself excluded)

Example:
    >>> from mmbee.graph.state import GiftGraph, GraphConfig
    >>> g = GiftGraph(GraphConfig(weight_by="count"))
    >>> for u, a in [("u1", "a1"), ("u2", "a1"), ("u2", "a2")]:
    ...     _ = g.add_gift(u, a, 1_750_000_000_000, 1.0)
    >>> user_expansions(g, "u1")["u2a2u2a"]
    [('a2', 0.25)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Literal, TypeVar

from mmbee.graph.state import GiftGraph

__all__ = [
    "Metapath",
    "USER_METAPATHS",
    "AUTHOR_METAPATHS",
    "METAPATH_KIND",
    "Expansion",
    "Expansions",
    "ExpansionConfig",
    "Transitions",
    "expand",
    "user_expansions",
    "author_expansions",
    "a2a_neighbours",
    "empty_expansions",
]

Metapath = Literal["u2a2u", "u2a2u2a", "u2a2a", "a2a", "a2u2a"]
USER_METAPATHS: tuple[Metapath, ...] = ("u2a2u", "u2a2u2a", "u2a2a")
AUTHOR_METAPATHS: tuple[Metapath, ...] = ("a2a", "a2u2a")
METAPATH_KIND: dict[str, Literal["user", "author"]] = {
    "u2a2u": "user",
    "u2a2u2a": "author",
    "u2a2a": "author",
    "a2a": "author",
    "a2u2a": "author",
}
"""The node type each metapath returns."""

Expansion = list[tuple[str, float]]
"""(node id, weight) pairs, heaviest first, ties by id."""
Expansions = dict[str, Expansion]
"""Metapath name -> expansion."""

_Step = list[tuple[str, float]]


@dataclass(frozen=True)
class ExpansionConfig:
    """Bounds of the metapath aggregation.

    Attributes:
        top_n: N, the length of every returned expansion (MMBee leaves it open; default 20).
        beam_width: intermediate nodes kept per hop (heaviest first).
        max_neighbors: neighbours a node expands to (heaviest first); the rest's mass is dropped.

    Example:
        >>> ExpansionConfig(top_n=10).beam_width
        32
    """

    top_n: int = 20
    beam_width: int = 32
    max_neighbors: int = 32

    def __post_init__(self) -> None:
        for name in ("top_n", "beam_width", "max_neighbors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def empty_expansions(kind: Literal["user", "author"]) -> Expansions:
    """The expansions of a node the graph does not know: every metapath empty."""
    return {m: [] for m in (USER_METAPATHS if kind == "user" else AUTHOR_METAPATHS)}


_W = TypeVar("_W", int, float)


def _rank(kv: tuple[str, _W]) -> tuple[_W, str]:
    return (-kv[1], kv[0])


def _top(items: Iterable[tuple[str, _W]], n: int) -> list[tuple[str, _W]]:
    """The n heaviest (id, weight) pairs, heaviest first, ties by id."""
    s = sorted(items, key=itemgetter(1), reverse=True)  # C sort; the tie fix-up below is short
    if len(s) > n:
        kth, end = s[n - 1][1], n
        while end < len(s) and s[end][1] == kth:
            end += 1
        del s[end:]
    s.sort(key=_rank)
    return s[:n]


def a2a_neighbours(graph: GiftGraph, author_id: str, k: int | None = None) -> Expansion:
    """The author's top-k A2A neighbours by shrunk cosine (k: `graph.config.a2a_top_k`)."""
    k = graph.config.a2a_top_k if k is None else k
    return _top(((b, s) for b, s in graph.similarities(author_id) if s > 0.0), k)


@dataclass
class Transitions:
    """Per-node transition lists of one graph state, computed on first use and memoised.

    Share one instance across many expansions of the same state (a full cache rebuild); build
    a new one after the graph changes.

    Example:
        >>> from mmbee.graph.state import GiftGraph, GraphConfig
        >>> g = GiftGraph(GraphConfig())
        >>> _ = g.add_gift("u1", "a1", 1_750_000_000_000, 1.0)
        >>> Transitions(g, ExpansionConfig()).user_to_author("u1")
        [('a1', 1.0)]
    """

    graph: GiftGraph
    config: ExpansionConfig
    _ua: dict[str, _Step] = field(default_factory=dict)
    _au: dict[str, _Step] = field(default_factory=dict)
    _aa: dict[str, _Step] = field(default_factory=dict)
    _a2a: dict[str, Expansion] = field(default_factory=dict)

    def _rows(self, row: dict[str, int] | None, total: int) -> _Step:
        if not row or total <= 0:
            return []
        heavy = _top(row.items(), self.config.max_neighbors)
        return [(x, w / total) for x, w in heavy]  # exact ints -> one correctly rounded float

    def user_to_author(self, u: str) -> _Step:
        """u -> a transition probabilities, heaviest first."""
        s = self._ua.get(u)
        if s is None:
            g = self.graph
            s = self._ua[u] = self._rows(g.user_out.get(u), g.user_total.get(u, 0))
        return s

    def author_to_user(self, a: str) -> _Step:
        """a -> u transition probabilities, heaviest first."""
        s = self._au.get(a)
        if s is None:
            g = self.graph
            s = self._au[a] = self._rows(g.author_in.get(a), g.author_total.get(a, 0))
        return s

    def a2a(self, a: str) -> Expansion:
        """a's top-k A2A neighbours with their similarity."""
        s = self._a2a.get(a)
        if s is None:
            s = self._a2a[a] = a2a_neighbours(self.graph, a)
        return s

    def author_to_author(self, a: str) -> _Step:
        """a -> a' transition probabilities over the top-k A2A neighbours."""
        s = self._aa.get(a)
        if s is None:
            nb = self.a2a(a)
            total = sum(w for _, w in nb)
            s = self._aa[a] = [(b, w / total) for b, w in nb] if total > 0 else []
        return s


def _hop(frontier: _Step, step: Callable[[str], _Step]) -> dict[str, float]:
    """One walk step: the mass reaching each next node, summed over the frontier in id order
    (the order of a CSR product: `mmbee.graph.bulk` gets bitwise the same sums)."""
    out: dict[str, float] = {}
    get = out.get
    for x, mass in sorted(frontier):
        for y, p in step(x):
            out[y] = get(y, 0.0) + mass * p
    return out


def _beam(scores: dict[str, float], width: int, exclude: str | None = None) -> _Step:
    return _top(((k, v) for k, v in scores.items() if k != exclude and v > 0.0), width)


def _u2a2u_beam(t: Transitions, user_id: str) -> _Step:
    """u2a2u scores, the heaviest max(top_n, beam_width), u excluded."""
    cfg = t.config
    first = t.user_to_author(user_id)[: cfg.beam_width]  # (a, P(u -> a))
    return _beam(_hop(first, t.author_to_user), max(cfg.top_n, cfg.beam_width), user_id)


def expand(
    graph: GiftGraph,
    node_id: str,
    metapath: Metapath,
    config: ExpansionConfig | None = None,
    transitions: Transitions | None = None,
) -> Expansion:
    """One metapath expansion of one node (empty for an unknown node)."""
    config = config or ExpansionConfig()
    t = transitions or Transitions(graph, config)
    n, width = config.top_n, config.beam_width
    if metapath == "u2a2u":
        return _u2a2u_beam(t, node_id)[:n]
    if metapath == "u2a2u2a":
        gifted = graph.user_out.get(node_id, {})
        third = _hop(_u2a2u_beam(t, node_id)[:width], t.user_to_author)
        return _top(((a, w) for a, w in third.items() if a not in gifted and w > 0.0), n)
    if metapath == "u2a2a":
        first = t.user_to_author(node_id)[:width]
        return _beam(_hop(first, t.author_to_author), n)
    if metapath == "a2a":
        return t.a2a(node_id)[:n]
    if metapath == "a2u2a":
        first = t.author_to_user(node_id)[:width]
        return _beam(_hop(first, t.user_to_author), n, node_id)
    raise ValueError(f"unknown metapath {metapath!r}; known: {list(METAPATH_KIND)}")


def user_expansions(
    graph: GiftGraph,
    user_id: str,
    config: ExpansionConfig | None = None,
    transitions: Transitions | None = None,
) -> Expansions:
    """u2a2u, u2a2u2a and u2a2a of one user (all empty for an unknown user)."""
    config = config or ExpansionConfig()
    t = transitions or Transitions(graph, config)
    if not t.user_to_author(user_id):
        return empty_expansions("user")
    n, width = config.top_n, config.beam_width
    users = _u2a2u_beam(t, user_id)
    gifted = graph.user_out.get(user_id, {})
    third = _hop(users[:width], t.user_to_author)
    u2a2u2a = _top(((a, w) for a, w in third.items() if a not in gifted and w > 0.0), n)
    u2a2a = _beam(_hop(t.user_to_author(user_id)[:width], t.author_to_author), n)
    return {"u2a2u": users[:n], "u2a2u2a": u2a2u2a, "u2a2a": u2a2a}


def author_expansions(
    graph: GiftGraph,
    author_id: str,
    config: ExpansionConfig | None = None,
    transitions: Transitions | None = None,
) -> Expansions:
    """a2a and a2u2a of one author (all empty for an unknown author)."""
    config = config or ExpansionConfig()
    t = transitions or Transitions(graph, config)
    if not t.author_to_user(author_id):
        return empty_expansions("author")
    return {m: expand(graph, author_id, m, config, t) for m in AUTHOR_METAPATHS}
