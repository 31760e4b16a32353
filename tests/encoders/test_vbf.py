"""VBF++ model: shapes, masks, the KL against Monte Carlo, eq. 7, per-term gradients, the k-means
prior, uncertainty-guided sampling, ablation switches, checkpoint round trip."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mmbee.encoders.base import SegmentBatch
from mmbee.encoders.batching import synthetic_batch
from mmbee.encoders.registry import build_encoder, load_encoder, save_encoder
from mmbee.encoders.vbf import (
    VBFConfig,
    VBFEncoder,
    explore_scores,
    gaussian_kl,
    kmeans,
    mixture_kl,
)

DV, DS, DT, DC = 12, 6, 6, 4
TINY: dict[str, Any] = {
    "d_visual": DV,
    "d_speech": DS,
    "d_comments": DT,
    "d_context": DC,
    "d_hidden": 16,
    "d_latent": 8,
    "d_fused": 12,
    "n_clusters": 3,
}


def _enc(seed: int = 0, **over: Any) -> VBFEncoder:
    enc = build_encoder("vbf++", {**TINY, **over}, seed=seed)
    assert isinstance(enc, VBFEncoder)
    return enc


def _batch(seed: int, B: int = 6, L: int = 5, context: bool = True, **kw: Any) -> SegmentBatch:
    g = torch.Generator().manual_seed(seed)
    b = synthetic_batch(B, L, visual_dim=DV, speech_dim=DS, comment_dim=DT, generator=g, **kw)
    if context:
        b.context = F.one_hot(torch.randint(DC, (B,), generator=g), DC).float()
    return b


def _garbage(x: torch.Tensor, keep: torch.Tensor, seed: int) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * 100
    noise[..., 0] = float("nan")
    return torch.where(keep.unsqueeze(-1), x, noise)


def _eval_out(enc: VBFEncoder, batch: SegmentBatch) -> dict[str, torch.Tensor]:
    enc.eval()
    with torch.no_grad():
        out = enc(batch, compute_losses=True)
    return {"embedding": out.embedding, **out.extras, **out.aux_losses}


# ----------------------------------------------------------------------------- shapes, masks


def test_shapes_in_train_and_eval_mode() -> None:
    enc = _enc()
    for kw in ({}, {"frames": 3, "comments": 4}):
        batch = _batch(1, **kw)
        enc.train()
        out = enc(batch)
        assert out.embedding.shape == (6, 12)
        assert out.extras["z"].shape == out.extras["mu"].shape == (6, 8)
        assert out.extras["fusion_weights"].shape == (6, 3)
        assert out.extras["posterior_var"].shape == (6,)
        assert out.extras["prior_weights"].shape == (6, 3)
        assert set(out.aux_losses) == {"vbf_recon", "vbf_kl", "vbf_sparse", "vbf_smooth"}
        assert all(v.dim() == 0 and torch.isfinite(v) for v in out.aux_losses.values())
        assert not torch.equal(out.extras["z"], out.extras["mu"])  # sampled in training
        enc.eval()
        out = enc(batch)
        assert out.aux_losses == {} and "prior_weights" not in out.extras
        assert torch.equal(out.extras["z"], out.extras["mu"])  # the mean strategy


def test_fusion_weights_live_on_present_modalities() -> None:
    enc = _enc()
    batch = _batch(2, B=16)
    alpha = enc.predict_with_uncertainty(batch, generator=torch.Generator()).fusion_weights
    present = batch.modality_mask & batch.token_mask().any(dim=1)
    assert torch.all(alpha[~present] == 0)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(16))


def test_padding_and_absent_modalities_change_nothing() -> None:
    """Noise and NaN in padded segments, frames, comments and absent modalities: same outputs
    (embedding, posterior, fusion weights, every loss term)."""
    enc = _enc()
    batch = _batch(3, frames=3, comments=4)
    ref = _eval_out(enc, batch)
    tok = batch.token_mask()
    assert not tok.all()
    assert batch.frame_mask is not None and batch.comment_mask is not None
    dirty = dataclasses.replace(
        batch,
        visual=_garbage(batch.visual, tok[:, :, 0, None] & batch.frame_mask, 1),
        speech=_garbage(batch.speech, tok[:, :, 1], 2),
        comments=_garbage(batch.comments, tok[:, :, 2, None] & batch.comment_mask, 3),
    )
    got = _eval_out(enc, dirty)
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, atol=1e-5, rtol=1e-5, msg=k)


def test_nan_padding_does_not_poison_gradients() -> None:
    enc = _enc()
    batch = _batch(4, frames=2, comments=2)
    tok = batch.token_mask()
    batch.speech = _garbage(batch.speech, tok[:, :, 1], 5)
    enc.train()
    out = enc(batch)
    torch.stack(list(out.aux_losses.values())).sum().add(out.embedding.sum()).backward()
    for n, p in enc.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n


def test_extra_left_padding_changes_nothing() -> None:
    enc = _enc()
    batch = _batch(5)
    ref = _eval_out(enc, batch)
    B = batch.batch_size
    g = torch.Generator().manual_seed(9)
    assert batch.segment_modality_mask is not None

    def pad(x: torch.Tensor, value: bool | None = None) -> torch.Tensor:
        shape = (B, 2, *x.shape[2:])
        extra = (
            torch.full(shape, bool(value))
            if x.dtype == torch.bool
            else torch.randn(shape, generator=g)
        )
        return torch.cat([extra, x], dim=1)

    longer = dataclasses.replace(
        batch,
        visual=pad(batch.visual),
        speech=pad(batch.speech),
        comments=pad(batch.comments),
        segment_mask=pad(batch.segment_mask, False),
        segment_modality_mask=pad(batch.segment_modality_mask, True),
    )
    got = _eval_out(enc, longer)
    for k in ("embedding", "mu", "logvar", "fusion_weights", "vbf_recon", "vbf_kl"):
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5, msg=k)


def test_each_stream_is_encoded_independently_of_the_batch() -> None:
    enc = _enc()
    batch = _batch(6)
    full = enc.predict(batch)
    for i in (0, 4):
        one = SegmentBatch(
            **{
                f.name: (v[i : i + 1] if isinstance(v, torch.Tensor) else v)
                for f in dataclasses.fields(batch)
                for v in [getattr(batch, f.name)]
            }
        )
        torch.testing.assert_close(enc.predict(one), full[i : i + 1], atol=1e-5, rtol=1e-5)


def test_seeds_weights_and_sampling() -> None:
    before = torch.random.get_rng_state()
    a, b, c = _enc(7), _enc(7), _enc(8)
    assert torch.equal(torch.random.get_rng_state(), before)
    batch = _batch(7)
    assert torch.equal(a.predict(batch), b.predict(batch))
    assert not torch.allclose(a.predict(batch), c.predict(batch))
    a.train()
    z1 = a(batch, generator=torch.Generator().manual_seed(1)).extras["z"]
    z2 = a(batch, generator=torch.Generator().manual_seed(1)).extras["z"]
    z3 = a(batch, generator=torch.Generator().manual_seed(2)).extras["z"]
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)


def test_context_is_required_when_configured() -> None:
    with pytest.raises(ValueError, match="d_context"):
        _enc()(_batch(8, context=False))


# ----------------------------------------------------------------------------- the maths


def test_gaussian_kl_matches_monte_carlo() -> None:
    """Eq. 14 (diagonal) against E_q[log q(z) - log N_k(z)] with 100k samples, in Z = 32."""
    g = torch.Generator().manual_seed(0)
    Z = 32
    mu_q, lv_q = torch.randn(Z, generator=g), 0.8 * torch.randn(Z, generator=g)
    # a component a little off (so the MC estimate is precise) with systematically wider
    # variances (so the log-determinant term matters: a 10% error in it is ~10 stderr)
    mu_k = mu_q + 0.5 * torch.randn(Z, generator=g)
    lv_k = lv_q + 0.5 + 0.3 * torch.randn(Z, generator=g)
    q = torch.distributions.Normal(mu_q.double(), (0.5 * lv_q).exp().double())
    p = torch.distributions.Normal(mu_k.double(), (0.5 * lv_k).exp().double())
    z = mu_q.double() + (0.5 * lv_q).exp().double() * torch.randn(
        100_000, Z, generator=g, dtype=torch.float64
    )
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1)
    closed = float(gaussian_kl(mu_q, lv_q, mu_k, lv_k))
    stderr = float(mc.std()) / math.sqrt(mc.numel())
    assert abs(closed - float(mc.mean())) < 4 * stderr, (closed, float(mc.mean()), stderr)
    assert float(gaussian_kl(mu_q, lv_q, mu_q, lv_q)) == pytest.approx(0.0, abs=1e-5)


def test_mixture_kl_is_the_weighted_sum_and_bounds_the_true_kl() -> None:
    """Eq. 13 is sum_k pi_k KL(q || N_k), which by convexity is >= KL(q || sum_k pi_k N_k)."""
    g = torch.Generator().manual_seed(1)
    Z, K = 4, 3
    mu_q, lv_q = torch.randn(1, Z, generator=g), 0.3 * torch.randn(1, Z, generator=g)
    mu_k, lv_k = torch.randn(K, Z, generator=g), 0.3 * torch.randn(K, Z, generator=g)
    pi = torch.softmax(torch.randn(1, K, generator=g), -1)
    approx = mixture_kl(mu_q, lv_q, pi, mu_k, lv_k)
    manual = sum(pi[0, k] * gaussian_kl(mu_q[0], lv_q[0], mu_k[k], lv_k[k]) for k in range(K))
    torch.testing.assert_close(approx[0], manual)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(pi[0]),
        torch.distributions.Independent(torch.distributions.Normal(mu_k, (0.5 * lv_k).exp()), 1),
    )
    q = torch.distributions.Independent(
        torch.distributions.Normal(mu_q[0], (0.5 * lv_q[0]).exp()), 1
    )
    z = q.sample((200_000,))
    true_kl = float((q.log_prob(z) - mix.log_prob(z)).mean())
    assert float(approx[0]) >= true_kl - 0.02


def test_reconstruction_likelihood_is_eq7_over_present_dims() -> None:
    enc = _enc(recon_sigma2=0.7)
    batch = _batch(9)
    enc.eval()
    post = enc.encode(batch)
    h, _ = enc.fuse(post.mu, post)
    ll = enc.reconstruction_log_likelihood(h, post)
    recon = enc.decoder(h)
    widths = torch.tensor([DV, DS, DT])
    keep = post.modality_mask.repeat_interleave(widths, dim=1)
    normal = torch.distributions.Normal(recon, math.sqrt(0.7))
    expected = torch.where(keep, normal.log_prob(post.targets), 0.0).sum(-1)
    torch.testing.assert_close(ll, expected)


def test_kmeans_recovers_separated_clusters_and_initialises_the_prior() -> None:
    g = torch.Generator().manual_seed(2)
    P = TINY["d_visual"] + DS + DT + DC
    centres = 6 * torch.randn(3, P, generator=g)
    labels = torch.arange(90) % 3
    x = centres[labels] + 0.3 * torch.randn(90, P, generator=g)
    c, assign = kmeans(x, 3, generator=torch.Generator().manual_seed(0))
    # a perfect clustering up to relabelling
    assert all(len(set(assign[labels == k].tolist())) == 1 for k in range(3))
    assert len(set(assign.tolist())) == 3
    enc = _enc()
    enc.init_prior_from_features(x, generator=torch.Generator().manual_seed(0))
    pi = enc.prior_weights(x)
    # the initial assignment network is the soft k-means assignment: argmax = nearest centroid
    assert torch.equal(pi.argmax(-1), torch.cdist(x, enc.prior_assign.weight.detach()).argmin(-1))
    assert float(pi.detach().max(-1).values.min()) > 0.9


# ----------------------------------------------------------------------------- gradients


def _grad_names(loss: torch.Tensor, enc: VBFEncoder) -> set[str]:
    names, params = zip(*enc.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return {
        n.split(".")[0]
        for n, gr in zip(names, grads, strict=True)
        if gr is not None and bool(gr.abs().sum() > 0)
    }


ENCODER_PATH = {"modality_encoders", "pool_score", "w_att", "posterior_mu"}


def test_each_loss_term_reaches_exactly_its_parameters() -> None:
    enc = _enc()
    batch = _batch(10, B=12, full=True)
    enc.train()
    out = enc(batch)
    got = {k: _grad_names(v, enc) for k, v in out.aux_losses.items()}
    got["embedding"] = _grad_names(out.embedding.sum(), enc)
    prior = {"prior_assign", "prior_mu", "prior_logvar"}
    # -ELBO reconstruction: everything between x and D_recon(h), nothing of the prior
    assert got["vbf_recon"] >= ENCODER_PATH | {"posterior_logvar", "fusion_head", "phi", "decoder"}
    assert not got["vbf_recon"] & prior
    # KL: the posterior heads and the whole context-aware prior, never the fusion/decoder side
    assert got["vbf_kl"] >= ENCODER_PATH | {"posterior_logvar"} | prior
    assert not got["vbf_kl"] & {"fusion_head", "phi", "decoder"}
    # regularisers on alpha: the strategy path, never phi, the decoder or the prior
    for k in ("vbf_sparse", "vbf_smooth"):
        assert got[k] >= ENCODER_PATH | {"fusion_head", "posterior_logvar"}, k
        assert not got[k] & ({"phi", "decoder"} | prior), k
    # the embedding (what L_rec sees) reaches the fusion path but not the decoder or prior
    assert got["embedding"] >= ENCODER_PATH | {"fusion_head", "phi", "recency_bias"}
    assert not got["embedding"] & ({"decoder"} | prior)
    # together, every parameter trains
    assert set().union(*got.values()) == {n.split(".")[0] for n, _ in enc.named_parameters()}


def test_ablation_switches() -> None:
    batch = _batch(11, B=8, full=True)
    std = _enc(prior="standard")
    std.train()
    out = std(batch)
    assert "prior_weights" not in out.extras
    assert not _grad_names(out.aux_losses["vbf_kl"], std) & {"prior_assign", "prior_mu"}
    det = _enc(variational=False)
    det.train()
    out = det(batch)
    assert torch.equal(out.extras["z"], out.extras["mu"]) and "vbf_kl" not in out.aux_losses
    pred = det.predict_with_uncertainty(batch, generator=torch.Generator())
    assert not pred.explore_mask.any()
    with pytest.raises(ValueError, match="prior"):
        VBFConfig(prior="uniform")


# ----------------------------------------------------------------------------- inference


def test_uncertainty_guided_sampling_explores_the_top_fraction() -> None:
    enc = _enc()
    batch = _batch(12, B=10)
    pred = enc.predict_with_uncertainty(batch, generator=torch.Generator().manual_seed(0))
    assert pred.samples.shape == (10, 8, 12) and pred.explore_mask.sum() == 2  # top 20% of 10
    top = pred.posterior_var.topk(2).indices
    assert set(top.tolist()) == set(pred.explore_mask.nonzero().flatten().tolist())
    torch.testing.assert_close(pred.mean, enc.predict(batch))
    keep = ~pred.explore_mask
    assert torch.equal(pred.samples[keep], pred.mean[keep, None].expand(-1, 8, -1))
    explored = pred.samples[pred.explore_mask]
    assert (explored - pred.mean[pred.explore_mask, None]).abs().amax() > 1e-4
    assert explored.std(dim=1).amax() > 1e-4  # distinct strategies
    again = enc.predict_with_uncertainty(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.samples, pred.samples)
    # after calibration the decision is per item (a batch of one gets the same decision)
    thr = enc.calibrate_exploration([batch, _batch(13, B=10)])
    assert thr > 0
    one = dataclasses.replace(
        batch,
        **{
            k: getattr(batch, k)[:1]
            for k in (
                "visual",
                "speech",
                "comments",
                "segment_mask",
                "modality_mask",
                "author_ids",
                "context",
                "segment_modality_mask",
            )
        },
    )
    solo = enc.predict_with_uncertainty(one, generator=torch.Generator())
    assert bool(solo.explore_mask[0]) == bool(pred.posterior_var[0] > thr)


def test_explore_scores() -> None:
    mean = torch.tensor([0.1, 0.2, 0.3])
    samples = torch.tensor([[0.0, 0.5], [0.9, 0.1], [0.2, 0.2]])
    mask = torch.tensor([True, False, True])
    assert torch.equal(explore_scores(mean, samples, mask), torch.tensor([0.5, 0.2, 0.2]))
    assert torch.equal(explore_scores(mean, samples, mask, "mean"), torch.tensor([0.25, 0.2, 0.2]))


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    enc = _enc(3)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.01)
        enc.domain_shift_mu.fill_(0.3)
        enc.explore_threshold.fill_(0.5)
    path = tmp_path / "vbf.pt"
    save_encoder(path, enc)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"name", "config", "state_dict"} and raw["name"] == "vbf++"
    assert raw["config"] == dataclasses.asdict(enc.config)
    loaded = load_encoder(path)
    assert isinstance(loaded, VBFEncoder) and loaded.config == enc.config
    batch = _batch(14)
    assert torch.equal(loaded.predict(batch), enc.predict(batch))
    assert float(loaded.explore_threshold) == 0.5
    # the bare {"config", "state_dict"} form rebuilds it too
    plain = tmp_path / "plain.pt"
    torch.save({"config": dataclasses.asdict(enc.config), "state_dict": enc.state_dict()}, plain)
    ck = torch.load(plain, weights_only=True)
    again = VBFEncoder(VBFConfig(**ck["config"]))
    again.load_state_dict(ck["state_dict"])
    assert torch.equal(again.predict(batch), enc.predict(batch))
