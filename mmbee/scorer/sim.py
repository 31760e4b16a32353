"""SIM base (Pi et al., CIKM'20): search-based user interest modelling over a long behaviour sequence.

Two stages, as in the paper:
    GSU (general search unit): scores every behaviour of the long sequence against the target
        streamer, soft search (inner product of projected embeddings) plus a hard-search bonus for
        behaviours on the same streamer, and keeps the top-K. The paper trains the soft search
        with an auxiliary task on a relevance-weighted pooling of the whole sequence; here that
        pooling feeds the head directly, which trains the GSU projections end to end.
    ESU (exact search unit): multi-head target attention over the K retrieved behaviours.
The user, the target, the ESU output, the GSU's soft pooling of the whole sequence, per-kind match counts, the
dense counters and any side vectors (h_m, h_g) feed an MLP that outputs the gift logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmbee.scorer.batch import DENSE_FEATURES, KINDS, GTRBatch
from mmbee.scorer.layers import BehaviourEmbedding, TargetAttention, match_counts, mlp, same_rows

__all__ = ["SIMConfig", "SIM"]


@dataclass(frozen=True)
class SIMConfig:
    """SIM hyperparameters (defaults sized for the 2-core CPU; the paper leaves them open).

    Attributes:
        dim: embedding and attention width D.
        user_rows, author_rows: hashed id table sizes (row 0 = padding).
        top_k: behaviours the GSU keeps for the ESU (K).
        heads: ESU attention heads.
        hard_bonus: logit bonus the GSU gives a behaviour on the target streamer itself.
        hidden: MLP widths of the prediction head.
        dropout: dropout inside the head.
        side_dim: width of the side vectors appended to the head input (h_m, h_g; 0 = none).
    """

    dim: int = 32
    user_rows: int = 1 << 15
    author_rows: int = 1 << 12
    top_k: int = 16
    heads: int = 2
    hard_bonus: float = 5.0
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.0
    side_dim: int = 0


class SIM(nn.Module):
    """SIM base model: one gift logit per impression.

    Example:
        >>> from mmbee.scorer.batch import GTRBatch
        >>> m = SIM(SIMConfig(dim=8, user_rows=16, author_rows=16, top_k=2, hidden=(8,)))
        >>> m(GTRBatch.empty_like_for_tests(3, history=4, n=2)).shape
        torch.Size([3, 1])
    """

    tasks = ("gift",)

    def __init__(self, config: SIMConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.emb = BehaviourEmbedding(d, config.user_rows, config.author_rows)
        self.gsu_item = nn.Linear(d, d, bias=False)
        self.gsu_target = nn.Linear(d, d, bias=False)
        self.esu = TargetAttention(d, config.heads)
        in_dim = 4 * d + len(KINDS) + len(DENSE_FEATURES) + config.side_dim
        self.head = mlp(in_dim, config.hidden, len(self.tasks), config.dropout)

    def search(
        self, items: Tensor, target: Tensor, batch: GTRBatch
    ) -> tuple[Tensor, Tensor, Tensor]:
        """GSU: top-K indices (B, K), their validity (B, K), and the soft pooling (B, D).

        `items` (B, H, D), or (1, H, D) when every row has the same history."""
        soft = (self.gsu_item(items) * self.gsu_target(target).unsqueeze(1)).sum(-1)  # (B, H)
        soft = soft / items.shape[-1] ** 0.5
        hard = (batch.hist_author == batch.author.unsqueeze(1)).to(soft.dtype)  # (B, H)
        score = (soft + self.config.hard_bonus * hard).masked_fill(~batch.hist_mask, float("-inf"))
        any_valid = batch.hist_mask.any(dim=1, keepdim=True)  # (B, 1)
        weights = torch.softmax(torch.where(any_valid, score, torch.zeros_like(score)), dim=1)
        pooled = ((weights * batch.hist_mask).unsqueeze(-1) * items).sum(1)  # (B, D)
        k = min(self.config.top_k, items.shape[1])
        top = torch.topk(score.detach(), k, dim=1).indices  # (B, K)
        return top, torch.gather(batch.hist_mask, 1, top), pooled

    def forward(self, batch: GTRBatch, side: Tensor | None = None) -> Tensor:
        """Gift logits.

        Shapes:
            batch: see `GTRBatch` (hist_* are (B, H)); side (B, side_dim) or None.
            Returns (B, 1) logits in `self.tasks` order.
        """
        user = self.emb.user(batch.user)  # (B, D)
        target = self.emb.author(batch.author)  # (B, D)
        hist = (batch.hist_author, batch.hist_kind, batch.hist_age)  # (B, H) each
        if same_rows(*hist):  # one user's request: its history once, broadcast
            hist = (hist[0][:1], hist[1][:1], hist[2][:1])
        items = self.emb.items(*hist)  # (B or 1, H, D)
        if items.shape[1] > 0:
            top, top_mask, pooled = self.search(items, target, batch)
            b, d = target.shape
            picked = torch.gather(items.expand(b, -1, -1), 1, top.unsqueeze(-1).expand(-1, -1, d))
            interest, _ = self.esu(target, picked, top_mask)  # (B, D)
        else:
            interest = pooled = torch.zeros_like(target)
        parts = [
            user,
            target,
            interest,
            pooled,
            match_counts(batch.hist_author, batch.hist_kind, batch.hist_mask, batch.author),
            batch.dense,
        ]
        if self.config.side_dim:
            if side is None or side.shape[-1] != self.config.side_dim:
                raise ValueError(f"SIM expects side vectors of width {self.config.side_dim}")
            parts.append(side)
        return self.head(torch.cat(parts, dim=-1))
