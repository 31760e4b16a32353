"""The graph jobs on a simulated log (the simulator's `demo` preset): GraphCL groups communities,
`mmbee graph train | export | stats` work end to end."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from mmbee.cli import main
from mmbee.graph.graphcl import GraphCLConfig, NodeEmbeddings, train_graphcl
from mmbee.graph.state import GraphConfig, build
from mmbee.jobs.graph import read_gifts


@pytest.fixture(scope="module")
def demo_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmbee.simulator.config import preset
    from mmbee.simulator.logs import write_log
    from mmbee.simulator.world import generate_world

    out = tmp_path_factory.mktemp("demo_log")
    write_log(generate_world(preset("demo"), seed=0), out, preset_name="demo")
    return out


def nn_purity(vectors: torch.Tensor, labels: list[int]) -> float:
    v = torch.nn.functional.normalize(vectors, dim=-1)
    s = v @ v.T
    s.fill_diagonal_(-2.0)
    return float(np.mean([labels[i] == labels[j] for i, j in enumerate(s.argmax(1).tolist())]))


@pytest.fixture(scope="module")
def demo_gifts(demo_log: Path) -> list:
    return read_gifts(demo_log)


def test_read_gifts_uses_the_reader_ids(demo_gifts: list) -> None:
    gifts = demo_gifts
    assert len(gifts) > 500
    assert all(g.user_id.startswith("u") and g.author_id.startswith("a") for g in gifts)
    assert len({g.event_id for g in gifts}) == len(gifts)


def test_graphcl_groups_simulated_communities(demo_log: Path, demo_gifts: list) -> None:
    from mmbee.simulator.reader import read_communities

    graph = build(demo_gifts, GraphConfig())
    community = read_communities(demo_log)
    emb, history = train_graphcl(
        graph, GraphCLConfig(dim=32, num_layers=1, epochs=40, batch_size=64, seed=0)
    )
    labels = [community[u] for u in emb.users]
    learned = nn_purity(emb.user_vectors, labels)
    gen = torch.Generator().manual_seed(0)
    rand = float(
        np.mean([nn_purity(torch.randn(len(labels), 32, generator=gen), labels) for _ in range(5)])
    )
    print(f"demo log: user NN community purity {learned:.3f} vs random {rand:.3f}")
    assert history[-1] < history[0]
    assert learned > 2.5 * rand and learned > rand + 0.2


def test_cli_train_export_stats(
    demo_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = tmp_path / "g.pt"
    with pytest.raises(SystemExit) as done:
        main(["graph", "train", str(demo_log), "--out", str(ckpt), "--epochs", "2", "--dim", "8"])
    assert done.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 2 and summary["checkpoint"] == str(ckpt)
    emb = NodeEmbeddings.load(ckpt)
    assert emb.dim == 8 and len(emb.users) == summary["users"]

    with pytest.raises(SystemExit):
        main(["graph", "export", str(demo_log), "--out", str(tmp_path / "g.graphml")])
    g = nx.read_graphml(capsys.readouterr().out.strip())
    assert sum(1 for _, _, d in g.edges(data=True) if d["relation"] == "u2a") == summary["edges"]

    with pytest.raises(SystemExit):
        main(["graph", "stats", str(demo_log)])
    stats = json.loads(capsys.readouterr().out)
    assert stats["users"] == summary["users"] and stats["u2a_edges"] == summary["edges"]
