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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from math import floor, ldexp, log1p
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
    "user_row",
    "user_row_json",
    "restore",
]

DAY_MS = 24 * 3600 * 1000
MIN_BITS = 16
"""Fewest fixed-point bits a gift's contribution may keep (see `GraphConfig.epoch_ms`)."""
COUNT, VALUE_MICRO, WEIGHT, LAST_TS = 0, 1, 2, 3
"""Positions in an `Edge` list."""

Edge = list[int]
"""One U2A edge as `GiftGraph.edge` returns it: `[count, value_micro, weight_fixed, last_ts_ms]`.

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

    Every per-edge and per-pair value lives in a dict of plain ints (or of int tuples), which
    CPython's garbage collector does not track: a graph of millions of edges adds no work to
    collections. Weights are kept in both directions (`user_out[u][a] == author_in[a][u]`), A2A
    statistics symmetrically (`a2a_dot[a][b] == a2a_dot[b][a]`). Mutate only through
    `add_gift` / `apply`.

    Example:
        >>> g = GiftGraph(GraphConfig(weight_by="count"))
        >>> _ = g.add_gift("u1", "a1", 1_750_000_000_000, 5.0)
        >>> g.edge("u1", "a1")[:2]
        [1, 5000000]
    """

    def __init__(self, config: GraphConfig) -> None:
        self.config = config
        self._decay = (
            config.weight_by,
            config.epoch_ms,
            config.half_life_ms,
            config.precision_bits,
        )
        self.user_out: dict[str, dict[str, int]] = {}  # u -> {a: weight_fixed}
        self.author_in: dict[str, dict[str, int]] = {}  # a -> {u: weight_fixed}
        self.edge_info: dict[
            str, dict[str, tuple[int, int, int]]
        ] = {}  # (count, value_micro, last_ts)
        self.user_total: dict[str, int] = {}
        self.author_total: dict[str, int] = {}
        self.user_last_ms: dict[str, int] = {}
        self.author_last_ms: dict[str, int] = {}
        self.a2a_dot: dict[str, dict[str, int]] = {}  # sum_u w_ua * w_ub
        self.a2a_shared: dict[str, dict[str, int]] = {}  # |donors(a) & donors(b)|
        self.author_norm2: dict[str, int] = {}
        self.watermark_ms: int | None = None
        self.num_gifts = 0

    # --- updates ----------------------------------------------------------------------------
    def add_gift(self, user_id: str, author_id: str, ts_ms: int, gift_value: float) -> bool:
        """Apply one gift; True when it created a new U2A edge. O(deg(user))."""
        # `contribution(ts_ms, gift_value, self.config)`, inlined (same operations, same bits)
        mode, epoch, h, bits = self._decay
        f = 1.0 if mode == "count" else (gift_value if mode == "value" else log1p(gift_value))
        x = (ts_ms - epoch) / h
        n = floor(x)
        c = round(ldexp(f * 2.0 ** (x - n), bits)) or 1
        if n >= 0:
            c <<= n
        else:
            c = contribution(ts_ms, gift_value, self.config)  # rare: before the epoch, checked
        row = self.user_out.get(user_id)
        if row is None:
            if "\x00" in user_id:
                raise ValueError("user_id contains a NUL character")
            row = self.user_out[user_id] = {}
            self.edge_info[user_id] = {}
            self.user_total[user_id] = 0
            self.user_last_ms[user_id] = ts_ms
        old = row.get(author_id)
        new = old is None
        info = self.edge_info[user_id]
        vm = round(gift_value * 1_000_000)
        if old is None:
            col = self.author_in.get(author_id)
            if col is None:
                if "\x00" in author_id:
                    raise ValueError("author_id contains a NUL character")
                col = self.author_in[author_id] = {}
                self.author_total[author_id] = 0
                self.author_norm2[author_id] = 0
                self.author_last_ms[author_id] = ts_ms
                self.a2a_dot[author_id] = {}
                self.a2a_shared[author_id] = {}
            old = 0
            info[author_id] = (1, vm, ts_ms)
        else:
            col = self.author_in[author_id]
            n, v, last = info[author_id]
            info[author_id] = (n + 1, v + vm, ts_ms if ts_ms > last else last)
        row[author_id] = col[user_id] = old + c
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
            dots = self.a2a_dot
            dot_a = dots[author_id]
            get = dot_a.get
            for b, wb in row.items():
                if b != author_id:
                    dot_a[b] = dots[b][author_id] = get(b, 0) + c * wb
            if new:
                shared = self.a2a_shared
                sh_a = shared[author_id]
                for b in row:
                    if b != author_id:
                        sh_a[b] = shared[b][author_id] = sh_a.get(b, 0) + 1
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

    @property
    def num_a2a_pairs(self) -> int:
        """Unordered author pairs with at least one shared donor."""
        return sum(len(r) for r in self.a2a_shared.values()) // 2

    def edge(self, user_id: str, author_id: str) -> Edge | None:
        """The edge as `[count, value_micro, weight_fixed, last_ts_ms]`, or None."""
        w = self.user_out.get(user_id, {}).get(author_id)
        if w is None:
            return None
        n, v, last = self.edge_info[user_id][author_id]
        return [n, v, w, last]

    def decay_scale(self, at_ms: int) -> float:
        """log2 of the factor that turns fixed-point weights into weights as of `at_ms`."""
        cfg = self.config
        return -(cfg.precision_bits + (at_ms - cfg.epoch_ms) / cfg.half_life_ms)

    def weight_at(self, fixed: int, at_ms: int) -> float:
        """A fixed-point weight (edge or total) decayed to event time `at_ms`, as a float."""
        if fixed <= 0:
            return 0.0
        return 2.0 ** (math.log2(fixed) + self.decay_scale(at_ms))

    def shared_donors(self, a: str, b: str) -> int:
        """Number of users who gifted both authors."""
        return self.a2a_shared.get(a, {}).get(b, 0)

    def similarity(self, a: str, b: str) -> float:
        """Shrunk co-gifting cosine between two authors, in [0, 1] (0 if none shared)."""
        dot = self.a2a_dot.get(a, {}).get(b)
        if dot is None:
            return 0.0
        return self._sim(dot, self.a2a_shared[a][b], self.author_norm2[a], self.author_norm2[b])

    def _sim(self, dot: int, n: int, norm2_a: int, norm2_b: int) -> float:
        if dot <= 0 or norm2_a <= 0 or norm2_b <= 0:
            return 0.0
        cos = math.sqrt((dot / norm2_a) * (dot / norm2_b))  # exact ints -> one rounding each
        return min(1.0, cos) * n / (n + self.config.a2a_shrinkage)

    def similarities(self, a: str) -> Iterator[tuple[str, float]]:
        """(b, sim(a, b)) for every author b sharing a donor with `a`, in no particular order."""
        na = self.author_norm2.get(a, 0)
        norms = self.author_norm2
        shared = self.a2a_shared.get(a, {})
        sim = self._sim
        for b, dot in self.a2a_dot.get(a, {}).items():
            yield b, sim(dot, shared[b], na, norms[b])

    def users(self) -> list[str]:
        """All users, sorted."""
        return sorted(self.user_out)

    def authors(self) -> list[str]:
        """All authors, sorted."""
        return sorted(self.author_in)

    def fingerprint(self) -> tuple[Any, ...]:
        """A canonical, order-free summary of the whole state, for equality checks."""

        def rows(d: dict[str, dict[str, Any]]) -> list[tuple[str, str, Any]]:
            return sorted((x, y, v) for x, r in d.items() for y, v in r.items())

        return (
            self.watermark_ms,
            self.num_gifts,
            rows(self.user_out),
            rows(self.author_in),
            rows(self.edge_info),
            sorted(self.user_total.items()),
            sorted(self.author_total.items()),
            sorted(self.user_last_ms.items()),
            sorted(self.author_last_ms.items()),
            sorted(self.author_norm2.items()),
            rows(self.a2a_dot),
            rows(self.a2a_shared),
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


def user_row(graph: GiftGraph, user_id: str) -> dict[str, Edge]:
    """The canonical stored form of one user's edges: `{author: [count, value_micro,
    weight_fixed, last_ts_ms]}` (exact ints), authors sorted."""
    return {a: graph.edge(user_id, a) for a in sorted(graph.user_out[user_id])}  # type: ignore[misc]


def user_row_json(graph: GiftGraph, user_id: str) -> str:
    """`user_row` as JSON (Python's json keeps big ints exact)."""
    return json.dumps(user_row(graph, user_id))


def restore(
    config: GraphConfig,
    rows: Iterable[tuple[str, Mapping[str, Sequence[int]]]],
    watermark_ms: int | None = None,
    num_gifts: int | None = None,
) -> GiftGraph:
    """A graph from stored user rows `(user_id, user_row)`: the same state, bit for bit, as the
    gifts that produced them (author rows, totals and A2A are derived exactly). The watermark
    and gift count default to what the rows imply (latest gift, sum of counts)."""
    g = GiftGraph(config)
    for u, row in sorted(rows, key=lambda r: r[0]):
        for a, e in sorted(row.items()):
            _insert_edge(g, u, a, [int(x) for x in e])
    last = [ts for ts in g.user_last_ms.values()]
    g.watermark_ms = watermark_ms if watermark_ms is not None else (max(last) if last else None)
    g.num_gifts = (
        num_gifts
        if num_gifts is not None
        else sum(n for info in g.edge_info.values() for n, _, _ in info.values())
    )
    return g


def save_graph(graph: GiftGraph, path: Path | str, *, users: Iterable[str] | None = None) -> None:
    """Persist the canonical state (user rows of exact edges + meta) into a rocksdict at `path`.

    Everything else (author rows, totals, A2A) is derived exactly on load. `users` limits the
    write to the rows that changed since the last save (incremental checkpoint).
    """
    from rocksdict import Rdict

    db = Rdict(str(path))
    try:
        for u in graph.user_out if users is None else users:
            key = _USER_PREFIX + u
            if u not in graph.user_out:
                db.delete(key)
            else:
                db[key] = user_row_json(graph, u)
        meta = {
            "config": asdict(graph.config),
            "watermark_ms": graph.watermark_ms,
            "num_gifts": graph.num_gifts,
        }
        db[_META_KEY] = json.dumps(meta)
    finally:
        db.close()


def load_graph(path: Path | str, config: GraphConfig | None = None) -> GiftGraph:
    """Load a graph saved by `save_graph`; `config`, when given, must match the saved one."""
    from rocksdict import Rdict

    db = Rdict(str(path))
    try:
        meta = json.loads(str(db[_META_KEY]))
        saved = GraphConfig(**meta["config"])
        if config is not None and config != saved:
            raise ValueError(f"graph at {path} was built with {saved}, not {config}")
        rows: list[tuple[str, Mapping[str, Sequence[int]]]] = [
            (str(k)[len(_USER_PREFIX) :], json.loads(str(v)))
            for k, v in db.items()
            if str(k).startswith(_USER_PREFIX)
        ]
    finally:
        db.close()
    return restore(saved, rows, meta["watermark_ms"], meta["num_gifts"])


def _insert_edge(g: GiftGraph, u: str, a: str, e: Edge) -> None:
    """Insert a whole aggregated edge (used by load): same derived state as its gifts."""
    row = g.user_out.setdefault(u, {})
    g.edge_info.setdefault(u, {})
    if a not in g.author_in:
        g.author_in[a] = {}
        g.author_total[a] = 0
        g.author_norm2[a] = 0
        g.a2a_dot[a] = {}
        g.a2a_shared[a] = {}
    count, value_micro, w, last = e
    row[a] = g.author_in[a][u] = w
    g.edge_info[u][a] = (count, value_micro, last)
    g.user_total[u] = g.user_total.get(u, 0) + w
    g.author_total[a] += w
    g.author_norm2[a] += w * w
    g.user_last_ms[u] = max(g.user_last_ms.get(u, last), last)
    g.author_last_ms[a] = max(g.author_last_ms.get(a, last), last)
    for b, wb in row.items():
        if b != a:
            g.a2a_dot[a][b] = g.a2a_dot[b][a] = g.a2a_dot[a].get(b, 0) + w * wb
            g.a2a_shared[a][b] = g.a2a_shared[b][a] = g.a2a_shared[a].get(b, 0) + 1
