"""Offline-walk cache: metapath expansions precomputed per node, read "pre-request" by serving.

Entries are keyed `u:<user_id>` / `a:<author_id>` and stamped with `built_at_ms`, the graph's
event-time watermark when they were computed. Three ways keep them fresh:

* dirty marks: a gift by u to a changes the 1-hop neighbourhood of u, of a, and the A2A row of
  every author u gifted, so `observe()` marks `u:u`, `a:a` and `a:b` for b in N(u) dirty;
* the staleness bound: an entry older than `max_staleness_ms` in event time is recomputed by the
  next `refresh()`; this covers the 2-3 hop effects a dirty mark does not reach;
* `rebuild()`: the periodic full job, recomputing every active node (and evicting inactive ones).

Serving reads with `lookup_user` / `lookup_author`: never computes; a miss returns empty
expansions at once and schedules the node. `user_expansions` / `author_expansions` are the
point-in-time reads for replay: they first refresh the one node if it is dirty, missing or stale
at `now_ms`, so replaying a log gives what serving would have read right after maintenance.

Two stores with one interface: `MemoryCacheStore` and `RocksCacheStore` (rocksdict).

Example:
    >>> from mmbee.graph.state import GiftGraph, GraphConfig
    >>> cache = WalkCache(GiftGraph(GraphConfig()), MemoryCacheStore())
    >>> cache.lookup_user("u1")  # miss: empty at once, scheduled
    {'u2a2u': [], 'u2a2u2a': [], 'u2a2a': []}
    >>> cache.pending
    1
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from mmbee.graph.metapaths import (
    ExpansionConfig,
    Expansions,
    Transitions,
    author_expansions,
    empty_expansions,
    user_expansions,
)
from mmbee.graph.state import DAY_MS, GiftGraph, GiftLike

__all__ = [
    "CacheConfig",
    "CacheEntry",
    "CacheStore",
    "MemoryCacheStore",
    "RocksCacheStore",
    "WalkCache",
    "user_key",
    "author_key",
    "encode_entry",
    "decode_entry",
]

HOUR_MS = 3600 * 1000


@dataclass(frozen=True)
class CacheConfig:
    """Freshness of the walk cache (all times are event time).

    Attributes:
        max_staleness_ms: an entry older than this (vs the graph watermark, or the `now_ms`
            passed in) is recomputed by the next refresh.
        active_window_ms: `rebuild` precomputes nodes with a gift within this window of the
            watermark and evicts the others' entries.

    Example:
        >>> CacheConfig().max_staleness_ms
        3600000
    """

    max_staleness_ms: int = HOUR_MS
    active_window_ms: int = 30 * DAY_MS

    def __post_init__(self) -> None:
        if self.max_staleness_ms < 0 or self.active_window_ms < 0:
            raise ValueError("max_staleness_ms and active_window_ms must be >= 0")


class CacheEntry(NamedTuple):
    """One cached node: its expansions and the graph watermark they were computed at."""

    built_at_ms: int
    expansions: Expansions


def user_key(user_id: str) -> str:
    """Cache key of a user."""
    return "u:" + user_id


def author_key(author_id: str) -> str:
    """Cache key of an author."""
    return "a:" + author_id


class CacheStore(Protocol):
    """Where cache entries live; `MemoryCacheStore` and `RocksCacheStore` implement it."""

    def get(self, key: str) -> CacheEntry | None: ...
    def put(self, key: str, entry: CacheEntry) -> None: ...
    def delete(self, key: str) -> None: ...
    def items(self) -> Iterator[tuple[str, CacheEntry]]: ...
    def __len__(self) -> int: ...
    def close(self) -> None: ...


class MemoryCacheStore:
    """A dict-backed cache store (tests, replay, single-process serving).

    Example:
        >>> s = MemoryCacheStore()
        >>> s.put("u:1", CacheEntry(0, {"u2a2u": []}))
        >>> s.get("u:1").built_at_ms, len(s)
        (0, 1)
    """

    def __init__(self) -> None:
        self._d: dict[str, CacheEntry] = {}

    def get(self, key: str) -> CacheEntry | None:
        """The entry under `key`, or None."""
        return self._d.get(key)

    def put(self, key: str, entry: CacheEntry) -> None:
        """Store (replace) an entry."""
        self._d[key] = entry

    def delete(self, key: str) -> None:
        """Remove an entry if present."""
        self._d.pop(key, None)

    def items(self) -> Iterator[tuple[str, CacheEntry]]:
        """All (key, entry) pairs."""
        return iter(list(self._d.items()))

    def __len__(self) -> int:
        return len(self._d)

    def close(self) -> None:
        """Nothing to release."""


_HEAD = struct.Struct("<qB")  # built_at_ms, number of metapaths
_PATH = struct.Struct("<BII")  # name length, list length, ids byte length
_SEP = "\x00"
_BIG_ENDIAN = sys.byteorder == "big"


def encode_entry(entry: CacheEntry) -> bytes:
    """The stored form of an entry: a small binary layout that decodes in a few microseconds
    (per metapath: name, the ids joined by NUL, the weights as little-endian float64). Node ids
    never hold NUL (`GiftGraph.add_gift` rejects them)."""
    parts = [_HEAD.pack(entry.built_at_ms, len(entry.expansions))]
    for name, items in entry.expansions.items():
        ids, ws = zip(*items, strict=True) if items else ((), ())
        raw_ids = _SEP.join(ids).encode()
        raw_name = name.encode()
        weights = array("d", ws)
        if _BIG_ENDIAN:
            weights.byteswap()
        parts += (_PATH.pack(len(raw_name), len(items), len(raw_ids)), raw_name, raw_ids)
        parts.append(weights.tobytes())
    return b"".join(parts)


def decode_entry(raw: bytes) -> CacheEntry:
    """Inverse of `encode_entry` (floats round-trip exactly)."""
    built, n_paths = _HEAD.unpack_from(raw, 0)
    pos = _HEAD.size
    exp: Expansions = {}
    for _ in range(n_paths):
        name_len, count, ids_len = _PATH.unpack_from(raw, pos)
        pos += _PATH.size
        name = raw[pos : pos + name_len].decode()
        pos += name_len
        ids = raw[pos : pos + ids_len].decode().split(_SEP) if count else []
        pos += ids_len
        weights = array("d", raw[pos : pos + 8 * count])
        if _BIG_ENDIAN:
            weights.byteswap()
        pos += 8 * count
        exp[name] = list(zip(ids, weights.tolist(), strict=True))
    return CacheEntry(built, exp)


class RocksCacheStore:
    """A rocksdict-backed cache store: survives restarts; values in `encode_entry`'s layout.

    Example:
        >>> import tempfile
        >>> s = RocksCacheStore(tempfile.mkdtemp() + "/cache")
        >>> s.put("a:1", CacheEntry(5, {"a2a": [("a2", 0.5)]}))
        >>> s.get("a:1")
        CacheEntry(built_at_ms=5, expansions={'a2a': [('a2', 0.5)]})
        >>> s.close()
    """

    def __init__(self, path: Path | str) -> None:
        from rocksdict import Options, Rdict

        opts = Options(raw_mode=True)
        self._db = Rdict(str(path), options=opts)
        self._closed = False

    def get(self, key: str) -> CacheEntry | None:
        """The entry under `key`, or None."""
        raw = self._db.get(key.encode())
        return None if raw is None else decode_entry(raw)

    def put(self, key: str, entry: CacheEntry) -> None:
        """Store (replace) an entry."""
        self._db[key.encode()] = encode_entry(entry)

    def delete(self, key: str) -> None:
        """Remove an entry if present."""
        self._db.delete(key.encode())

    def items(self) -> Iterator[tuple[str, CacheEntry]]:
        """All (key, entry) pairs, in key order."""
        for k, v in self._db.items():
            assert isinstance(k, bytes) and isinstance(v, bytes)  # raw mode
            yield k.decode(), decode_entry(v)

    def __len__(self) -> int:
        return sum(1 for _ in self._db.keys())

    def close(self) -> None:
        """Flush and close the database (idempotent)."""
        if not self._closed:
            self._closed = True
            self._db.close()


class WalkCache:
    """Precomputed expansions over a live `GiftGraph`, with dirty marks and bounded staleness.

    Example:
        >>> from mmbee.graph.state import GiftGraph, GraphConfig
        >>> cache = WalkCache(GiftGraph(GraphConfig()), MemoryCacheStore())
        >>> for u in ("u1", "u2"):
        ...     cache.add_gift(u, "a1", 1_750_000_000_000, 1.0)
        >>> cache.user_expansions("u1")["u2a2u"]
        [('u2', 0.5)]
    """

    def __init__(
        self,
        graph: GiftGraph,
        store: CacheStore,
        config: CacheConfig | None = None,
        expansion: ExpansionConfig | None = None,
    ) -> None:
        self.graph = graph
        self.store = store
        self.config = config or CacheConfig()
        self.expansion = expansion or ExpansionConfig()
        self._dirty: set[str] = set()
        self._built_at: dict[str, int] = {}
        self._order: deque[tuple[int, str]] = deque()  # (built_at, key), built_at non-decreasing
        self._clock = 0  # latest built_at handed out: stamps never go back
        self._updated: set[str] = set()  # keys written or evicted since `drain_updates`
        for key, entry in sorted(store.items(), key=lambda kv: (kv[1].built_at_ms, kv[0])):
            self._built_at[key] = entry.built_at_ms
            self._order.append((entry.built_at_ms, key))
            self._clock = max(self._clock, entry.built_at_ms)

    # --- updates ----------------------------------------------------------------------------
    def add_gift(self, user_id: str, author_id: str, ts_ms: int, gift_value: float) -> None:
        """Apply a gift to the graph and mark the nodes whose neighbourhood changed dirty."""
        self.graph.add_gift(user_id, author_id, ts_ms, gift_value)
        self.mark_gift(user_id, author_id)

    def observe(self, gift: GiftLike) -> None:
        """`add_gift` for a GiftEvent (or anything with its fields)."""
        self.add_gift(gift.user_id, gift.author_id, gift.ts_ms, gift.gift_value)

    def mark_gift(self, user_id: str, author_id: str) -> None:
        """Mark what a gift user -> author changed (after it was applied to the graph)."""
        d = self._dirty
        d.add(user_key(user_id))
        d.add(author_key(author_id))
        for b in self.graph.user_out.get(user_id, ()):
            d.add(author_key(b))

    @property
    def pending(self) -> int:
        """Nodes marked dirty or requested on a miss, not yet recomputed."""
        return len(self._dirty)

    def drain_updates(self) -> list[str]:
        """Keys recomputed or evicted since the last call, sorted (what to publish downstream)."""
        out = sorted(self._updated)
        self._updated.clear()
        return out

    def is_dirty(self, key: str) -> bool:
        """Whether `key` waits for a recompute."""
        return key in self._dirty

    # --- serving reads (never compute) ------------------------------------------------------
    def lookup(self, key: str) -> CacheEntry | None:
        """The cached entry, or None after scheduling the node (a miss)."""
        entry = self.store.get(key)
        if entry is None:
            self._dirty.add(key)
        return entry

    def lookup_user(self, user_id: str) -> Expansions:
        """Cached user expansions; a miss returns empty ones at once and schedules a refresh."""
        entry = self.lookup(user_key(user_id))
        return empty_expansions("user") if entry is None else entry.expansions

    def lookup_author(self, author_id: str) -> Expansions:
        """Cached author expansions; a miss returns empty ones at once and schedules a refresh."""
        entry = self.lookup(author_key(author_id))
        return empty_expansions("author") if entry is None else entry.expansions

    # --- maintenance ------------------------------------------------------------------------
    def _now(self, now_ms: int | None) -> int:
        if now_ms is not None:
            return now_ms
        return self.graph.watermark_ms if self.graph.watermark_ms is not None else 0

    def _known(self, key: str) -> bool:
        kind, node = key[0], key[2:]
        return node in (self.graph.user_out if kind == "u" else self.graph.author_in)

    def _compute(self, key: str, transitions: Transitions, built_at: int) -> CacheEntry | None:
        kind, node = key[0], key[2:]
        if not self._known(key):
            if self._built_at.pop(key, None) is not None:
                self.store.delete(key)
                self._updated.add(key)
            return None
        if kind == "u":
            exp = user_expansions(self.graph, node, self.expansion, transitions)
        else:
            exp = author_expansions(self.graph, node, self.expansion, transitions)
        entry = CacheEntry(built_at, exp)
        self.store.put(key, entry)
        self._built_at[key] = built_at
        self._order.append((built_at, key))
        self._updated.add(key)
        return entry

    def _stamp(self, now_ms: int | None) -> int:
        """built_at of an entry computed now: the graph reflects every gift up to here."""
        wm = self.graph.watermark_ms if self.graph.watermark_ms is not None else 0
        self._clock = max(self._clock, wm, now_ms if now_ms is not None else wm)
        return self._clock

    def stale_keys(self, now_ms: int | None = None) -> list[str]:
        """Keys whose entry is older than the staleness bound at `now_ms` (default: watermark)."""
        limit = self._now(now_ms) - self.config.max_staleness_ms
        out = []
        for built, key in self._order:
            if built >= limit:
                break
            if self._built_at.get(key) == built:
                out.append(key)
        return out

    def _pop_stale(self, limit: int) -> list[str]:
        out = []
        while self._order and self._order[0][0] < limit:
            built, key = self._order.popleft()
            if self._built_at.get(key) == built:
                out.append(key)
        return out

    def refresh(self, now_ms: int | None = None, keys: Iterable[str] | None = None) -> int:
        """Recompute dirty and stale entries (or just `keys`); returns how many were computed."""
        if keys is None:
            todo = set(self._dirty)
            todo.update(self._pop_stale(self._now(now_ms) - self.config.max_staleness_ms))
        else:
            todo = set(keys)
        t = Transitions(self.graph, self.expansion)
        built_at = self._stamp(now_ms)
        n = 0
        for key in sorted(todo):
            self._dirty.discard(key)
            n += self._compute(key, t, built_at) is not None
        return n

    def rebuild(self, now_ms: int | None = None) -> int:
        """The periodic full job: recompute every active node (sparse products, bitwise equal to
        the per-node path) and evict the entries of inactive ones; returns the nodes computed."""
        from mmbee.graph.bulk import iter_bulk_expansions

        g = self.graph
        since = self._now(now_ms) - self.config.active_window_ms
        users = sorted(u for u, ts in g.user_last_ms.items() if ts >= since)
        authors = sorted(a for a, ts in g.author_last_ms.items() if ts >= since)
        active = {user_key(u) for u in users} | {author_key(a) for a in authors}
        for key in list(self._built_at):
            if key not in active:
                self.store.delete(key)
                del self._built_at[key]
                self._updated.add(key)
        self._dirty.clear()
        built_at = self._stamp(now_ms)
        for kind, node, exp in iter_bulk_expansions(g, users, authors, self.expansion):
            key = user_key(node) if kind == "user" else author_key(node)
            self.store.put(key, CacheEntry(built_at, exp))
            self._built_at[key] = built_at
            self._updated.add(key)
        self._order = deque(sorted((b, k) for k, b in self._built_at.items()))
        return len(active)

    # --- point-in-time reads (replay) -------------------------------------------------------
    def expansions(self, key: str, now_ms: int | None = None) -> Expansions:
        """The entry as serving would read it at `now_ms` after maintenance: the node is
        recomputed first if it is dirty, missing or older than the staleness bound."""
        entry = self.store.get(key)
        limit = self._now(now_ms) - self.config.max_staleness_ms
        if entry is None or key in self._dirty or entry.built_at_ms < limit:
            self._dirty.discard(key)
            entry = self._compute(key, Transitions(self.graph, self.expansion), self._stamp(now_ms))
        if entry is None:
            return empty_expansions("user" if key[0] == "u" else "author")
        return entry.expansions

    def user_expansions(self, user_id: str, now_ms: int | None = None) -> Expansions:
        """Point-in-time user expansions {u2a2u, u2a2u2a, u2a2a} (see `expansions`)."""
        return self.expansions(user_key(user_id), now_ms)

    def author_expansions(self, author_id: str, now_ms: int | None = None) -> Expansions:
        """Point-in-time author expansions {a2a, a2u2a} (see `expansions`)."""
        return self.expansions(author_key(author_id), now_ms)

    def close(self) -> None:
        """Close the store."""
        self.store.close()
