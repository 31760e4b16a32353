"""CVA, the Compressed Video Aggregator: frozen frame embeddings -> a compact stream embedding.

Paper (Sec. 3.3): masked mean pooling of the frame embeddings, an FFN with GELU to the latent
width, replication into latents, M pre-LN self-attention blocks, a decoder FFN over the averaged
latents, a final linear layer. Three encoders here:

    "cva"         the paper's pipeline, with one fix: each latent gets its own learned offset.
                  The public code copies one pooled vector into identical latents, so every
                  attention row is uniform over identical values and the blocks reduce to an MLP.
    "cva-tokens"  self-attention directly over the frame tokens, with a learned position per
                  frame (segment recency + frame index): attention sees each frame and order.
    "cva+text"    either of the above on frames, joined with pooled speech and comment text
                  (the "CVA+text" content encoder of the scorer).

Letters: B streams, L segments, F frames per segment, N = L F frame tokens, K latents,
d_v frame width, d latent width, M blocks, D output width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbee.encoders.base import ContentEncoder, EncoderOutput, SegmentBatch, masked_mean
from mmbee.encoders.layers import SelfAttentionBlock

__all__ = [
    "CVAConfig",
    "CVATextConfig",
    "CVACore",
    "CVAEncoder",
    "CVATokensEncoder",
    "CVATextEncoder",
    "frame_tokens",
]


def frame_tokens(batch: SegmentBatch) -> tuple[Tensor, Tensor]:
    """The visual frames of a batch as (B, L, F, d_v) with their presence mask (B, L, F).

    Pooled visual features (B, L, d_v) count as one frame per segment. A frame is present when
    its segment, the visual modality and (if kept) the frame itself are.
    """
    seg_visual = batch.token_mask()[:, :, 0]  # (B, L)
    if batch.visual.dim() == 3:
        return batch.visual.unsqueeze(2), seg_visual.unsqueeze(2)
    mask = seg_visual.unsqueeze(-1).expand(batch.visual.shape[:3])  # (B, L, F)
    if batch.frame_mask is not None:
        mask = mask & batch.frame_mask
    return batch.visual, mask


@dataclass(frozen=True)
class CVAConfig:
    """CVA hyperparameters; defaults reproduce the paper's block (Table 6 counts, see docs).

    latent_dim / heads / dim_head / ffn_mult / ffn_kind: the Perceiver IO self-attention block
        CVA keeps (latent width 256, 4 heads of 64, GEGLU feed-forward x4).
    depth: M, the number of self-attention blocks.
    n_latents: K latents of "cva" (each = pooled embedding + its learned offset).
    max_segments / max_frames: learned positions of "cva-tokens" (further back shares the last).
    offset_std: init std of the latent offsets (same order as the encoded input, so latents
        differ from the first step on).
    """

    visual_dim: int = 1280
    latent_dim: int = 256
    depth: int = 4
    heads: int = 4
    dim_head: int = 64
    ffn_mult: int = 4
    ffn_kind: Literal["geglu", "gelu"] = "geglu"
    n_latents: int = 4
    max_segments: int = 64
    max_frames: int = 64
    offset_std: float = 1.0
    out_dim: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if min(self.depth, self.n_latents, self.max_segments, self.max_frames) < 1:
            raise ValueError("depth, n_latents, max_segments, max_frames must be >= 1")


class CVACore(nn.Module):
    """Frames -> (B, d) decoded CVA representation, over latents or over frame tokens.

    mode "latents": z = FFN(masked mean of frames); latents z + o_k (k < K, o_k learned);
        M blocks; mean over latents; decoder FFN.
    mode "tokens": t_i = FFN(frame_i) + p_seg(age of its segment) + p_frame(index in segment);
        M blocks masked to present frames; masked mean over frames; decoder FFN.

    Example:
        >>> core = CVACore(CVAConfig(visual_dim=8, latent_dim=16, depth=1, dim_head=4), "tokens")
        >>> out, att = core(torch.randn(2, 3, 4, 8), torch.ones(2, 3, 4, dtype=torch.bool))
        >>> out.shape
        torch.Size([2, 16])
    """

    def __init__(self, config: CVAConfig, mode: Literal["latents", "tokens"]) -> None:
        super().__init__()
        if mode not in ("latents", "tokens"):
            raise ValueError(f"CVA mode must be 'latents' or 'tokens', got {mode!r}")
        c = config
        self.config, self.mode = c, mode
        d = c.latent_dim
        self.encoder = nn.Sequential(nn.Linear(c.visual_dim, d), nn.GELU(), nn.Linear(d, d))
        if mode == "latents":
            self.latent_offsets = nn.Parameter(torch.randn(c.n_latents, d) * c.offset_std)
        else:
            self.segment_pos = nn.Embedding(c.max_segments, d)
            self.frame_pos = nn.Embedding(c.max_frames, d)
            nn.init.normal_(self.segment_pos.weight, std=0.02)
            nn.init.normal_(self.frame_pos.weight, std=0.02)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(d, c.heads, c.dim_head, c.ffn_mult, c.ffn_kind, c.dropout)
            for _ in range(c.depth)
        )
        self.decoder = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def forward(
        self, frames: Tensor, mask: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, list[Tensor]]:
        """Aggregate frames.

        Shapes:
            frames: (B, L, F, d_v), segments oldest -> newest; mask: (B, L, F) bool.
            returns (B, d) and, with `need_weights`, each block's attention (B, H, K, K) or
            (B, H, N, N) (frame tokens in (segment, frame) order), else [].
        """
        c = self.config
        B, L, Fr, _ = frames.shape
        if self.mode == "latents":
            pooled = masked_mean(frames.reshape(B, L * Fr, -1), mask.reshape(B, L * Fr), dim=1)
            z = self.encoder(pooled)  # (B, d)
            x = z[:, None, :] + self.latent_offsets[None]  # (B, K, d)
            key_mask = None
        else:
            age = torch.arange(L - 1, -1, -1, device=frames.device).clamp_max(c.max_segments - 1)
            idx = torch.arange(Fr, device=frames.device).clamp_max(c.max_frames - 1)
            x = self.encoder(frames)  # (B, L, F, d), row-wise: padding stays in its row
            x = x + self.segment_pos(age)[None, :, None] + self.frame_pos(idx)[None, None]
            x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype))
            x = x.reshape(B, L * Fr, -1)  # (B, N, d)
            key_mask = mask.reshape(B, L * Fr)  # (B, N)
        maps: list[Tensor] = []
        for blk in self.blocks:
            x, w = blk(x, key_mask, need_weights)
            if w is not None:
                maps.append(w)
        if key_mask is None:
            pooled_latent = x.mean(dim=1)  # (B, d)
        else:
            pooled_latent = masked_mean(x, key_mask, dim=1)
        return self.decoder(pooled_latent), maps


class CVAEncoder(ContentEncoder):
    """CVA over K latents with learned offsets (visual only); frame order is pooled away.

    Example:
        >>> enc = CVAEncoder(CVAConfig(visual_dim=8, latent_dim=16, depth=1, dim_head=4))
        >>> enc.out_dim
        64
    """

    name: ClassVar[str] = "cva"
    config_cls: ClassVar[type] = CVAConfig
    config: CVAConfig
    mode: ClassVar[Literal["latents", "tokens"]] = "latents"

    def __init__(self, config: CVAConfig) -> None:
        super().__init__(config)
        self.core = CVACore(config, self.mode)
        self.head = nn.Linear(config.latent_dim, config.out_dim)

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def forward(self, batch: SegmentBatch) -> EncoderOutput:
        """Shapes: visual (B, L, d_v) or (B, L, F, d_v) with frame_mask; embedding (B, D).
        Speech and comments are ignored (use "cva+text" for them)."""
        frames, mask = frame_tokens(batch)
        h, _ = self.core(frames, mask)
        return EncoderOutput(self.head(h))  # (B, D)

    @torch.no_grad()
    def attention_maps(self, batch: SegmentBatch) -> list[Tensor]:
        """Each block's attention weights (B, H, n, n), for diagnostics and tests (eval mode)."""
        was_training = self.training
        self.eval()
        try:
            frames, mask = frame_tokens(batch)
            return self.core(frames, mask, need_weights=True)[1]
        finally:
            self.train(was_training)


class CVATokensEncoder(CVAEncoder):
    """CVA whose blocks attend over the frame tokens, with a learned position per frame.

    Example:
        >>> enc = CVATokensEncoder(CVAConfig(visual_dim=8, latent_dim=16, depth=1, dim_head=4))
        >>> enc.out_dim
        64
    """

    name: ClassVar[str] = "cva-tokens"
    mode: ClassVar[Literal["latents", "tokens"]] = "tokens"


@dataclass(frozen=True)
class CVATextConfig(CVAConfig):
    """CVA on frames plus pooled speech and comment text.

    visual_mode: "latents" ("cva") or "tokens" ("cva-tokens") for the frame branch.
    text_hidden: width of each text branch (speech, comments) before the joint projection.
    """

    speech_dim: int = 384
    comment_dim: int = 384
    text_hidden: int = 64
    visual_mode: Literal["latents", "tokens"] = "latents"


class CVATextEncoder(ContentEncoder):
    """ "CVA+text": h = W [CVA(frames); [s present] GELU(W_s mean speech); [t present] GELU(W_t mean comments)].

    Text is averaged over the segments that have it; an absent text modality contributes an
    exact zero (not the branch's bias), so the visual part alone decides for video-only streams.

    Example:
        >>> cfg = CVATextConfig(visual_dim=8, latent_dim=16, depth=1, dim_head=4,
        ...                     speech_dim=4, comment_dim=4, text_hidden=8)
        >>> CVATextEncoder(cfg).out_dim
        64
    """

    name: ClassVar[str] = "cva+text"
    config_cls: ClassVar[type] = CVATextConfig
    config: CVATextConfig

    def __init__(self, config: CVATextConfig) -> None:
        super().__init__(config)
        c = config
        self.core = CVACore(c, c.visual_mode)
        self.speech = nn.Linear(c.speech_dim, c.text_hidden)
        self.comments = nn.Linear(c.comment_dim, c.text_hidden)
        self.head = nn.Linear(c.latent_dim + 2 * c.text_hidden, c.out_dim)

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def forward(self, batch: SegmentBatch) -> EncoderOutput:
        """Shapes: see `SegmentBatch`; embedding (B, D)."""
        frames, mask = frame_tokens(batch)
        h_v, _ = self.core(frames, mask)  # (B, d)
        tok = batch.token_mask()  # (B, L, 3)
        parts = [h_v]
        for m, (x, branch) in enumerate(
            ((batch.speech, self.speech), (batch.pooled_comments(), self.comments)), start=1
        ):
            present = tok[:, :, m]  # (B, L)
            pooled = masked_mean(x, present, dim=1)  # (B, d_text)
            h = F.gelu(branch(pooled)) * present.any(dim=1, keepdim=True).to(pooled.dtype)
            parts.append(h)  # (B, text_hidden)
        return EncoderOutput(self.head(torch.cat(parts, dim=-1)))
