"""GraphCL: the loss decreases, seeds reproduce, checkpoints round-trip, communities emerge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmbee.graph.graphcl import (
    GraphCL,
    GraphCLConfig,
    NodeEmbeddings,
    graphcl_loss,
    train_graphcl,
    u2a_edge_index,
)
from mmbee.graph.metapaths import user_expansions
from mmbee.graph.state import GiftGraph, GraphConfig

T0 = 1_750_000_000_000
FAST = GraphCLConfig(dim=16, num_layers=1, epochs=25, batch_size=64, num_negatives=8)


def community_graph(
    n_comm: int = 4, authors_per: int = 5, users_per: int = 40, p_in: float = 0.85, seed: int = 0
) -> tuple[GiftGraph, dict[str, int]]:
    """Users gift 4 times, each time to an author of their own community with prob. p_in."""
    rng = np.random.default_rng(seed)
    g = GiftGraph(GraphConfig())
    community = {}
    for c in range(n_comm):
        for i in range(users_per):
            u = f"u{c}_{i}"
            community[u] = c
            for _ in range(4):
                cc = c if rng.random() < p_in else int(rng.integers(n_comm))
                a = f"a{cc}_{int(rng.integers(authors_per))}"
                g.add_gift(u, a, T0 + int(rng.integers(10**8)), float(rng.integers(1, 50)))
    return g, community


def nn_purity(vectors: torch.Tensor, labels: list[int]) -> float:
    """Share of nodes whose nearest other node (cosine) has the same label."""
    v = torch.nn.functional.normalize(vectors, dim=-1)
    s = v @ v.T
    s.fill_diagonal_(-2.0)
    nearest = s.argmax(1).tolist()
    return float(np.mean([labels[i] == labels[j] for i, j in enumerate(nearest)]))


@pytest.fixture(scope="module")
def trained() -> tuple[GiftGraph, dict[str, int], NodeEmbeddings, list[float]]:
    g, community = community_graph()
    emb, history = train_graphcl(g, FAST)
    return g, community, emb, history


def test_loss_decreases(trained: tuple) -> None:
    _, _, _, history = trained
    assert len(history) == FAST.epochs
    assert np.mean(history[-5:]) < 0.75 * np.mean(history[:2])


def test_embeddings_group_users_of_the_same_community(trained: tuple) -> None:
    _, community, emb, _ = trained
    labels = [community[u] for u in emb.users]
    learned = nn_purity(emb.embeddings(emb.users, "user"), labels)
    rand = nn_purity(
        torch.randn(len(labels), FAST.dim, generator=torch.Generator().manual_seed(0)), labels
    )
    assert rand < 0.4  # 4 communities: chance is ~0.25
    assert learned > 0.8
    assert learned > rand + 0.4


def test_same_seed_same_embeddings() -> None:
    g, _ = community_graph(users_per=8)
    cfg = GraphCLConfig(dim=8, num_layers=1, epochs=3, batch_size=16, num_negatives=4, seed=3)
    e1, h1 = train_graphcl(g, cfg)
    e2, h2 = train_graphcl(g, cfg)
    assert h1 == h2
    assert torch.equal(e1.user_vectors, e2.user_vectors)
    e3, _ = train_graphcl(g, GraphCLConfig(**{**cfg.__dict__, "seed": 4}))
    assert not torch.equal(e1.user_vectors, e3.user_vectors)


def test_checkpoint_roundtrip_and_unknown_ids(trained: tuple, tmp_path: Path) -> None:
    _, _, emb, _ = trained
    emb.save(tmp_path / "graphcl.pt")
    raw = torch.load(tmp_path / "graphcl.pt", weights_only=True)
    assert set(raw) == {"config", "state_dict", "vocab"}
    back = NodeEmbeddings.load(tmp_path / "graphcl.pt")
    assert back.config == emb.config and back.users == emb.users and back.authors == emb.authors
    ids = [emb.users[3], "never-seen", emb.users[0]]
    vec, known = back.lookup(ids, "user")
    assert vec.shape == (3, FAST.dim)
    assert known.tolist() == [True, False, True]
    assert torch.equal(vec[1], torch.zeros(FAST.dim))
    assert torch.equal(vec[0], emb.user_vectors[3])
    assert torch.equal(back.mask(["a0_0", "u0_0"], "author"), torch.tensor([True, False]))
    assert back.embeddings([], "author").shape == (0, FAST.dim)


def test_for_expansions_pads_and_masks(trained: tuple) -> None:
    g, _, emb, _ = trained
    exp = user_expansions(g, "u0_0")
    exp["u2a2u"] = exp["u2a2u"][:2] + [("ghost", 0.5)]
    out = emb.for_expansions(exp, n=5)
    t = out["u2a2u"]
    assert t.vectors.shape == (5, FAST.dim) and t.weights.shape == (5,) and t.mask.shape == (5,)
    assert t.mask.tolist() == [True, True, False, False, False]
    assert t.weights[2:].eq(0).all()
    assert torch.equal(out["u2a2a"].vectors[0], emb.embeddings([exp["u2a2a"][0][0]], "author")[0])


def test_loss_terms_match_their_definitions() -> None:
    cfg = GraphCLConfig(dim=2, temperature=0.5, lam=0.3)
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss, l_ce, l_nce = graphcl_loss(
        z, torch.tensor([0]), torch.tensor([1]), torch.tensor([[2]]), cfg
    )
    s_pos, s_neg = 1.0 / 0.5, 0.0
    ce = np.log1p(np.exp(-s_pos)) + np.log1p(np.exp(s_neg))
    nce = -s_pos + np.log(np.exp(s_pos) + np.exp(s_neg))
    assert float(l_ce) == pytest.approx(ce, rel=1e-6)
    assert float(l_nce) == pytest.approx(nce, rel=1e-6)
    assert float(loss) == pytest.approx(ce + 0.3 * nce, rel=1e-6)


def test_model_shapes_and_edge_index() -> None:
    g = GiftGraph(GraphConfig())
    g.add_gift("u1", "a1", T0, 1.0)
    g.add_gift("u2", "a1", T0, 1.0)
    ei = u2a_edge_index(g, g.users(), g.authors())
    assert ei.tolist() == [[0, 1, 2, 2], [2, 2, 0, 1]]
    z = GraphCL(3, GraphCLConfig(dim=4, num_layers=2))(ei)
    assert z.shape == (3, 4)


def test_graph_without_positives_trains_nothing() -> None:
    g = GiftGraph(GraphConfig())
    g.add_gift("u1", "a1", T0, 1.0)
    emb, history = train_graphcl(g, GraphCLConfig(dim=4, epochs=3))
    assert history == [] and emb.user_vectors.shape == (1, 4)
