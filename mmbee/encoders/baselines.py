"""Ablation baselines from the MMBee, CVA and VBF++ papers: mean pooling, an MLP, fixed fusion weights.

All three first pool each modality over its present segments (and frames / comments), so they
ignore segment order and cannot single out one moment of the stream: that is what the attention
encoders are measured against. Letters as in `mmbee.encoders.base`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from mmbee.encoders.base import ContentEncoder, EncoderOutput, SegmentBatch, masked_mean

__all__ = [
    "MeanPoolConfig",
    "MeanPoolEncoder",
    "MLPConfig",
    "MLPEncoder",
    "FixedFusionConfig",
    "FixedFusionEncoder",
    "pooled_modalities",
]


def pooled_modalities(batch: SegmentBatch) -> tuple[list[Tensor], Tensor]:
    """Each modality averaged over its present segments, and which modalities are present.

    Shapes:
        returns [visual (B, d_v), speech (B, d_s), comments (B, d_t)] (zeros where absent) and
        present (B, 3) bool.
    """
    tok = batch.token_mask()  # (B, L, 3)
    feats = (batch.pooled_visual(), batch.speech, batch.pooled_comments())
    means = [masked_mean(x, tok[:, :, m], dim=1) for m, x in enumerate(feats)]
    return means, tok.any(dim=1)


@dataclass(frozen=True)
class MeanPoolConfig:
    """Mean-pool baseline: modality means concatenated, one linear map to D (the "Pooling" row)."""

    visual_dim: int = 1280
    speech_dim: int = 384
    comment_dim: int = 384
    out_dim: int = 64


class MeanPoolEncoder(ContentEncoder):
    """Masked mean of each modality over the buffer, concatenated, linearly projected to D.

    Example:
        >>> enc = MeanPoolEncoder(MeanPoolConfig(visual_dim=8, speech_dim=4, comment_dim=4, out_dim=6))
        >>> enc.out_dim
        6
    """

    name: ClassVar[str] = "mean-pool"
    config_cls: ClassVar[type] = MeanPoolConfig
    config: MeanPoolConfig

    def __init__(self, config: MeanPoolConfig) -> None:
        super().__init__(config)
        c = config
        self.proj = nn.Linear(c.visual_dim + c.speech_dim + c.comment_dim, c.out_dim)

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def forward(self, batch: SegmentBatch) -> EncoderOutput:
        """Shapes: see `SegmentBatch`; embedding (B, D)."""
        means, _ = pooled_modalities(batch)
        return EncoderOutput(self.proj(torch.cat(means, dim=-1)))  # (B, D)


@dataclass(frozen=True)
class MLPConfig:
    """MLP baseline: modality means and presence flags through a GELU MLP to D."""

    visual_dim: int = 1280
    speech_dim: int = 384
    comment_dim: int = 384
    hidden: int = 256
    layers: int = 2
    out_dim: int = 64
    dropout: float = 0.0


class MLPEncoder(ContentEncoder):
    """[mean_v; mean_s; mean_t; present] -> (Linear, GELU) x (layers - 1) -> Linear -> D.

    Example:
        >>> enc = MLPEncoder(MLPConfig(visual_dim=8, speech_dim=4, comment_dim=4, hidden=16))
        >>> enc.out_dim
        64
    """

    name: ClassVar[str] = "mlp"
    config_cls: ClassVar[type] = MLPConfig
    config: MLPConfig

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        c = config
        if c.layers < 1:
            raise ValueError(f"MLPConfig.layers must be >= 1, got {c.layers}")
        width = c.visual_dim + c.speech_dim + c.comment_dim + 3
        mods: list[nn.Module] = []
        for _ in range(c.layers - 1):
            mods += [nn.Linear(width, c.hidden), nn.GELU(), nn.Dropout(c.dropout)]
            width = c.hidden
        mods.append(nn.Linear(width, c.out_dim))
        self.mlp = nn.Sequential(*mods)

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def forward(self, batch: SegmentBatch) -> EncoderOutput:
        """Shapes: see `SegmentBatch`; embedding (B, D)."""
        means, present = pooled_modalities(batch)
        x = torch.cat([*means, present.to(means[0].dtype)], dim=-1)  # (B, d_v + d_s + d_t + 3)
        return EncoderOutput(self.mlp(x))


@dataclass(frozen=True)
class FixedFusionConfig:
    """Fixed-fusion baseline ("non-probabilistic network with fixed fusion weights", VBF++)."""

    visual_dim: int = 1280
    speech_dim: int = 384
    comment_dim: int = 384
    hidden: int = 128
    out_dim: int = 64
    weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)

    def __post_init__(self) -> None:
        w = tuple(float(v) for v in self.weights)
        if len(w) != 3 or min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"weights must be 3 non-negative numbers with a positive sum, got {w}")
        object.__setattr__(self, "weights", w)


class FixedFusionEncoder(ContentEncoder):
    """Per-modality MLP of the modality mean, then a fixed weighted sum over present modalities.

    h = sum_m w_m [m present] f_m(mean_m) / sum_m w_m [m present]; the weights are constants of
    the config (not learned), renormalised over the modalities a stream actually has.

    Example:
        >>> enc = FixedFusionEncoder(FixedFusionConfig(visual_dim=8, speech_dim=4, comment_dim=4))
        >>> enc.out_dim
        64
    """

    name: ClassVar[str] = "fixed-fusion"
    config_cls: ClassVar[type] = FixedFusionConfig
    config: FixedFusionConfig

    def __init__(self, config: FixedFusionConfig) -> None:
        super().__init__(config)
        c = config
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Linear(d, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.out_dim))
            for d in (c.visual_dim, c.speech_dim, c.comment_dim)
        )
        self.fusion_weights: Tensor
        self.register_buffer("fusion_weights", torch.tensor(c.weights), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def forward(self, batch: SegmentBatch) -> EncoderOutput:
        """Shapes: see `SegmentBatch`; embedding (B, D); extras["fusion_weights"] (B, 3)."""
        means, present = pooled_modalities(batch)
        h = torch.stack(
            [f(x) for f, x in zip(self.branches, means, strict=True)], dim=1
        )  # (B, 3, D)
        w = self.fusion_weights[None, :] * present.to(h.dtype)  # (B, 3)
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        emb = (w[:, :, None] * h).sum(dim=1)  # (B, D)
        return EncoderOutput(emb, extras={"fusion_weights": w})
