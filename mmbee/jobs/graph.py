"""Graph jobs over a log directory: train GraphCL, export the graph (GraphML), summarise it.

A log directory is KuaiLive-schema (simulated by `mmbee simulate` or a user's own KuaiLive
download); its gifts are read through `mmbee.simulator.reader`, with the reader's ids
(`u<user_id>`, `a<streamer_id>`) and event ids, so the graph built here has the same node ids
as the one the streaming agent builds from a replay of the same log.

Example:
    >>> summary = train_graph("logs/demo", Path("graphcl.pt"))  # doctest: +SKIP
    >>> summary["loss_last"] < summary["loss_first"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmbee.graph import GiftGraph, GraphConfig, build
from mmbee.schemas import GiftEvent

__all__ = ["read_gifts", "graph_from_log", "train_graph", "export_graph", "graph_summary"]


def read_gifts(logdir: Path | str) -> list[GiftEvent]:
    """Every good row of the log's gift.csv as a GiftEvent, in file order.

    Raises:
        KeyError: the directory has no readable gift.csv.
    """
    from mmbee.simulator.reader import author_key, event_id, live_key, read_log, user_key

    bundle = read_log(logdir)
    t = bundle.table("gift.csv")
    columns = zip(
        t["user_id"].tolist(),
        t["streamer_id"].tolist(),
        t["live_id"].tolist(),
        t["timestamp"].tolist(),
        t["gift_price"].tolist(),
        strict=True,
    )
    return [
        GiftEvent(
            event_id=event_id(bundle.log_id, "gift", row),
            ts_ms=int(ts),
            user_id=user_key(int(u)),
            author_id=author_key(int(a)),
            live_id=live_key(int(live)),
            gift_value=float(price),
        )
        for row, (u, a, live, ts, price) in enumerate(columns)
    ]


def graph_from_log(logdir: Path | str, config: GraphConfig | None = None) -> GiftGraph:
    """The U2A/A2A graph of a log's gifts (batch build, duplicates by event id dropped)."""
    return build(read_gifts(logdir), config or GraphConfig())


def train_graph(
    logdir: Path | str,
    out: Path,
    *,
    graph_config: GraphConfig | None = None,
    epochs: int | None = None,
    dim: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Train GraphCL on the log's gift graph and save the checkpoint to `out`; returns a summary
    (sizes, first and last epoch loss, seconds, checkpoint path)."""
    import time

    from mmbee.graph.graphcl import GraphCLConfig, train_graphcl

    overrides = {
        k: v for k, v in (("epochs", epochs), ("dim", dim), ("seed", seed)) if v is not None
    }
    config = GraphCLConfig(**overrides)
    graph = graph_from_log(logdir, graph_config)
    start = time.perf_counter()
    emb, history = train_graphcl(graph, config)
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    emb.save(out)
    return {
        "checkpoint": str(out),
        "users": graph.num_users,
        "authors": graph.num_authors,
        "edges": graph.num_edges,
        "gifts": graph.num_gifts,
        "epochs": len(history),
        "loss_first": history[0] if history else None,
        "loss_last": history[-1] if history else None,
        "train_seconds": round(seconds, 2),
        "config": json.loads(json.dumps(emb.checkpoint()["config"])),
    }


def export_graph(logdir: Path | str, out: Path, graph_config: GraphConfig | None = None) -> Path:
    """Write the log's gift graph (U2A edges and top-k A2A edges) as GraphML to `out`."""
    from mmbee.graph.convert import write_graphml

    return write_graphml(graph_from_log(logdir, graph_config), out)


def graph_summary(logdir: Path | str, graph_config: GraphConfig | None = None) -> dict[str, Any]:
    """Sizes, degrees, components and A2A coverage of the log's gift graph."""
    from mmbee.graph.convert import graph_stats

    return graph_stats(graph_from_log(logdir, graph_config))
