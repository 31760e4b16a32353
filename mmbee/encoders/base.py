"""The ContentEncoder interface: a batch of segment buffers in, one content embedding per stream out.

Letters used in shapes across `mmbee.encoders`:
    B  batch (live streams)            L  segments in the rolling buffer (MMBee: 5, 10, 20)
    F  frames kept per segment         C  comments kept per segment
    d_v, d_s, d_t  visual / speech / comment feature widths (1280, 384, 384 by default)
    D  content embedding width (the encoder's `out_dim`)

Masks are boolean, True = present. A segment, frame, comment or whole modality that is missing
is masked out, never replaced by noise: padded positions must not change the output (whatever
values they hold, NaN included: encoders read padded positions through `SegmentBatch.token_mask`
and zero them before any arithmetic).

Author ids become embedding rows through `author_row` (a stable hash into a fixed number of
buckets, row 0 = unknown), so every worker maps an id to the same row without a shared vocabulary.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = [
    "MODALITIES",
    "DEFAULT_AUTHOR_BUCKETS",
    "SegmentBatch",
    "EncoderOutput",
    "ContentEncoder",
    "author_row",
    "author_rows",
    "masked_mean",
]

DEFAULT_AUTHOR_BUCKETS = 1 << 16
"""Default number of author-embedding rows (row 0 = unknown, ids hash into rows 1..n-1)."""

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
        segment_modality_mask: optional (B, L, 3) True where that segment has data of that
            modality (a segment without comments, say); None = every present segment has every
            present modality. `token_mask()` combines all masks.

    Example:
        >>> B, L = 2, 3
        >>> batch = SegmentBatch(
        ...     visual=torch.zeros(B, L, 8), speech=torch.zeros(B, L, 4),
        ...     comments=torch.zeros(B, L, 4), segment_mask=torch.ones(B, L, dtype=torch.bool),
        ...     modality_mask=torch.ones(B, 3, dtype=torch.bool),
        ...     author_ids=torch.tensor([author_row("a1"), 0]))
        >>> batch.token_mask().shape
        torch.Size([2, 3, 3])
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
    segment_modality_mask: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.segment_mask.shape[0])

    @property
    def n_segments(self) -> int:
        """L, the number of segment slots (padding included)."""
        return int(self.segment_mask.shape[1])

    def token_mask(self) -> Tensor:
        """(B, L, 3) True where segment l of stream b has data of modality m (`MODALITIES` order).

        Combines `segment_mask`, `modality_mask`, `segment_modality_mask` and, when frames or
        comments are kept, whether any frame / comment of the segment is present.
        """
        mask = self.segment_mask[:, :, None] & self.modality_mask[:, None, :]  # (B, L, 3)
        if self.segment_modality_mask is not None:
            mask = mask & self.segment_modality_mask
        frames = self.visual.dim() == 4 and self.frame_mask is not None
        comments = self.comments.dim() == 4 and self.comment_mask is not None
        if not (frames or comments):
            return mask
        extra = torch.ones_like(mask)
        if frames:
            extra[:, :, 0] = self.frame_mask.any(dim=-1)  # type: ignore[union-attr]
        if comments:
            extra[:, :, 2] = self.comment_mask.any(dim=-1)  # type: ignore[union-attr]
        return mask & extra

    def check(self) -> None:
        """Raise ValueError naming the field when shapes or dtypes are inconsistent."""
        if self.segment_mask.dim() != 2 or self.segment_mask.dtype != torch.bool:
            raise ValueError("segment_mask must be a (B, L) bool tensor")
        B, L = self.segment_mask.shape
        if tuple(self.modality_mask.shape) != (B, len(MODALITIES)):
            raise ValueError(
                f"modality_mask must be (B, 3) = ({B}, 3), got {tuple(self.modality_mask.shape)}"
            )
        if tuple(self.author_ids.shape) != (B,):
            raise ValueError(
                f"author_ids must be (B,) = ({B},), got {tuple(self.author_ids.shape)}"
            )
        for name, x, set_mask in (
            ("visual", self.visual, self.frame_mask),
            ("speech", self.speech, None),
            ("comments", self.comments, self.comment_mask),
        ):
            if tuple(x.shape[:2]) != (B, L) or x.dim() not in (3, 4):
                raise ValueError(
                    f"{name} must be (B, L, d) or (B, L, N, d) with B, L = {B}, {L}, got {tuple(x.shape)}"
                )
            if (
                x.dim() == 4
                and set_mask is not None
                and tuple(set_mask.shape) != tuple(x.shape[:3])
            ):
                raise ValueError(
                    f"{name}'s mask must be {tuple(x.shape[:3])}, got {tuple(set_mask.shape)}"
                )
        if self.speech.dim() != 3:
            raise ValueError(f"speech must be (B, L, d_s), got {tuple(self.speech.shape)}")
        if self.segment_modality_mask is not None and tuple(self.segment_modality_mask.shape) != (
            B,
            L,
            3,
        ):
            raise ValueError(
                f"segment_modality_mask must be ({B}, {L}, 3), got {tuple(self.segment_modality_mask.shape)}"
            )

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
    return masked_mean(x, mask, dim=-2)


def masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of `x` over `dim` where `mask` is True; 0 where nothing is present.

    `mask` has the shape of `x` without its last (feature) axis. Masked positions are selected
    away with `torch.where`, so NaN or inf in padding cannot leak into the result.

    Shapes:
        x: (..., N, ..., d); mask: (..., N, ...); output: x without `dim`.
    """
    m = mask.unsqueeze(-1)
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=dim)
    count = m.sum(dim=dim).clamp_min(1).to(x.dtype)
    return total / count


def author_row(author_id: str, n_buckets: int = DEFAULT_AUTHOR_BUCKETS) -> int:
    """The embedding row of `author_id`: 1 + blake2b-64(id) mod (n_buckets - 1); "" -> 0 (unknown).

    Stable across processes, machines and Python versions (unlike `hash()`), so the content
    agent, the trainer and every serving worker agree without a shared vocabulary. Distinct ids
    can share a row (a hash collision); with n live authors the expected fraction colliding is
    about n / n_buckets.

    Example:
        >>> author_row("a1", 1024) == author_row("a1", 1024)
        True
        >>> author_row("", 1024)
        0
    """
    if n_buckets < 2:
        raise ValueError(f"n_buckets must be >= 2 (row 0 is reserved for unknown), got {n_buckets}")
    if not author_id:
        return 0
    digest = hashlib.blake2b(author_id.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (n_buckets - 1)


def author_rows(
    author_ids: Iterable[str | None], n_buckets: int = DEFAULT_AUTHOR_BUCKETS
) -> Tensor:
    """`author_row` of each id as a (B,) int64 tensor; None or "" -> 0 (unknown)."""
    rows = [author_row(a, n_buckets) if a else 0 for a in author_ids]
    return torch.tensor(rows, dtype=torch.int64)


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

    def config_dict(self) -> dict[str, Any]:
        """The config as a dict of plain values (what a checkpoint stores under "config")."""
        return asdict(self.config)

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
        if not self.training:  # already in eval mode: skip two walks over every submodule
            return self.forward(batch).embedding
        self.eval()
        try:
            return self.forward(batch).embedding
        finally:
            self.train(True)
