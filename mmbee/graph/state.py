"""U2A gifting graph and A2A co-gifting similarity, updated one gift at a time in exact arithmetic.

Every edge weight is a time-decayed sum held as a Python integer in fixed point relative to a
fixed epoch: a gift of weight f at event time t adds `round(f * 2**(K + (t - epoch) / h))`
(K = `precision_bits`, h = `half_life_ms`). The weight of an edge "as of" time T is that sum
times `2**-(K + (T - epoch) / h)`: decay is applied lazily at read time, and one factor common to
every edge, so rankings and normalised weights never depend on T. Integer addition is exact and
associative, so the whole state (U2A edges, per-node totals, the A2A dot products, norms and
shared-donor counts) is a pure function of the multiset of gifts: applying them one by one in any
order gives the same state, bit for bit, as `build()` over the log.

A2A similarity is the co-gifting cosine of two authors' decayed donor vectors, shrunk by the
number of shared donors n: `sim(a, b) = cos(w_a, w_b) * n / (n + shrinkage)` (docs/graph.md says
why cosine and not Swing). Dot products and norms are maintained exactly, so a gift by user u to
author a costs O(deg(u)); top-k neighbours are derived on read (`mmbee.graph.metapaths`).

Example:
    >>> g = GiftGraph(GraphConfig())
    >>> t = 1_750_000_000_000
    >>> for i, (u, a) in enumerate([("u1", "a1"), ("u1", "a2"), ("u2", "a1")]):
    ...     _ = g.add_gift(u, a, t + i, 1.0)
    >>> g.num_users, g.num_authors, g.num_edges, g.shared_donors("a1", "a2")
    (2, 2, 3, 1)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "GraphConfig",
    "GiftLike",
    "Edge",
    "GiftGraph",
    "contribution",
    "MIN_BITS",
    "build",
    "apply",
    "save_graph",
    "load_graph",
]

DAY_MS = 24 * 3600 * 1000
MIN_BITS = 16
"""Fewest fixed-point bits a gift's contribution may keep (see `GraphConfig.epoch_ms`)."""
COUNT, VALUE_MICRO, WEIGHT, LAST_TS = 0, 1, 2, 3
"""Positions in an edge list `[count, value_micro, weight_fixed, last_ts_ms]`."""

Edge = list[int]
"""One U2A edge: `[count, value_micro, weight_fixed, last_ts_ms]`, all exact integers.

`value_micro` is the undecayed gift value in millionths; `weight_fixed` the decayed weight in
fixed point (see the module docstring); `last_ts_ms` the latest gift's event time.
"""


@dataclass(frozen=True)
class GraphConfig:
    """How gifts become U2A edge weights and A2A similarities.

    Attributes:
        half_life_ms: half-life of the time decay (event time); default 7 days.
        epoch_ms: fixed reference time of the fixed-point weights (2024-01-01 UTC; set it at or
            before the start of your data). Integers grow by one bit per half-life after it
            (arithmetic slows down slowly over the years); a gift n half-lives before it keeps
            `precision_bits - n` bits, and one that would keep fewer than `MIN_BITS` is rejected
            (`contribution` raises ValueError) rather than silently weighing nothing.
        weight_by: a gift's weight before decay: 1 ("count"), its value, or log(1 + value)
            (default: one whale gift must not drown a user's other interests).
        precision_bits: K, the fixed-point precision of each gift's contribution.
        a2a_shrinkage: n / (n + shrinkage) damping of the cosine by n shared donors.
        a2a_top_k: neighbours kept per author in the A2A graph.

    Example:
        >>> GraphConfig(half_life_ms=DAY_MS).half_life_ms
        86400000
    """

    half_life_ms: int = 7 * DAY_MS
    epoch_ms: int = 1_704_067_200_000
    weight_by: Literal["count", "value", "log1p_value"] = "log1p_value"
    precision_bits: int = 32
    a2a_shrinkage: float = 1.0
    a2a_top_k: int = 20

    def __post_init__(self) -> None:
        if self.half_life_ms <= 0:
            raise ValueError(f"half_life_ms must be > 0, got {self.half_life_ms}")
        if not 8 <= self.precision_bits <= 60:
            raise ValueError(f"precision_bits must be in 8..60, got {self.precision_bits}")
        if self.a2a_shrinkage < 0:
            raise ValueError(f"a2a_shrinkage must be >= 0, got {self.a2a_shrinkage}")
        if self.a2a_top_k < 1:
            raise ValueError(f"a2a_top_k must be >= 1, got {self.a2a_top_k}")
        if self.weight_by not in ("count", "value", "log1p_value"):
            raise ValueError(f"unknown weight_by {self.weight_by!r}")


class GiftLike(Protocol):
    """What the graph reads from a gift (`mmbee.schemas.GiftEvent` is one)."""

    @property
    def event_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def author_id(self) -> str: ...
    @property
    def ts_ms(self) -> int: ...
    @property
    def gift_value(self) -> float: ...


def contribution(ts_ms: int, gift_value: float, config: GraphConfig) -> int:
    """The fixed-point decayed weight one gift adds to its edge: a pure function of the gift."""
    mode = config.weight_by
    f = 1.0 if mode == "count" else (gift_value if mode == "value" else math.log1p(gift_value))
    x = (ts_ms - config.epoch_ms) / config.half_life_ms
    n = math.floor(x)
    m = round(math.ldexp(f * 2.0 ** (x - n), config.precision_bits)) or 1
    if n >= 0:
        return m << n
    if n < MIN_BITS - config.precision_bits:
        raise ValueError(
            f"gift at ts_ms={ts_ms} is {-n} half-lives before GraphConfig.epoch_ms="
            f"{config.epoch_ms}: too little precision left; configure an earlier epoch_ms"
        )
    return m >> -n


class GiftGraph:
    """The U2A bipartite graph and the A2A co-gifting statistics, in memory.

    Users' and authors' adjacency rows share the same edge lists, so one update serves both
    directions. The A2A pair statistics `[dot, shared_donors]` are one list shared by (a, b) and
    (b, a). Mutate only through `add_gift` / `apply`.

    Example:
        >>> g = GiftGraph(GraphConfig(weight_by="count"))
        >>> _ = g.add_gift("u1", "a1", 1_750_000_000_000, 5.0)
        >>> g.edge("u1", "a1")[:2]
        [1, 5000000]
    """

    def __init__(self, config: GraphConfig) -> None:
        self.config = config
        self.user_out: dict[str, dict[str, Edge]] = {}
        self.author_in: dict[str, dict[str, Edge]] = {}
        self.user_total: dict[str, int] = {}
        self.author_total: dict[str, int] = {}
        self.user_last_ms: dict[str, int] = {}
        self.author_last_ms: dict[str, int] = {}
        self.a2a: dict[str, dict[str, list[int]]] = {}
        self.author_norm2: dict[str, int] = {}
        self.watermark_ms: int | None = None
        self.num_gifts = 0

    # --- updates ----------------------------------------------------------------------------
    def add_gift(self, user_id: str, author_id: str, ts_ms: int, gift_value: float) -> bool:
        """Apply one gift; True when it created a new U2A edge. O(deg(user))."""
        c = contribution(ts_ms, gift_value, self.config)
        row = self.user_out.get(user_id)
        if row is None:
            row = self.user_out[user_id] = {}
            self.user_total[user_id] = 0
            self.user_last_ms[user_id] = ts_ms
        e = row.get(author_id)
        new = e is None
        if e is None:
            col = self.author_in.get(author_id)
            if col is None:
                col = self.author_in[author_id] = {}
                self.author_total[author_id] = 0
                self.author_norm2[author_id] = 0
                self.author_last_ms[author_id] = ts_ms
                self.a2a[author_id] = {}
            e = row[author_id] = col[user_id] = [0, 0, 0, ts_ms]
        old = e[2]  # WEIGHT
        e[0] += 1  # COUNT
        e[1] += round(gift_value * 1_000_000)  # VALUE_MICRO
        e[2] = old + c
        if ts_ms > e[3]:  # LAST_TS
            e[3] = ts_ms
        self.user_total[user_id] += c
        self.author_total[author_id] += c
        self.author_norm2[author_id] += (old + old + c) * c  # (old + c)^2 - old^2
        if ts_ms > self.user_last_ms[user_id]:
            self.user_last_ms[user_id] = ts_ms
        if ts_ms > self.author_last_ms[author_id]:
            self.author_last_ms[author_id] = ts_ms
        if self.watermark_ms is None or ts_ms > self.watermark_ms:
            self.watermark_ms = ts_ms
        self.num_gifts += 1
        if len(row) > 1:
            a2a = self.a2a
            arow = a2a[author_id]
            get = arow.get
            for b, eb in row.items():
                if b == author_id:
                    continue
                pair = get(b)
                if pair is None:
                    pair = arow[b] = a2a[b][author_id] = [0, 0]
                pair[0] += c * eb[2]
                if new:
                    pair[1] += 1
        return new

    def apply(self, gift: GiftLike) -> bool:
        """Apply a GiftEvent (or anything with its fields); see `add_gift`."""
        return self.add_gift(gift.user_id, gift.author_id, gift.ts_ms, gift.gift_value)

    # --- reads ------------------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        """Users with at least one gift."""
        return len(self.user_out)

    @property
    def num_authors(self) -> int:
        """Authors with at least one gift."""
        return len(self.author_in)

    @property
    def num_edges(self) -> int:
        """Distinct (user, author) pairs."""
        return sum(len(r) for r in self.user_out.values())

    def edge(self, user_id: str, author_id: str) -> Edge | None:
        """The edge list `[count, value_micro, weight_fixed, last_ts_ms]`, or None."""
        return self.user_out.get(user_id, {}).get(author_id)

    def decay_scale(self, at_ms: int) -> float:
        """log2 of the factor that turns fixed-point weights into weights as of `at_ms`."""
        return -(
            self.config.precision_bits + (at_ms - self.config.epoch_ms) / self.config.half_life_ms
        )

    def weight_at(self, fixed: int, at_ms: int) -> float:
        """A fixed-point weight (edge or total) decayed to event time `at_ms`, as a float."""
        if fixed <= 0:
            return 0.0
        return 2.0 ** (math.log2(fixed) + self.decay_scale(at_ms))

    def shared_donors(self, a: str, b: str) -> int:
        """Number of users who gifted both authors."""
        pair = self.a2a.get(a, {}).get(b)
        return 0 if pair is None else pair[1]

    def similarity(self, a: str, b: str) -> float:
        """Shrunk co-gifting cosine between two authors, in [0, 1] (0 if none shared)."""
        pair = self.a2a.get(a, {}).get(b)
        if pair is None:
            return 0.0
        return self._sim(pair, self.author_norm2[a], self.author_norm2[b])

    def _sim(self, pair: list[int], norm2_a: int, norm2_b: int) -> float:
        dot, n = pair
        if dot <= 0 or norm2_a <= 0 or norm2_b <= 0:
            return 0.0
        cos = math.sqrt((dot / norm2_a) * (dot / norm2_b))  # exact ints -> one rounding each
        return min(1.0, cos) * n / (n + self.config.a2a_shrinkage)

    def similarities(self, a: str) -> Iterator[tuple[str, float]]:
        """(b, sim(a, b)) for every author b sharing a donor with `a`, in no particular order."""
        na = self.author_norm2.get(a, 0)
        norms = self.author_norm2
        for b, pair in self.a2a.get(a, {}).items():
            yield b, self._sim(pair, na, norms[b])

    def users(self) -> list[str]:
        """All users, sorted."""
        return sorted(self.user_out)

    def authors(self) -> list[str]:
        """All authors, sorted."""
        return sorted(self.author_in)

    def fingerprint(self) -> tuple[Any, ...]:
        """A canonical, order-free summary of the whole state, for equality checks."""
        return (
            self.watermark_ms,
            self.num_gifts,
            sorted((u, a, tuple(e)) for u, r in self.user_out.items() for a, e in r.items()),
            sorted(self.user_total.items()),
            sorted(self.author_total.items()),
            sorted(self.user_last_ms.items()),
            sorted(self.author_last_ms.items()),
            sorted(self.author_norm2.items()),
            sorted((a, b, tuple(p)) for a, r in self.a2a.items() for b, p in r.items()),
        )


def apply(graph: GiftGraph, gift: GiftLike) -> GiftGraph:
    """Functional-style update: apply one gift in place and return the graph."""
    graph.apply(gift)
    return graph


def build(gifts: Iterable[GiftLike], config: GraphConfig, *, dedupe: bool = True) -> GiftGraph:
    """Batch build from a log. With `dedupe`, a repeated `event_id` is applied once (as the
    streaming agent does for re-delivered events)."""
    g = GiftGraph(config)
    seen: set[str] = set()
    for gift in gifts:
        if dedupe:
            if gift.event_id in seen:
                continue
            seen.add(gift.event_id)
        g.add_gift(gift.user_id, gift.author_id, gift.ts_ms, gift.gift_value)
    return g


# --- persistence (rocksdict) --------------------------------------------------------------------
_META_KEY = "meta"
_USER_PREFIX = "u:"


def save_graph(graph: GiftGraph, path: Path | str, *, users: Iterable[str] | None = None) -> None:
    """Persist the canonical state (user rows of exact edges + meta) into a rocksdict at `path`.

    Everything else (author rows, totals, A2A) is derived exactly on load. `users` limits the
    write to the rows that changed since the last save (incremental checkpoint).
    """
    from rocksdict import Rdict

    db = Rdict(str(path))
    try:
        for u in graph.user_out if users is None else users:
            row = graph.user_out.get(u)
            key = _USER_PREFIX + u
            if row is None:
                db.delete(key)
            else:
                db[key] = json.dumps({a: e for a, e in sorted(row.items())})
        db[_META_KEY] = json.dumps(
            {
                "config": asdict(graph.config),
                "watermark_ms": graph.watermark_ms,
                "num_gifts": graph.num_gifts,
            }
        )
    finally:
        db.close()


def load_graph(path: Path | str, config: GraphConfig | None = None) -> GiftGraph:
    """Load a graph saved by `save_graph`; `config`, when given, must match the saved one."""
    from rocksdict import Rdict

    db = Rdict(str(path))
    try:
        meta = json.loads(db[_META_KEY])
        saved = GraphConfig(**meta["config"])
        if config is not None and config != saved:
            raise ValueError(f"graph at {path} was built with {saved}, not {config}")
        g = GiftGraph(saved)
        rows = [
            (k[len(_USER_PREFIX) :], json.loads(v))
            for k, v in db.items()
            if k.startswith(_USER_PREFIX)
        ]
    finally:
        db.close()
    rows.sort()
    for u, row in rows:
        for a, e in sorted(row.items()):
            _insert_edge(g, u, a, [int(x) for x in e])
    g.watermark_ms = meta["watermark_ms"]
    g.num_gifts = meta["num_gifts"]
    return g


def _insert_edge(g: GiftGraph, u: str, a: str, e: Edge) -> None:
    """Insert a whole aggregated edge (used by load): same derived state as its gifts."""
    row = g.user_out.setdefault(u, {})
    col = g.author_in.get(a)
    if col is None:
        col = g.author_in[a] = {}
        g.author_total[a] = 0
        g.author_norm2[a] = 0
        g.a2a[a] = {}
    row[a] = col[u] = e
    w = e[WEIGHT]
    g.user_total[u] = g.user_total.get(u, 0) + w
    g.author_total[a] += w
    g.author_norm2[a] += w * w
    g.user_last_ms[u] = max(g.user_last_ms.get(u, e[LAST_TS]), e[LAST_TS])
    g.author_last_ms[a] = max(g.author_last_ms.get(a, e[LAST_TS]), e[LAST_TS])
    for b, eb in row.items():
        if b == a:
            continue
        pair = g.a2a[a].get(b)
        if pair is None:
            pair = g.a2a[a][b] = g.a2a[b][a] = [0, 0]
        pair[0] += w * eb[WEIGHT]
        pair[1] += 1
