"""The ContentEncoder interface: a batch of segment buffers in, one content embedding per stream out.

Letters used in shapes across `mmbee.encoders`:
    B  batch (live streams)            L  segments in the rolling buffer (MMBee: 5, 10, 20)
    F  frames kept per segment         C  comments kept per segment
    d_v, d_s, d_t  visual / speech / comment feature widths (1280, 384, 384 by default)
    D  content embedding width (the encoder's `out_dim`)

Masks are boolean, True = present. A segment, frame, comment or whole modality that is missing
is masked out, never replaced by noise: padded positions must not change the output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = [
    "MODALITIES",
    "SegmentBatch",
    "EncoderOutput",
    "ContentEncoder",
]

MODALITIES = ("visual", "speech", "comments")
"""Modality order used by `SegmentBatch.modality_mask` and by fusion weights."""


@dataclass
class SegmentBatch:
    """A batch of per-stream segment buffers.

    Shapes:
        visual: (B, L, d_v) pooled per segment, or (B, L, F, d_v) with `frame_mask` (B, L, F).
        speech: (B, L, d_s) pooled ASR text embedding per segment.
        comments: (B, L, d_t) pooled, or (B, L, C, d_t) with `comment_mask` (B, L, C).
        segment_mask: (B, L) True where the segment exists (older slots of a young stream are
            padding). Segments are ordered oldest -> newest.
        modality_mask: (B, 3) True where the modality has any data for the stream, in
            `MODALITIES` order. A modality whose features are all zeros because it is absent
            must be masked here.
        author_ids: (B,) int64 row of the author in the encoder's id embedding (0 = unknown).
        context: optional (B, d_c) side features (e.g. category one-hot) for encoders that use
            them (VBF++'s context-aware prior); None when not available.
    """

    visual: Tensor
    speech: Tensor
    comments: Tensor
    segment_mask: Tensor
    modality_mask: Tensor
    author_ids: Tensor
    frame_mask: Tensor | None = None
    comment_mask: Tensor | None = None
    context: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.segment_mask.shape[0])

    def to(self, device: torch.device | str) -> SegmentBatch:
        """The same batch with every tensor moved to `device`."""
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device) if isinstance(value, Tensor) else value
        return SegmentBatch(**moved)

    def pooled_visual(self) -> Tensor:
        """Visual features pooled over frames: (B, L, d_v) (masked mean when frames are kept)."""
        return _masked_mean_last_set(self.visual, self.frame_mask)

    def pooled_comments(self) -> Tensor:
        """Comment features pooled over comments: (B, L, d_t)."""
        return _masked_mean_last_set(self.comments, self.comment_mask)


def _masked_mean_last_set(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dim -2 of a (B, L, N, d) tensor under mask (B, L, N); (B, L, d) passes through."""
    if x.dim() == 3:
        return x
    if mask is None:
        return x.mean(dim=-2)
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, L, N, 1)
    return (x * m).sum(dim=-2) / m.sum(dim=-2).clamp_min(1.0)


@dataclass
class EncoderOutput:
    """What a ContentEncoder returns.

    Attributes:
        embedding: (B, D) the content embedding h_m.
        aux_losses: named scalar losses the training wrapper adds (e.g. VBF++'s KL); empty for
            encoders without any.
        extras: named diagnostics (e.g. fusion weights (B, 3), posterior variance (B,)).
    """

    embedding: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)


class ContentEncoder(nn.Module, ABC):
    """Base class of every content encoder; subclasses are chosen by `name` from the registry.

    Subclasses take one frozen config dataclass (`config_cls`) whose fields are plain JSON
    values, so a checkpoint `{"name", "config", "state_dict"}` rebuilds the module exactly.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type]

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @property
    @abstractmethod
    def out_dim(self) -> int:
        """D, the width of `EncoderOutput.embedding`."""

    @abstractmethod
    def forward(self, batch: SegmentBatch) -> EncoderOutput:
        """Encode a batch of segment buffers. Shapes: see `SegmentBatch`; output (B, D)."""

    @torch.no_grad()
    def predict(self, batch: SegmentBatch) -> Tensor:
        """Inference: the (B, D) content embedding, no gradients, eval-mode behaviour."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(batch).embedding
        finally:
            self.train(was_training)
