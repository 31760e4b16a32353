"""GTR models: shapes, gradients to every parameter, masking, checkpoint round trip."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mmbee.scorer.batch import GTRBatch, id_row
from mmbee.scorer.gtr import (
    VARIANTS,
    GTRConfig,
    GTRModel,
    config_for_variant,
    load_checkpoint,
    save_checkpoint,
)

ROWS = 64
DIMS = {"visual_dim": 12, "speech_dim": 6, "comment_dim": 6}


def tiny(variant: str, encoder: str = "mean-pool") -> GTRConfig:
    return config_for_variant(
        variant,
        content_encoder=encoder,
        dim=8,
        user_rows=ROWS,
        author_rows=ROWS,
        sim_top_k=3,
        hidden=(16,),
        mmoe_expert_hidden=(16,),
        mmoe_tower_hidden=(8,),
        content_config={**DIMS, "out_dim": 8},
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_gradients_reach_every_parameter(
    variant: str, batch_factory: Callable[..., GTRBatch]
) -> None:
    torch.manual_seed(0)
    model = GTRModel(tiny(variant))
    batch = batch_factory()
    out = model(batch)
    expected = ("gift",) if variant.startswith("sim") else ("watch", "comment", "gift")
    assert tuple(out.logits) == expected
    for logit in out.logits.values():
        assert logit.shape == (batch.batch_size,) and torch.isfinite(logit).all()
    assert ("graphcl_nce" in out.aux_losses) == ("gie" in variant)
    loss = sum(v.sum() for v in out.logits.values()) + sum(out.aux_losses.values())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{variant}: no gradient for {name}"
        assert p.grad.abs().sum() > 0, f"{variant}: zero gradient for {name}"


@pytest.mark.parametrize("variant", ["sim_mfq_gie", "mmoe_mfq_gie"])
def test_predict_is_a_probability_without_grad_and_batch_independent(
    variant: str, batch_factory: Callable[..., GTRBatch]
) -> None:
    torch.manual_seed(0)
    model = GTRModel(tiny(variant))
    model.train()
    batch = batch_factory(b=6)
    p = model.predict(batch)
    assert model.training  # predict restores the mode
    assert p.shape == (6,) and not p.requires_grad
    assert ((p > 0) & (p < 1)).all()
    # Scoring one impression alone gives the same as inside the batch (no cross-talk).
    one = GTRBatch(
        **{
            k: (v[2:3] if isinstance(v, torch.Tensor) and k != "content_index" else v)
            for k, v in vars(batch).items()
        }
    )
    one.content_index = batch.content_index[2:3]
    assert torch.allclose(model.predict(one), p[2:3], atol=1e-6)


@pytest.mark.parametrize("variant", ["sim_gie", "sim_mfq_gie"])
def test_a_request_batch_shares_the_user_side_and_scores_like_single_rows(
    variant: str, batch_factory: Callable[..., GTRBatch]
) -> None:
    """Rows that repeat one user's history and user-side expansions (a score request) are
    computed once and broadcast (`same_rows`): each row scores as it does alone."""
    torch.manual_seed(0)
    model = GTRModel(tiny(variant)).eval()
    batch = batch_factory(b=6)
    req = GTRBatch(**vars(batch))
    for name in ("hist_author", "hist_kind", "hist_age", "hist_mask"):
        setattr(req, name, getattr(batch, name)[:1].expand_as(getattr(batch, name)))
    for name in ("exp_ids", "exp_weight", "exp_mask"):
        t = getattr(batch, name).clone()
        t[:, :3] = t[:1, :3]  # u2a2u, u2a2u2a, u2a2a: the user's lists
        setattr(req, name, t)
    p = model.predict(req)
    for i in range(6):
        one = GTRBatch(
            **{
                k: (v[i : i + 1] if isinstance(v, torch.Tensor) and k != "content_index" else v)
                for k, v in vars(req).items()
            }
        )
        one.content_index = req.content_index[i : i + 1]
        assert torch.allclose(model.predict(one), p[i : i + 1], atol=1e-6)
    assert not torch.allclose(p, model.predict(batch), atol=1e-4)  # the user side mattered


def test_padding_does_not_change_scores(batch_factory: Callable[..., GTRBatch]) -> None:
    torch.manual_seed(0)
    model = GTRModel(tiny("sim_gie")).eval()
    batch = batch_factory()
    ref = model.predict(batch)
    # Garbage in padded positions of the sequence and of the expansions changes nothing.
    noisy = GTRBatch(**vars(batch))
    noisy.hist_author = torch.where(batch.hist_mask, batch.hist_author, 7)
    noisy.hist_kind = torch.where(batch.hist_mask, batch.hist_kind, 2)
    noisy.exp_ids = torch.where(batch.exp_mask, batch.exp_ids, 5)
    noisy.exp_weight = torch.where(batch.exp_mask, batch.exp_weight, 3.0)
    assert torch.allclose(model.predict(noisy), ref, atol=1e-6)


def test_expansions_and_history_matter(batch_factory: Callable[..., GTRBatch]) -> None:
    torch.manual_seed(0)
    model = GTRModel(tiny("sim_gie")).eval()
    batch = batch_factory()
    ref = model.predict(batch)
    other = GTRBatch(**vars(batch))
    other.exp_ids = torch.roll(batch.exp_ids, 1, dims=-1)
    other.exp_mask = torch.ones_like(batch.exp_mask)
    assert not torch.allclose(model.predict(other), ref)
    other = GTRBatch(**vars(batch))
    other.hist_mask = torch.zeros_like(batch.hist_mask)
    assert not torch.allclose(model.predict(other), ref)


def test_checkpoint_round_trip(tmp_path: Path, batch_factory: Callable[..., GTRBatch]) -> None:
    torch.manual_seed(0)
    model = GTRModel(tiny("mmoe_mfq_gie"))
    batch = batch_factory()
    path = tmp_path / "gtr.pt"
    save_checkpoint(path, model, {"features": {"history": 7}})
    loaded, config = load_checkpoint(path)
    assert config["features"] == {"history": 7}
    assert loaded.config == model.config
    assert torch.equal(loaded.predict(batch), model.predict(batch))


def test_config_names_and_errors() -> None:
    assert [config_for_variant(v).variant for v in VARIANTS] == list(VARIANTS)
    assert config_for_variant("sim_mfq", content_encoder="vbf++").variant == "sim_vbf"
    with pytest.raises(ValueError, match="unknown variant"):
        config_for_variant("din")
    with pytest.raises(ValueError, match="unknown GTRConfig keys"):
        GTRConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="base"):
        GTRConfig(base="dlrm")  # type: ignore[arg-type]
    assert id_row("u1", 64) == id_row("u1", 64) and 1 <= id_row("u1", 64) < 64


def test_graph_membership_matches_a_brute_force_reading() -> None:
    from mmbee.scorer.batch import EXPANSIONS, KINDS
    from mmbee.scorer.layers import GRAPH_MEMBERSHIP, graph_membership

    g = torch.Generator().manual_seed(0)
    b, n, h = 7, 5, 6
    ids = torch.randint(1, 9, (b, len(EXPANSIONS), n), generator=g)
    weight = torch.rand(b, len(EXPANSIONS), n, generator=g) + 0.01
    mask = torch.rand(b, len(EXPANSIONS), n, generator=g) < 0.7
    author = torch.randint(1, 9, (b,), generator=g)
    hist = torch.randint(1, 9, (b, h), generator=g)
    kind = torch.randint(0, len(KINDS), (b, h), generator=g)
    hmask = torch.rand(b, h, generator=g) < 0.8
    f = graph_membership(ids, weight, mask, author, hist, kind, hmask)
    assert f.shape == (b, len(GRAPH_MEMBERSHIP))
    col = {name: i for i, name in enumerate(GRAPH_MEMBERSHIP)}
    for r in range(b):
        for e in ("u2a2u2a", "u2a2a"):
            p = EXPANSIONS.index(e)
            entries = [
                (float(weight[r, p, j]), int(ids[r, p, j])) for j in range(n) if mask[r, p, j]
            ]
            hits = [w for w, a in entries if a == int(author[r])]
            assert f[r, col[f"{e}_hit"]] == float(bool(hits))
            if hits:
                top = max(w for w, _ in entries)
                rel = sum(torch.log(torch.tensor(w / top)).item() for w in hits)
                assert f[r, col[f"{e}_log_rel_weight"]].item() == pytest.approx(rel, abs=1e-5)
                ranks = [sum(1 for w2, _ in entries if w2 > w) for w in hits]
                inv = sum(1 / (1 + k) ** 0.5 for k in ranks)
                assert f[r, col[f"{e}_inv_sqrt_rank"]].item() == pytest.approx(inv, abs=1e-5)
        for e in ("a2a", "a2u2a"):
            p = EXPANSIONS.index(e)
            members = {int(ids[r, p, j]) for j in range(n) if mask[r, p, j]}
            for k in ("watch", "gift"):
                count = sum(
                    1
                    for j in range(h)
                    if hmask[r, j]
                    and int(kind[r, j]) == KINDS.index(k)
                    and int(hist[r, j]) in members
                )
                got = f[r, col[f"{e}_{k}_in_history"]].item()
                assert got == pytest.approx(torch.log1p(torch.tensor(float(count))).item())
        for p, e in enumerate(EXPANSIONS):
            assert f[r, col[f"{e}_present"]] == float(bool(mask[r, p].any()))


def test_graph_membership_broadcasts_a_shared_user_side() -> None:
    from mmbee.scorer.layers import graph_membership

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 9, (1, 5, 4), generator=g)
    w, m = torch.rand(1, 5, 4, generator=g), torch.ones(1, 5, 4, dtype=torch.bool)
    hist, kind = torch.randint(1, 9, (1, 3), generator=g), torch.zeros(1, 3, dtype=torch.long)
    author = torch.arange(1, 9)
    shared = graph_membership(ids, w, m, author, hist, kind, hist > 0)
    rows = graph_membership(
        ids.expand(8, -1, -1),
        w.expand(8, -1, -1),
        m.expand(8, -1, -1),
        author,
        hist.expand(8, -1),
        kind.expand(8, -1),
        (hist > 0).expand(8, -1),
    )
    assert torch.allclose(shared, rows)
