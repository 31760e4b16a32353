"""CVA: attention that computes something, dependence on frame content and order, CVA+text, and
the parameter counts of the paper's Table 6."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmbee.encoders.base import SegmentBatch
from mmbee.encoders.batching import synthetic_batch
from mmbee.encoders.cva import (
    CVAConfig,
    CVAEncoder,
    CVATextConfig,
    CVATextEncoder,
    CVATokensEncoder,
    frame_tokens,
)
from mmbee.encoders.registry import build_encoder

DV = 12
TINY = dict(visual_dim=DV, latent_dim=16, depth=2, heads=2, dim_head=8, n_latents=4)


def _frames_batch(seed: int, B: int = 3, L: int = 4, F: int = 3) -> SegmentBatch:
    return synthetic_batch(
        B, L, frames=F, visual_dim=DV, speech_dim=6, comment_dim=6, full=True,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


def _max_deviation_from_uniform(w: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Largest |w - 1/n| over rows, n = number of present keys of the row."""
    n = w.shape[-1] if mask is None else mask.sum(-1)[:, None, None, None].float()
    return float((w - 1.0 / n).abs().masked_fill(w == 0, 0).amax())


def test_latent_attention_is_not_uniform_and_identical_latents_would_be() -> None:
    enc = CVAEncoder(CVAConfig(**TINY))
    batch = _frames_batch(0)
    maps = enc.attention_maps(batch)
    assert len(maps) == 2 and maps[0].shape == (3, 2, 4, 4)
    for w in maps:
        assert _max_deviation_from_uniform(w) > 0.01
    # the public code's replication (identical latents) makes every row exactly uniform
    with torch.no_grad():
        enc.core.latent_offsets.zero_()
    for w in enc.attention_maps(batch):
        torch.testing.assert_close(w, torch.full_like(w, 0.25))


def test_token_attention_is_not_uniform_and_never_looks_at_padding() -> None:
    enc = CVATokensEncoder(CVAConfig(**TINY))
    batch = synthetic_batch(4, 3, frames=5, visual_dim=DV, speech_dim=6, comment_dim=6)
    _, mask = frame_tokens(batch)
    key_mask = mask.reshape(4, 15)
    assert not key_mask.all()
    for w in enc.attention_maps(batch):  # (B, H, N, N)
        assert torch.all(w.masked_select(~key_mask[:, None, None, :]) == 0)
        assert _max_deviation_from_uniform(w, key_mask) > 0.01


def _change_frame(batch: SegmentBatch, b: int, seg: int, f: int) -> SegmentBatch:
    visual = batch.visual.clone()
    visual[b, seg, f] += 3.0
    return dataclasses.replace(batch, visual=visual)


def _swap_frames(
    batch: SegmentBatch, b: int, a: tuple[int, int], c: tuple[int, int]
) -> SegmentBatch:
    visual = batch.visual.clone()
    visual[b, a[0], a[1]], visual[b, c[0], c[1]] = (
        batch.visual[b, c[0], c[1]],
        batch.visual[b, a[0], a[1]],
    )
    return dataclasses.replace(batch, visual=visual)


@pytest.mark.parametrize("name", ["cva", "cva-tokens"])
def test_output_follows_the_content_of_present_frames_only(name: str) -> None:
    enc = build_encoder(name, TINY, seed=0)
    batch = _frames_batch(1)
    ref = enc.predict(batch)
    changed = enc.predict(_change_frame(batch, 1, 2, 1))
    assert not torch.allclose(changed[1], ref[1], atol=1e-4), "a present frame must matter"
    torch.testing.assert_close(changed[[0, 2]], ref[[0, 2]])  # only that stream moves
    assert batch.frame_mask is not None
    masked = dataclasses.replace(batch, frame_mask=batch.frame_mask.clone())
    masked.frame_mask[1, 2, 1] = False  # type: ignore[index]
    torch.testing.assert_close(
        enc.predict(_change_frame(masked, 1, 2, 1)), enc.predict(masked), atol=1e-5, rtol=1e-5
    )


def test_latent_cva_pools_frames_so_order_does_not_matter() -> None:
    enc = build_encoder("cva", TINY, seed=0)
    batch = _frames_batch(2)
    swapped = _swap_frames(batch, 0, (0, 0), (3, 2))
    torch.testing.assert_close(enc.predict(swapped), enc.predict(batch), atol=1e-5, rtol=1e-5)


def test_token_cva_sees_frame_order() -> None:
    enc = build_encoder("cva-tokens", TINY, seed=0)
    batch = _frames_batch(2)
    ref = enc.predict(batch)
    across = enc.predict(_swap_frames(batch, 0, (0, 0), (3, 2)))  # oldest <-> newest segment
    within = enc.predict(_swap_frames(batch, 0, (1, 0), (1, 2)))  # inside one segment
    assert not torch.allclose(across[0], ref[0], atol=1e-5)
    assert not torch.allclose(within[0], ref[0], atol=1e-5)


def test_cva_text_uses_present_text_only() -> None:
    cfg = CVATextConfig(**TINY, speech_dim=6, comment_dim=6, text_hidden=8)
    enc = CVATextEncoder(cfg)
    batch = _frames_batch(3)
    ref = enc.predict(batch)
    louder = dataclasses.replace(batch, speech=batch.speech + 1.0)
    assert not torch.allclose(enc.predict(louder), ref, atol=1e-5), "speech must matter"
    no_speech = dataclasses.replace(batch, modality_mask=batch.modality_mask.clone())
    no_speech.modality_mask[:, 1] = False
    torch.testing.assert_close(
        enc.predict(dataclasses.replace(no_speech, speech=batch.speech + 1.0)),
        enc.predict(no_speech),
    )
    # with text absent everywhere, only the visual branch is left
    visual_only = dataclasses.replace(no_speech, modality_mask=no_speech.modality_mask.clone())
    visual_only.modality_mask[:, 2] = False
    out = enc.predict(visual_only)
    with torch.no_grad():
        h_v, _ = enc.core(*frame_tokens(visual_only))
        w = enc.head.weight[:, : cfg.latent_dim]
        torch.testing.assert_close(out, h_v @ w.T + enc.head.bias, atol=1e-5, rtol=1e-5)


# CVA paper, Table 6 ("# of Param.", SASRec, MicroLens; frame dim 384 = DINOv3 ViT-S/16)
PAPER_PARAMS = {1: 1_348_864, 2: 2_401_024, 4: 4_504_960, 8: 8_713_984}


def test_block_parameter_count_matches_the_paper() -> None:
    """One block (latent 256, 4 heads x 64, GEGLU x4, qkv without bias) has 12 d^2 + 1038 d =
    1,052,160 parameters: exactly Table 6's CVA(M=2) - CVA(M=1). Totals stay within 2 %."""
    counts = {}
    for depth in PAPER_PARAMS:
        enc = CVAEncoder(CVAConfig(visual_dim=384, depth=depth))
        counts[depth] = sum(p.numel() for p in enc.parameters())
        assert sum(p.numel() for p in enc.core.blocks[0].parameters()) == 1_052_160
    assert counts[2] - counts[1] == PAPER_PARAMS[2] - PAPER_PARAMS[1]
    for depth, paper in PAPER_PARAMS.items():
        assert abs(counts[depth] - paper) / paper < 0.02, (depth, counts[depth], paper)
