"""Building blocks shared by mmbee's encoders: masked attention, pre-LN blocks, feed-forwards.

Letters: B batch, Nq / Nk query / key tokens, H heads, d widths (see `mmbee.encoders.base`).
Key masks are boolean (B, Nk), True = present. A query row whose keys are all masked gets a zero
attention output and zero weights (never NaN), so an empty modality or an empty stream stays finite.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Attention", "FeedForward", "SelfAttentionBlock", "CrossAttentionBlock"]


class Attention(nn.Module):
    """Multi-head (cross-)attention that also returns its weights.

    Projections follow the Perceiver IO / CVA code: q, k, v without bias, output with bias, so
    the parameter count is (d_q + 2 d_kv) H d_h + H d_h d_q + d_q.

    Example:
        >>> att = Attention(d_q=16, d_kv=8, heads=2, dim_head=4)
        >>> out, w = att(torch.randn(3, 5, 16), torch.randn(3, 7, 8), torch.ones(3, 7, dtype=torch.bool))
        >>> out.shape, w.shape
        (torch.Size([3, 5, 16]), torch.Size([3, 2, 5, 7]))
    """

    def __init__(self, d_q: int, d_kv: int, heads: int, dim_head: int, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(d_q, inner, bias=False)
        self.to_kv = nn.Linear(d_kv, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, d_q)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, context: Tensor, key_mask: Tensor | None, need_weights: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from `x` to `context`.

        Shapes:
            x: (B, Nq, d_q); context: (B, Nk, d_kv); key_mask: (B, Nk) bool or None.
            returns out (B, Nq, d_q) and, with `need_weights`, weights (B, H, Nq, Nk) (rows sum
            to 1, or to 0 when every key of that row is masked); without, None and a fused
            scaled-dot-product kernel.
        """
        B, Nq, _ = x.shape
        Nk = context.shape[1]
        H, dh = self.heads, self.dim_head
        q = self.to_q(x).view(B, Nq, H, dh).transpose(1, 2)  # (B, H, Nq, dh)
        kv = self.to_kv(context).view(B, Nk, 2, H, dh).permute(2, 0, 3, 1, 4)  # (2, B, H, Nk, dh)
        k, v = kv[0], kv[1]
        allowed: Tensor | None = None
        has_key: Tensor | None = None
        if key_mask is not None:
            has_key = key_mask.any(dim=-1)  # (B,)
            # rows without any key would be softmax(-inf...) = NaN: let them see everything,
            # then zero their output.
            allowed = (key_mask | ~has_key[:, None])[:, None, None, :]  # (B, 1, 1, Nk)
        weights: Tensor | None = None
        if need_weights:
            scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, H, Nq, Nk)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = torch.matmul(self.dropout(weights), v)  # (B, H, Nq, dh)
        else:
            p = self.dropout.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        if has_key is not None:
            keep = has_key[:, None, None, None].to(out.dtype)  # (B, 1, 1, 1)
            out = out * keep
            if weights is not None:
                weights = weights * keep
        out = out.transpose(1, 2).reshape(B, Nq, H * dh)  # (B, Nq, H dh)
        return self.to_out(out), weights


class FeedForward(nn.Module):
    """Position-wise feed-forward: GEGLU (Perceiver IO / CVA) or plain GELU MLP.

    GEGLU: Linear(d, 2 m d) -> a * gelu(g) -> Linear(m d, d); GELU: Linear(d, m d) -> gelu ->
    Linear(m d, d).

    Example:
        >>> FeedForward(8, mult=2)(torch.randn(2, 3, 8)).shape
        torch.Size([2, 3, 8])
    """

    def __init__(
        self,
        d: int,
        mult: int = 4,
        kind: Literal["geglu", "gelu"] = "geglu",
        dropout: float = 0.0,
    ):
        super().__init__()
        if kind not in ("geglu", "gelu"):
            raise ValueError(f"feed-forward kind must be 'geglu' or 'gelu', got {kind!r}")
        self.kind = kind
        hidden = d * mult
        self.w_in = nn.Linear(d, 2 * hidden if kind == "geglu" else hidden)
        self.w_out = nn.Linear(hidden, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: x (..., d) -> (..., d)."""
        h = self.w_in(x)
        if self.kind == "geglu":
            a, g = h.chunk(2, dim=-1)
            h = a * F.gelu(g)
        else:
            h = F.gelu(h)
        return self.w_out(self.dropout(h))


class SelfAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + FFN(LN(x)); masked keys are ignored.

    Example:
        >>> blk = SelfAttentionBlock(16, heads=2, dim_head=8)
        >>> y, w = blk(torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool))
        >>> y.shape
        torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        d: int,
        heads: int,
        dim_head: int,
        ffn_mult: int = 4,
        ffn_kind: Literal["geglu", "gelu"] = "geglu",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm_attn = nn.LayerNorm(d)
        self.attn = Attention(d, d, heads, dim_head, dropout)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = FeedForward(d, ffn_mult, ffn_kind, dropout)

    def forward(
        self, x: Tensor, key_mask: Tensor | None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Shapes: x (B, N, d), key_mask (B, N) or None -> (B, N, d) and, with `need_weights`,
        weights (B, H, N, N) (else None)."""
        h = self.norm_attn(x)
        a, weights = self.attn(h, h, key_mask, need_weights)
        x = x + a
        x = x + self.ffn(self.norm_ffn(x))
        return x, weights


class CrossAttentionBlock(nn.Module):
    """Pre-LN cross-attention block: x + Attn(LN(x), LN(ctx)), then (optionally) x + FFN(LN(x)).

    Example:
        >>> blk = CrossAttentionBlock(16, 16, heads=2, dim_head=8)
        >>> y, w = blk(torch.randn(2, 4, 16), torch.randn(2, 6, 16), None, need_weights=True)
        >>> y.shape, w.shape
        (torch.Size([2, 4, 16]), torch.Size([2, 2, 4, 6]))
    """

    def __init__(
        self,
        d: int,
        d_ctx: int,
        heads: int,
        dim_head: int,
        ffn_mult: int = 4,
        ffn_kind: Literal["geglu", "gelu"] = "geglu",
        dropout: float = 0.0,
        use_ffn: bool = True,
    ):
        super().__init__()
        self.norm_q = nn.LayerNorm(d)
        self.norm_ctx = nn.LayerNorm(d_ctx)
        self.attn = Attention(d, d_ctx, heads, dim_head, dropout)
        self.norm_ffn = nn.LayerNorm(d) if use_ffn else None
        self.ffn = FeedForward(d, ffn_mult, ffn_kind, dropout) if use_ffn else None

    def forward(
        self, x: Tensor, context: Tensor, key_mask: Tensor | None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Shapes: x (B, Nq, d), context (B, Nk, d_ctx), key_mask (B, Nk) or None ->
        (B, Nq, d) and, with `need_weights`, weights (B, H, Nq, Nk) (else None)."""
        a, weights = self.attn(self.norm_q(x), self.norm_ctx(context), key_mask, need_weights)
        x = x + a
        if self.ffn is not None and self.norm_ffn is not None:
            x = x + self.ffn(self.norm_ffn(x))
        return x, weights
