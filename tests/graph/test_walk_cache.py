"""Walk cache: misses, dirty refresh after new gifts, the staleness bound, rebuild, restarts.

Every test runs over both stores (memory and rocksdict).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mmbee.graph.metapaths import author_expansions, user_expansions
from mmbee.graph.state import DAY_MS, GiftGraph, GraphConfig
from mmbee.graph.walk_cache import (
    CacheConfig,
    CacheEntry,
    CacheStore,
    MemoryCacheStore,
    RocksCacheStore,
    WalkCache,
)

T0 = 1_750_000_000_000
HOUR = 3_600_000
EDGES = [("u1", "a1"), ("u2", "a1"), ("u2", "a2"), ("u3", "a2"), ("u3", "a3")]

StoreFactory = Callable[[], CacheStore]


@pytest.fixture(params=["memory", "rocksdict"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    opened: list[CacheStore] = []

    def factory() -> CacheStore:
        s: CacheStore = (
            MemoryCacheStore() if request.param == "memory" else RocksCacheStore(tmp_path / "cache")
        )
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()


def fresh(g: GiftGraph) -> dict[str, dict]:
    out = {"u:" + u: user_expansions(g, u) for u in g.users()}
    out.update({"a:" + a: author_expansions(g, a) for a in g.authors()})
    return out


def cached(cache: WalkCache) -> dict[str, dict]:
    return {k: e.expansions for k, e in cache.store.items()}


def small_cache(store: CacheStore, staleness_ms: int = HOUR) -> WalkCache:
    cache = WalkCache(
        GiftGraph(GraphConfig(weight_by="count")), store, CacheConfig(max_staleness_ms=staleness_ms)
    )
    for u, a in EDGES:
        cache.add_gift(u, a, T0, 1.0)
    return cache


def test_miss_returns_empty_at_once_and_schedules(make_store: StoreFactory) -> None:
    cache = small_cache(make_store())
    cache.refresh()
    assert cache.lookup_user("u9") == {"u2a2u": [], "u2a2u2a": [], "u2a2a": []}
    assert cache.lookup_author("a9") == {"a2a": [], "a2u2a": []}
    assert cache.is_dirty("u:u9") and cache.is_dirty("a:a9")
    cache.add_gift("u9", "a1", T0 + 1, 1.0)
    cache.refresh()  # u9 is now known and computed; a9 is still unknown and dropped
    assert cache.lookup_user("u9") == user_expansions(cache.graph, "u9") != {}
    assert cache.pending == 0 and cache.store.get("a:a9") is None


def test_serving_lookup_never_computes(make_store: StoreFactory) -> None:
    cache = small_cache(make_store())
    assert len(cache.store) == 0
    assert cache.lookup_user("u1")["u2a2u"] == []  # known to the graph but not cached yet
    assert len(cache.store) == 0


def test_refresh_after_new_gifts_marks_and_recomputes_neighbourhoods(
    make_store: StoreFactory,
) -> None:
    cache = small_cache(make_store())
    assert cache.refresh() == 6
    assert cached(cache) == fresh(cache.graph)
    cache.add_gift("u3", "a1", T0 + 10, 1.0)  # u3's row, a1's row and the A2A rows of a1, a2, a3
    assert {k for k in ("u:u1", "u:u2", "u:u3", "a:a1", "a:a2", "a:a3") if cache.is_dirty(k)} == {
        "u:u3",
        "a:a1",
        "a:a2",
        "a:a3",
    }
    assert cache.refresh() == 4
    now = fresh(cache.graph)
    for key in ("u:u3", "a:a1", "a:a2", "a:a3"):
        assert cache.store.get(key).expansions == now[key]
    # u1's u2a2u changed two hops away (a1 gained a donor): not marked, stale within the bound
    assert cache.store.get("u:u1").expansions != now["u:u1"]
    assert cache.lookup_user("u1")["u2a2u"] == [("u2", 0.5)]  # as before the gift
    assert [u for u, _ in now["u:u1"]["u2a2u"]] == ["u3", "u2"]  # u3 now shares a1 too


def test_staleness_bound_refreshes_what_marks_miss(make_store: StoreFactory) -> None:
    cache = small_cache(make_store(), staleness_ms=HOUR)
    cache.refresh()
    cache.add_gift("u3", "a1", T0 + 10, 1.0)
    cache.refresh(now_ms=T0 + HOUR)  # within the bound: u1 and u2 keep their old entries
    assert cache.store.get("u:u1").built_at_ms == T0
    assert cached(cache) != fresh(cache.graph)
    assert sorted(cache.stale_keys(T0 + HOUR + 1)) == ["u:u1", "u:u2"]
    assert cache.refresh(now_ms=T0 + HOUR + 1) == 2  # u1, u2 were built at T0: now too old
    assert cached(cache) == fresh(cache.graph)
    assert {e.built_at_ms for _, e in cache.store.items()} == {T0 + HOUR, T0 + HOUR + 1}
    # event time moving on through the graph's own watermark works the same way
    cache.add_gift("u4", "a3", T0 + 3 * HOUR, 1.0)
    assert cache.refresh() == 6 + 1  # every entry is older than the bound; u4 is new
    assert cached(cache) == fresh(cache.graph)


def test_point_in_time_reads_follow_the_graph(make_store: StoreFactory) -> None:
    cache = small_cache(make_store())
    before = cache.user_expansions("u1")
    assert before == user_expansions(cache.graph, "u1")
    cache.add_gift("u3", "a1", T0 + 10, 1.0)
    # u1 is not dirty and its entry is fresh: the read is the one serving would get
    assert cache.user_expansions("u1", now_ms=T0 + 20) == before
    assert cache.user_expansions("u1", now_ms=T0 + HOUR + 10) == user_expansions(cache.graph, "u1")
    assert cache.author_expansions("a1") == author_expansions(
        cache.graph, "a1"
    )  # dirty: recomputed
    assert cache.author_expansions("zz") == {"a2a": [], "a2u2a": []}


def test_rebuild_covers_active_nodes_and_evicts_inactive(make_store: StoreFactory) -> None:
    store = make_store()
    cache = WalkCache(
        GiftGraph(GraphConfig(weight_by="count")),
        store,
        CacheConfig(max_staleness_ms=HOUR, active_window_ms=10 * DAY_MS),
    )
    for u, a in EDGES:
        cache.add_gift(u, a, T0, 1.0)
    assert cache.rebuild() == 6 and cached(cache) == fresh(cache.graph)
    cache.add_gift("u9", "a9", T0 + 20 * DAY_MS, 1.0)  # everyone else is now inactive
    assert cache.rebuild() == 2
    assert sorted(k for k, _ in cache.store.items()) == ["a:a9", "u:u9"]
    assert cache.pending == 0


def test_entries_survive_a_restart(make_store: StoreFactory) -> None:
    store = make_store()
    cache = small_cache(store)
    cache.rebuild()
    entries = cached(cache)
    if isinstance(store, MemoryCacheStore):
        reopened: CacheStore = store
    else:
        store.close()
        reopened = make_store()
    again = WalkCache(cache.graph, reopened, cache.config)
    assert cached(again) == entries
    assert again.lookup_user("u2") == entries["u:u2"]
    assert again.stale_keys(T0 + HOUR + 1) == sorted(entries)


def test_store_roundtrip_is_exact(make_store: StoreFactory) -> None:
    store = make_store()
    e = CacheEntry(7, {"u2a2u": [("u2", 0.1 + 0.2), ("u3", 1e-300)], "u2a2a": []})
    store.put("u:x", e)
    assert store.get("u:x") == e
    store.delete("u:x")
    assert store.get("u:x") is None and len(store) == 0


def test_drain_updates_lists_what_changed(make_store: StoreFactory) -> None:
    cache = small_cache(make_store())
    cache.refresh()
    assert cache.drain_updates() == ["a:a1", "a:a2", "a:a3", "u:u1", "u:u2", "u:u3"]
    assert cache.drain_updates() == []
    cache.add_gift("u1", "a2", T0 + 5, 1.0)
    cache.refresh()
    assert cache.drain_updates() == ["a:a1", "a:a2", "u:u1"]
