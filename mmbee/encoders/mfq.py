"""MMBee's Multi-modal Fusion with Learnable Query (MFQ): segment buffer + author id -> h_m.

MMBee (KDD'24), author side:

    h_v = CrossAttention(X_v W_v^Q, Y_v W_v^K, Y_v W_v^V),  Y_v = OP(X_v, X_s, X_t)
    h_s = CrossAttention(X_s W_s^Q, Y_s W_s^K, Y_s W_s^V),  Y_s = OP(X_s, X_t, X_v)
    h_t = CrossAttention(X_t W_t^Q, Y_t W_t^K, Y_t W_t^V),  Y_t = OP(X_t, X_s, X_v)
    h'_f = h_v (+) h_s (+) h_t;   h_f = SelfAttention(h'_f)
    h'_m = CrossAttention(q_m W_c^Q, h_f W_c^K, h_f W_c^V);   h_m = SelfAttention(h'_m)

Letters: B streams, L segments, d model width, n_q learnable query tokens, D output width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbee.encoders.base import (
    DEFAULT_AUTHOR_BUCKETS,
    MODALITIES,
    ContentEncoder,
    EncoderOutput,
    SegmentBatch,
)
from mmbee.encoders.layers import CrossAttentionBlock, SelfAttentionBlock

__all__ = [
    "MFQConfig",
    "MFQEncoder",
    "ModalityCrossAttention",
    "orthogonal_residual",
    "modality_residuals",
    "newest_and_contrast",
]

# For modality m, the other two modalities (rows of MODALITIES): v <- (s, t), s <- (v, t), ...
_OTHERS = torch.tensor([[1, 2], [0, 2], [0, 1]])
# Flat indices into a 3 x 3 Gram matrix G (entry (i, j) at 3 i + j): for each modality m with
# others (a, b) = _OTHERS[m], the rows are G_aa, G_bb, G_ab, G_ma, G_mb.
_GRAM_IDX = torch.tensor([[4, 0, 0], [8, 8, 4], [5, 2, 1], [1, 3, 6], [2, 5, 7]])


def orthogonal_residual(x: Tensor, basis: Tensor, basis_mask: Tensor, eps: float) -> Tensor:
    """Remove from `x` the part explained by the rows of `basis` (ridge least squares).

    With A the present basis rows (k x d) and x a row vector,

        OP(x, A) = x - c A,   c = x A^T (A A^T + eps I)^{-1}

    i.e. x minus its (eps-regularised) orthogonal projection onto span(A). eps > 0 keeps the
    k x k system positive definite when rows are missing (a masked row is zero, so its
    coefficient is exactly 0), parallel or tiny; as eps -> 0 this is x - P_A x.

    Shapes:
        x: (..., n, d); basis: (..., k, d); basis_mask: (..., k) bool; returns (..., n, d).
    """
    a = basis * basis_mask.unsqueeze(-1).to(basis.dtype)  # (..., k, d)
    k = a.shape[-2]
    gram = a @ a.transpose(-1, -2)  # (..., k, k)
    gram = gram + eps * torch.eye(k, dtype=a.dtype, device=a.device)
    cross = x @ a.transpose(-1, -2)  # (..., n, k)
    coef = torch.linalg.solve(gram, cross.transpose(-1, -2)).transpose(-1, -2)  # (..., n, k)
    return x - coef @ a


def modality_residuals(
    x: Tensor, mask: Tensor, scope: Literal["segment", "stream"], eps: float
) -> Tensor:
    """Y_m = OP(X_m, other modalities) for the three modalities at once.

    scope "segment": each token X_m[l] loses its projection on span{X_a[l], X_b[l]}, the other
    two modalities of the same segment (what the other modalities say *at that moment*).
    scope "stream": each token loses its projection on the span of every present token of the
    other modalities over the whole buffer (at most 2L directions; needs 2L < d to leave room).

    Shapes:
        x: (B, 3, L, d) tokens, zero where masked; mask: (B, 3, L) bool; returns (B, 3, L, d).
    """
    B, M, L, d = x.shape
    if scope == "segment":
        # k = 2 closed form of `orthogonal_residual`, from the 3 x 3 Gram matrix per segment
        xs = x.transpose(1, 2)  # (B, L, 3, d)
        gram = (xs @ xs.transpose(-1, -2)).reshape(B, L, 9)  # masked tokens are zero rows
        g = gram[:, :, _GRAM_IDX.to(x.device)]  # (B, L, 5, 3): aa, bb, ab, ma, mb per m
        g_aa, g_bb, g_ab, c_a, c_b = g.unbind(dim=2)  # each (B, L, 3)
        g_aa, g_bb = g_aa + eps, g_bb + eps
        det = g_aa * g_bb - g_ab * g_ab  # >= eps^2 > 0 (Cauchy-Schwarz)
        coef = (
            torch.stack([c_a * g_bb - c_b * g_ab, c_b * g_aa - c_a * g_ab], dim=2) / det[:, :, None]
        )  # (B, L, 2, 3)
        others = xs[:, :, _OTHERS.T.to(x.device)]  # (B, L, 2, 3, d): rows a, b of each m
        y = xs - (coef.unsqueeze(-1) * others).sum(dim=2)  # (B, L, 3, d)
        return y.transpose(1, 2)  # (B, 3, L, d)
    if scope == "stream":
        others = _OTHERS.to(x.device)
        basis = x[:, others].reshape(B, M, 2 * L, d)  # (B, 3, 2L, d)
        bmask = mask[:, others].reshape(B, M, 2 * L)  # (B, 3, 2L)
        return orthogonal_residual(x, basis, bmask, eps)  # (B, 3, L, d)
    raise ValueError(f"op_scope must be 'segment' or 'stream', got {scope!r}")


class ModalityCrossAttention(nn.Module):
    """h_m = X_m + W^O_m Attn(LN_m(X_m) W^Q_m, LN'_m(Y_m) W^K_m, LN'_m(Y_m) W^V_m), m = v, s, t.

    Three pre-LN cross-attentions with their own weights (MMBee's W_v, W_s, W_t), computed as
    one grouped attention over a modality axis (one kernel call instead of three). Keys of
    modality m are its present segments; a modality with no present segment gets h_m = X_m.

    Example:
        >>> att = ModalityCrossAttention(d=16, heads=2)
        >>> x = torch.randn(2, 3, 5, 16)
        >>> att(x, x, torch.ones(2, 3, 5, dtype=torch.bool)).shape
        torch.Size([2, 3, 5, 16])
    """

    def __init__(
        self, d: int, heads: int, n_modalities: int = len(MODALITIES), dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.heads, self.dim_head = heads, d // heads
        inner = heads * self.dim_head
        M = n_modalities
        self.norm_q_weight = nn.Parameter(torch.ones(M, 1, d))
        self.norm_q_bias = nn.Parameter(torch.zeros(M, 1, d))
        self.norm_kv_weight = nn.Parameter(torch.ones(M, 1, d))
        self.norm_kv_bias = nn.Parameter(torch.zeros(M, 1, d))
        bound_in, bound_out = d**-0.5, inner**-0.5  # nn.Linear's default init range
        self.w_q = nn.Parameter(torch.empty(M, d, inner).uniform_(-bound_in, bound_in))
        self.w_kv = nn.Parameter(torch.empty(M, d, 2 * inner).uniform_(-bound_in, bound_in))
        self.w_o = nn.Parameter(torch.empty(M, inner, d).uniform_(-bound_out, bound_out))
        self.b_o = nn.Parameter(torch.empty(M, 1, d).uniform_(-bound_out, bound_out))

    def forward(self, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """Shapes: x, y (B, M, L, d); mask (B, M, L) bool (keys present) -> (B, M, L, d)."""
        B, M, L, d = x.shape
        H, dh = self.heads, self.dim_head
        xq = F.layer_norm(x, (d,)) * self.norm_q_weight + self.norm_q_bias  # (B, M, L, d)
        yk = F.layer_norm(y, (d,)) * self.norm_kv_weight + self.norm_kv_bias
        q = (xq @ self.w_q).view(B * M, L, H, dh).transpose(1, 2)  # (BM, H, L, dh)
        kv = (yk @ self.w_kv).view(B * M, L, 2, H, dh).permute(2, 0, 3, 1, 4)  # (2, BM, H, L, dh)
        key_mask = mask.reshape(B * M, L)
        has_key = key_mask.any(dim=-1)  # (BM,)
        allowed = (key_mask | ~has_key[:, None])[:, None, None, :]  # (BM, 1, 1, L)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=allowed, dropout_p=p)
        # a: (BM, H, L, dh)
        a = a * has_key[:, None, None, None].to(a.dtype)
        a = a.transpose(1, 2).reshape(B, M, L, H * dh)
        return x + a @ self.w_o + self.b_o * has_key.view(B, M, 1, 1).to(a.dtype)


@dataclass(frozen=True)
class MFQConfig:
    """MFQ hyperparameters (the paper gives none; defaults argued in docs/encoders.md).

    d_model: common token width after the per-modality input projections.
    heads: attention heads everywhere (dim_head = d_model // heads).
    n_queries: n_q, learnable query tokens derived from the author id.
    fusion_layers / query_layers: self-attention blocks over h'_f and over h'_m.
    author_buckets / author_dim: hashed author-id embedding (rows from `author_row`, 0 = unknown).
    max_segments: segment-recency embeddings (segments further back share the last one).
    op_scope / op_eps: orthogonal projection per segment or over the buffer; ridge eps relative to
        d_model (tokens are layer-normed, so |x|^2 ~ d_model).
    now_hidden: width of the "now" path (0 = off): an MLP over each modality's newest present
        segment and its contrast to the buffer's mean, added to the output. The paper's query
        pools the whole buffer; what moves gifting is the moment that is live now, and the
        newest segment carries it best (docs/scorer.md, "Presenting the signals").
    now_dim: the now path's own per-modality projection width (0 = it reads the shared tokens
        X_m of step 1).
    """

    visual_dim: int = 1280
    speech_dim: int = 384
    comment_dim: int = 384
    d_model: int = 64
    heads: int = 4
    n_queries: int = 4
    fusion_layers: int = 1
    query_layers: int = 1
    ffn_mult: int = 2
    out_dim: int = 64
    author_buckets: int = DEFAULT_AUTHOR_BUCKETS
    author_dim: int = 32
    max_segments: int = 64
    op_scope: Literal["segment", "stream"] = "segment"
    op_eps: float = 1e-3
    dropout: float = 0.0
    now_hidden: int = 0
    now_dim: int = 0

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        if self.op_scope not in ("segment", "stream"):
            raise ValueError(f"op_scope must be 'segment' or 'stream', got {self.op_scope!r}")
        if min(self.n_queries, self.max_segments, self.author_buckets - 1, self.op_eps) <= 0:
            raise ValueError("n_queries, max_segments, op_eps must be > 0, author_buckets >= 2")


class MFQEncoder(ContentEncoder):
    """MMBee's MFQ: orthogonal projection, per-modality cross-attention, fusion, author query.

    1. X_m = LN_m(W_m x_m): each modality's per-segment features to width d (frames and
       comments are mean-pooled within a segment first). Missing tokens are zeroed.
    2. Y_m = OP(X_m, others) (`modality_residuals`): the part of X_m the other modalities do
       not explain.
    3. h_m = X_m + CrossAttn_m(Q = X_m, K = V = Y_m), keys = the present segments of m.
    4. h'_f = [h_v; h_s; h_t] + segment-recency and modality embeddings (3L tokens);
       h_f = fusion self-attention blocks (masked).
    5. q_m = Q_0 + reshape(W_q e(author)) (n_q x d; row 0 = unknown adds nothing, so unknown
       authors use the shared Q_0); h'_m = q_m + CrossAttn(q_m, h_f) (+ FFN).
    6. h_m = query self-attention blocks; mean over the n_q tokens, LN, linear to D.
    7. With `now_hidden` > 0, h_m += MLP([X_m(newest), X_m(newest) - mean_l X_m(l)] over m):
       the newest present segment of each modality and how it departs from the buffer (a
       modality that only shows category and style cancels out in the contrast).

    Example:
        >>> cfg = MFQConfig(visual_dim=8, speech_dim=4, comment_dim=4, d_model=16, heads=2,
        ...                 author_buckets=16, author_dim=4, out_dim=8)
        >>> enc = MFQEncoder(cfg)
        >>> enc.out_dim
        8
    """

    name: ClassVar[str] = "mfq"
    config_cls: ClassVar[type] = MFQConfig
    config: MFQConfig

    def __init__(self, config: MFQConfig) -> None:
        super().__init__(config)
        c = config
        d, dh = c.d_model, c.d_model // c.heads
        self.in_proj = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, d), nn.LayerNorm(d))
            for dim in (c.visual_dim, c.speech_dim, c.comment_dim)
        )
        self.modality_xattn = ModalityCrossAttention(d, c.heads, dropout=c.dropout)
        self.segment_pos = nn.Embedding(c.max_segments, d)
        self.modality_emb = nn.Embedding(len(MODALITIES), d)
        self.fusion = nn.ModuleList(
            SelfAttentionBlock(d, c.heads, dh, c.ffn_mult, "gelu", c.dropout)
            for _ in range(c.fusion_layers)
        )
        self.base_queries = nn.Parameter(torch.randn(c.n_queries, d) * 0.02)
        self.author_emb = nn.Embedding(c.author_buckets, c.author_dim, padding_idx=0)
        self.author_to_queries = nn.Linear(c.author_dim, c.n_queries * d, bias=False)
        self.query_xattn = CrossAttentionBlock(d, d, c.heads, dh, c.ffn_mult, "gelu", c.dropout)
        self.query_blocks = nn.ModuleList(
            SelfAttentionBlock(d, c.heads, dh, c.ffn_mult, "gelu", c.dropout)
            for _ in range(c.query_layers)
        )
        self.out_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, c.out_dim)
        self.now: nn.Module | None = None
        self.now_proj: nn.ModuleList | None = None
        if c.now_hidden > 0:
            width = d
            if c.now_dim > 0:
                width = c.now_dim
                self.now_proj = nn.ModuleList(
                    nn.Sequential(nn.Linear(dim, width), nn.LayerNorm(width))
                    for dim in (c.visual_dim, c.speech_dim, c.comment_dim)
                )
            self.now = nn.Sequential(
                nn.Linear(2 * len(MODALITIES) * width, c.now_hidden),
                nn.GELU(),
                nn.Linear(c.now_hidden, c.out_dim),
            )

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def forward(self, batch: SegmentBatch) -> EncoderOutput:
        """Encode segment buffers into content embeddings h_m.

        Shapes:
            batch: see `SegmentBatch` (L <= anything; frames / comments pooled per segment).
            embedding: (B, D). extras["query_attention"]: (B, heads, n_q, 3L), the author
            queries' attention over the fused tokens (modality-major: v segments, s, t).
        """
        c = self.config
        B, L = batch.segment_mask.shape
        tok = batch.token_mask().transpose(1, 2)  # (B, 3, L) token present
        feats = (batch.pooled_visual(), batch.speech, batch.pooled_comments())
        x = torch.stack([proj(f) for proj, f in zip(self.in_proj, feats, strict=True)], dim=1)
        # missing tokens become exactly zero; Linear and LayerNorm act row by row, so whatever a
        # padded row held (NaN included) stays in that row and is selected away here
        x = torch.where(tok.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype))  # (B, 3, L, d)

        # 2. orthogonal projection: what the other modalities do not explain
        y = modality_residuals(x, tok, c.op_scope, c.op_eps * c.d_model)  # (B, 3, L, d)

        # 3. per-modality cross-attention, queries X_m, keys/values Y_m
        h = self.modality_xattn(x, y, tok)  # (B, 3, L, d)

        # 4. concatenate the modalities, add recency and modality embeddings, fuse
        age = torch.arange(L - 1, -1, -1, device=x.device).clamp_max(c.max_segments - 1)  # (L,)
        h = h + self.segment_pos(age)[None, None] + self.modality_emb.weight[None, :, None]
        hf = h.reshape(B, 3 * L, -1)  # (B, 3L, d)
        fmask = tok.reshape(B, 3 * L)  # (B, 3L)
        for blk in self.fusion:
            hf, _ = blk(hf, fmask)

        # 5. learnable author query attends to the fused tokens
        ids = batch.author_ids
        if bool(((ids < 0) | (ids >= c.author_buckets)).any()):
            raise ValueError(
                f"author_ids must be rows in [0, {c.author_buckets}) (use author_row), got "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )
        q = self.base_queries[None] + self.author_to_queries(self.author_emb(ids)).view(
            B, c.n_queries, c.d_model
        )  # (B, n_q, d)
        q, query_attention = self.query_xattn(q, hf, fmask, need_weights=True)

        # 6. self-attention over the query tokens, pool to D
        for blk in self.query_blocks:
            q, _ = blk(q, None)
        emb = self.head(self.out_norm(q.mean(dim=1)))  # (B, D)
        if self.now is not None:
            xn = x
            if self.now_proj is not None:
                xn = torch.stack([p(f) for p, f in zip(self.now_proj, feats, strict=True)], dim=1)
                xn = torch.where(tok.unsqueeze(-1), xn, torch.zeros((), dtype=xn.dtype))
            emb = emb + self.now(newest_and_contrast(xn, tok))
        return EncoderOutput(emb, extras={"query_attention": query_attention})


def newest_and_contrast(x: Tensor, tok: Tensor) -> Tensor:
    """Each modality's newest present token and its difference to the modality's mean token.

    Shapes:
        x: (B, M, L, d) tokens (zero where absent), oldest -> newest; tok: (B, M, L) bool.
        Returns (B, 2 M d): [newest (M d), newest - mean (M d)], zeros for an absent modality.
    """
    B, M, L, d = x.shape
    has = tok.any(dim=-1)  # (B, M)
    pos = torch.arange(1, L + 1, device=x.device)  # (L,)
    last = (tok.long() * pos).argmax(dim=-1)  # (B, M) index of the newest present token
    newest = x.gather(2, last[:, :, None, None].expand(B, M, 1, d)).squeeze(2)  # (B, M, d)
    mean = x.sum(dim=2) / tok.sum(dim=-1, keepdim=True).clamp_min(1).to(x.dtype)  # (B, M, d)
    contrast = (newest - mean) * has.unsqueeze(-1).to(x.dtype)  # (B, M, d)
    return torch.cat([newest.reshape(B, M * d), contrast.reshape(B, M * d)], dim=-1)
