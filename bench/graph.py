"""Benchmark of mmbee.graph: incremental edge updates, cache lookups, full rebuild, GraphCL epoch.

Synthetic gifting log (seeded): users gift a geometric number of times (mean 5) to authors drawn
from a Zipf(1) popularity, over 30 days of event time. Each figure is the median of `--repeats`
runs, printed beside a baseline measured in the same run:
    edge updates   GiftGraph.add_gift (U2A + exact A2A)   vs  a plain dict counter per edge
    cache lookups  WalkCache.lookup_user on rocksdict      vs  a raw rocksdict get of the bytes
    rebuild        WalkCache.rebuild into rocksdict        vs  batch-building the graph itself
    GraphCL        one epoch on a smaller graph (`--graphcl-edges`), setup (positives) apart
Wall times on a shared machine include preemption; CPU times are printed beside them.
Ends with one JSON line: edge_updates_per_s, cache_lookup_p99_ms, rebuild_1m_edges_seconds,
graphcl_epoch_seconds and the rest.

Usage: OMP_NUM_THREADS=1 python bench/graph.py [--edges 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mmbee.graph.state import DAY_MS, GiftGraph, GraphConfig
from mmbee.graph.walk_cache import RocksCacheStore, WalkCache, user_key

T_START = 1_746_403_200_000  # 2025-05-05, like the simulator's default


def synthetic_gifts(n_gifts: int, seed: int) -> list[tuple[str, str, int, float]]:
    """(user, author, ts_ms, value) rows: ~n_gifts/5 users, n_gifts/100 Zipf-popular authors."""
    rng = np.random.default_rng(seed)
    n_users, n_authors = max(10, n_gifts // 5), max(100, n_gifts // 100)
    pop = 1.0 / np.arange(1, n_authors + 1)
    pop /= pop.sum()
    users = np.repeat(np.arange(n_users), rng.geometric(1 / 5, size=n_users))[:n_gifts]
    authors = rng.choice(n_authors, size=len(users), p=pop)
    ts = T_START + rng.integers(0, 30 * DAY_MS, size=len(users))
    values = rng.choice([1.0, 2.0, 5.0, 10.0, 52.0, 99.0, 520.0], size=len(users))
    return list(
        zip(
            [f"u{u}" for u in users.tolist()],
            [f"a{a}" for a in authors.tolist()],
            ts.tolist(),
            values.tolist(),
            strict=True,
        )
    )


def build(rows: list[tuple[str, str, int, float]]) -> tuple[GiftGraph, float]:
    g = GiftGraph(GraphConfig())
    add = g.add_gift
    t = time.perf_counter()
    for u, a, ts, v in rows:
        add(u, a, ts, v)
    return g, time.perf_counter() - t


def dict_baseline(rows: list[tuple[str, str, int, float]]) -> float:
    d: dict[tuple[str, str], float] = {}
    t = time.perf_counter()
    for u, a, _ts, v in rows:
        k = (u, a)
        d[k] = d.get(k, 0.0) + v
    return time.perf_counter() - t


def edges_until(target: int, seed: int) -> list[tuple[str, str, int, float]]:
    """A log with about `target` distinct (user, author) edges."""
    n = target
    while True:
        rows = synthetic_gifts(n, seed)
        distinct = len({(u, a) for u, a, _, _ in rows})
        if distinct >= target:
            return rows
        n = int(n * target / distinct) + 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edges", type=int, default=1_000_000, help="edges of the rebuild graph")
    p.add_argument("--update-gifts", type=int, default=200_000)
    p.add_argument("--lookups", type=int, default=20_000)
    p.add_argument("--graphcl-edges", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    out: dict[str, object] = {"machine": f"{os.cpu_count()} cores, CPU", "repeats": args.repeats}

    # 1. incremental updates
    rows = synthetic_gifts(args.update_gifts, seed=1)
    upd, upd_cpu, base, base_cpu = [], [], [], []
    for _ in range(args.repeats):
        gc.collect()
        c = time.process_time()
        upd.append(len(rows) / build(rows)[1])
        upd_cpu.append(len(rows) / (time.process_time() - c))
        c = time.process_time()
        base.append(len(rows) / dict_baseline(rows))
        base_cpu.append(len(rows) / (time.process_time() - c))
    out["edge_updates_per_s"] = round(statistics.median(upd))
    out["edge_updates_per_cpu_s"] = round(statistics.median(upd_cpu))
    out["edge_updates_baseline_dict_per_s"] = round(statistics.median(base))
    out["edge_updates_baseline_dict_per_cpu_s"] = round(statistics.median(base_cpu))
    out["update_gifts"] = len(rows)

    # 2. full rebuild of the cache for ~1M edges, into rocksdict
    rows = edges_until(args.edges, seed=2)
    graph, build_s = build(rows)
    del rows
    out["rebuild_graph_edges"] = graph.num_edges
    out["rebuild_nodes"] = graph.num_users + graph.num_authors
    out["batch_build_graph_seconds"] = round(build_s, 2)
    with tempfile.TemporaryDirectory() as tmp:
        times, cpu = [], []
        for i in range(args.repeats):
            cache = WalkCache(graph, RocksCacheStore(Path(tmp) / f"cache{i}"))
            t, c = time.perf_counter(), time.process_time()
            cache.rebuild()
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            if i < args.repeats - 1:
                cache.close()
        out["rebuild_1m_edges_seconds"] = round(statistics.median(times), 2)
        out["rebuild_1m_edges_cpu_seconds"] = round(statistics.median(cpu), 2)
        out["rebuild_runs_seconds"] = [round(x, 2) for x in times]

        # 3. lookups from the rocksdict cache (serving path) vs raw rocksdict gets
        rng = np.random.default_rng(3)
        users = graph.users()
        picks = [users[i] for i in rng.integers(0, len(users), size=args.lookups).tolist()]
        lat, cpu_lat, raw = [], [], []
        db = cache.store._db  # type: ignore[attr-defined]
        for u in picks:
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            cache.lookup_user(u)
            t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
            db.get(user_key(u).encode())
            t2 = time.perf_counter_ns()
            lat.append((t1 - t0) / 1e6)
            cpu_lat.append((c1 - c0) / 1e6)
            raw.append((t2 - t1) / 1e6)
        cache.close()

    def pct(xs: list[float], q: float) -> float:
        return round(float(np.percentile(xs, q)), 4)

    out["cache_lookup_p50_ms"] = pct(lat, 50)
    out["cache_lookup_p99_ms"] = pct(lat, 99)
    out["cache_lookup_cpu_p99_ms"] = pct(cpu_lat, 99)  # on-CPU time: excludes preemption
    out["cache_lookup_baseline_raw_get_p50_ms"] = pct(raw, 50)
    out["cache_lookup_baseline_raw_get_p99_ms"] = pct(raw, 99)
    del graph, cache
    gc.collect()

    # 4. GraphCL epoch
    import torch

    from mmbee.graph.graphcl import GraphCLConfig, train_graphcl

    torch.set_num_threads(1)
    g_small, _ = build(edges_until(args.graphcl_edges, seed=4))
    train_graphcl(g_small, GraphCLConfig(epochs=0))  # warm-up: imports, first allocations
    setup, full, setup_cpu, full_cpu = [], [], [], []
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        train_graphcl(g_small, GraphCLConfig(epochs=0))
        setup.append(time.perf_counter() - t)
        setup_cpu.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        train_graphcl(g_small, GraphCLConfig(epochs=2))
        full.append(time.perf_counter() - t)
        full_cpu.append(time.process_time() - c)
    cfg = GraphCLConfig()
    med = statistics.median
    out["graphcl_epoch_seconds"] = round((med(full) - med(setup)) / 2, 2)
    out["graphcl_epoch_cpu_seconds"] = round((med(full_cpu) - med(setup_cpu)) / 2, 2)
    out["graphcl_setup_seconds"] = round(statistics.median(setup), 2)
    out["graphcl_graph"] = {
        "edges": g_small.num_edges,
        "nodes": g_small.num_users + g_small.num_authors,
        "dim": cfg.dim,
        "layers": cfg.num_layers,
        "batch_size": cfg.batch_size,
        "note": "epoch = (time of 2 epochs - time of 0 epochs) / 2; setup builds the positives",
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
