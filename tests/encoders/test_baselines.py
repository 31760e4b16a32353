"""Baselines: mean pooling is what it says, fixed fusion weights are fixed and renormalised."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmbee.encoders.base import masked_mean
from mmbee.encoders.baselines import (
    FixedFusionConfig,
    FixedFusionEncoder,
    MeanPoolConfig,
    MeanPoolEncoder,
    MLPConfig,
    MLPEncoder,
    pooled_modalities,
)
from mmbee.encoders.batching import synthetic_batch

DV, DS, DT = 10, 4, 4
IO = dict(visual_dim=DV, speech_dim=DS, comment_dim=DT)


def _batch(seed: int, **kw: object):
    return synthetic_batch(
        6, 5, visual_dim=DV, speech_dim=DS, comment_dim=DT,
        generator=torch.Generator().manual_seed(seed), **kw,
    )  # fmt: skip


def test_mean_pool_is_a_linear_map_of_the_masked_means() -> None:
    enc = MeanPoolEncoder(MeanPoolConfig(**IO, out_dim=3))
    batch = _batch(0, frames=3)
    tok = batch.token_mask()
    assert batch.frame_mask is not None
    frames_ok = batch.frame_mask & tok[:, :, 0, None]  # (B, L, F)
    per_segment = masked_mean(batch.visual, frames_ok, dim=2)  # (B, L, d_v)
    v = masked_mean(per_segment, tok[:, :, 0], dim=1)
    s = masked_mean(batch.speech, tok[:, :, 1], dim=1)
    t = masked_mean(batch.comments, tok[:, :, 2], dim=1)
    want = torch.cat([v, s, t], dim=-1) @ enc.proj.weight.T + enc.proj.bias
    torch.testing.assert_close(enc.predict(batch), want)


def test_pooled_baselines_ignore_segment_order() -> None:
    batch = _batch(1, full=True)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    shuffled = dataclasses.replace(
        batch,
        visual=batch.visual[:, perm],
        speech=batch.speech[:, perm],
        comments=batch.comments[:, perm],
    )
    for enc in (
        MeanPoolEncoder(MeanPoolConfig(**IO)),
        MLPEncoder(MLPConfig(**IO, hidden=8)),
        FixedFusionEncoder(FixedFusionConfig(**IO, hidden=8)),
    ):
        torch.testing.assert_close(enc.predict(shuffled), enc.predict(batch), atol=1e-5, rtol=1e-5)


def test_fixed_fusion_weights_are_constant_and_renormalised_over_present_modalities() -> None:
    enc = FixedFusionEncoder(FixedFusionConfig(**IO, hidden=8, weights=(2.0, 1.0, 1.0)))
    assert not enc.fusion_weights.requires_grad, "fusion weights must not be learned"
    assert all(p is not enc.fusion_weights for p in enc.parameters())
    batch = _batch(2)
    out = enc(batch)
    w = out.extras["fusion_weights"]
    present = pooled_modalities(batch)[1]
    assert torch.all(w[~present] == 0)
    torch.testing.assert_close(w.sum(1), torch.ones(6))
    full = present.all(1)
    assert full.any()
    torch.testing.assert_close(w[full], torch.tensor([0.5, 0.25, 0.25]).expand(int(full.sum()), 3))
    means, _ = pooled_modalities(batch)
    branches = torch.stack([f(x) for f, x in zip(enc.branches, means, strict=True)], dim=1)
    torch.testing.assert_close(out.embedding, (w[:, :, None] * branches).sum(1))


@pytest.mark.parametrize("weights", [(1.0, 2.0), (-1.0, 1.0, 1.0), (0.0, 0.0, 0.0)])
def test_fixed_fusion_rejects_bad_weights(weights: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="weights"):
        FixedFusionConfig(weights=weights)  # type: ignore[arg-type]


def test_mlp_depth() -> None:
    one = MLPEncoder(MLPConfig(**IO, layers=1, out_dim=5))
    assert len(one.mlp) == 1 and isinstance(one.mlp[0], torch.nn.Linear)
    assert (
        sum(isinstance(m, torch.nn.Linear) for m in MLPEncoder(MLPConfig(**IO, layers=3)).mlp) == 3
    )
    with pytest.raises(ValueError, match="layers"):
        MLPEncoder(MLPConfig(**IO, layers=0))
