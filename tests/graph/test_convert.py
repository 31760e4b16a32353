"""networkx boundary: GraphML export round-trips, stats are right on a known graph."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from mmbee.graph.convert import graph_stats, to_networkx, write_graphml
from mmbee.graph.state import GiftGraph


def test_graphml_roundtrip(small_graph: GiftGraph, tmp_path: Path) -> None:
    path = write_graphml(small_graph, tmp_path / "out" / "g.graphml")
    back = nx.read_graphml(path)
    assert sorted(back.nodes) == ["a:a1", "a:a2", "a:a3", "u:u1", "u:u2", "u:u3"]
    u2a = [(x, y) for x, y, d in back.edges(data=True) if d["relation"] == "u2a"]
    a2a = [(x, y, d) for x, y, d in back.edges(data=True) if d["relation"] == "a2a"]
    assert len(u2a) == 5 and len(a2a) == 2
    e = back.edges["u:u2", "a:a1"]
    assert e["count"] == 1 and e["value"] == 1.0 and e["weight"] == pytest.approx(1.0)
    assert back.nodes["u:u1"]["kind"] == "user"
    assert back.edges["a:a2", "a:a3"]["similarity"] == pytest.approx(
        small_graph.similarity("a2", "a3")
    )


def test_user_and_author_with_the_same_id_stay_apart(small_graph: GiftGraph) -> None:
    small_graph.add_gift("a1", "a1", 1_750_000_000_000, 1.0)  # a user called "a1"
    g = to_networkx(small_graph, a2a=False)
    assert g.has_edge("u:a1", "a:a1") and g.nodes["u:a1"]["kind"] == "user"


def test_stats(small_graph: GiftGraph) -> None:
    s = graph_stats(small_graph)
    assert (s["users"], s["authors"], s["u2a_edges"], s["gifts"]) == (3, 3, 5, 5)
    assert s["components"] == 1 and s["largest_component"] == 6
    assert s["user_degree"] == {"mean": pytest.approx(5 / 3, abs=1e-4), "median": 2.0, "max": 2.0}
    assert s["a2a_pairs"] == 2 and s["authors_with_a2a"] == 3
    assert s["density"] == pytest.approx(5 / 9, abs=1e-6)
    small_graph.add_gift("lonely", "far", 1_750_000_000_000, 1.0)
    assert graph_stats(small_graph)["components"] == 2
