"""MMoE base (Ma et al., KDD'18): shared experts with one softmax gate per task (watch, comment, gift).

The input is the user and target streamer embeddings, a mean of the behaviour sequence, per-kind
match counts, the dense counters and any side vectors (h_m, h_g). Each task mixes the experts'
outputs with its own gate and has its own tower; the GTR score is the gift tower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmbee.scorer.batch import DENSE_FEATURES, KINDS, TASKS, GTRBatch
from mmbee.scorer.layers import BehaviourEmbedding, masked_mean, match_counts, mlp

__all__ = ["MMoEConfig", "MMoE"]


@dataclass(frozen=True)
class MMoEConfig:
    """MMoE hyperparameters (defaults sized for the 2-core CPU; the paper leaves them open).

    Attributes:
        dim: embedding width D.
        user_rows, author_rows: hashed id table sizes (row 0 = padding).
        experts: number of shared experts.
        expert_hidden: each expert's MLP widths (the last is the expert output width).
        tower_hidden: each task tower's MLP widths before its logit.
        dropout: dropout inside experts and towers.
        side_dim: width of the side vectors appended to the input (h_m, h_g; 0 = none).
    """

    dim: int = 32
    user_rows: int = 1 << 15
    author_rows: int = 1 << 12
    experts: int = 4
    expert_hidden: tuple[int, ...] = (128, 64)
    tower_hidden: tuple[int, ...] = (32,)
    dropout: float = 0.0
    side_dim: int = 0


class MMoE(nn.Module):
    """MMoE base model: logits for watch, comment and gift.

    Example:
        >>> from mmbee.scorer.batch import GTRBatch
        >>> m = MMoE(MMoEConfig(dim=8, user_rows=16, author_rows=16, expert_hidden=(8,)))
        >>> m(GTRBatch.empty_like_for_tests(3, history=4, n=2)).shape
        torch.Size([3, 3])
    """

    tasks = TASKS

    def __init__(self, config: MMoEConfig) -> None:
        super().__init__()
        if not config.expert_hidden:
            raise ValueError("expert_hidden needs at least one width")
        self.config = config
        d = config.dim
        self.emb = BehaviourEmbedding(d, config.user_rows, config.author_rows)
        in_dim = 3 * d + len(KINDS) + len(DENSE_FEATURES) + config.side_dim
        self.experts = nn.ModuleList(
            mlp(in_dim, config.expert_hidden, None, config.dropout) for _ in range(config.experts)
        )
        self.gates = nn.ModuleList(nn.Linear(in_dim, config.experts) for _ in self.tasks)
        width = config.expert_hidden[-1]
        self.towers = nn.ModuleList(
            mlp(width, config.tower_hidden, 1, config.dropout) for _ in self.tasks
        )

    def forward(self, batch: GTRBatch, side: Tensor | None = None) -> Tensor:
        """Task logits.

        Shapes:
            batch: see `GTRBatch`; side (B, side_dim) or None.
            Returns (B, T) logits in `self.tasks` order (watch, comment, gift).
        """
        items = self.emb.items(batch.hist_author, batch.hist_kind, batch.hist_age)  # (B, H, D)
        parts = [
            self.emb.user(batch.user),
            self.emb.author(batch.author),
            masked_mean(items, batch.hist_mask),
            match_counts(batch.hist_author, batch.hist_kind, batch.hist_mask, batch.author),
            batch.dense,
        ]
        if self.config.side_dim:
            if side is None or side.shape[-1] != self.config.side_dim:
                raise ValueError(f"MMoE expects side vectors of width {self.config.side_dim}")
            parts.append(side)
        x = torch.cat(parts, dim=-1)  # (B, in_dim)
        expert_out = torch.stack([e(x) for e in self.experts], dim=1)  # (B, E, W)
        logits = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            g = torch.softmax(gate(x), dim=-1).unsqueeze(-1)  # (B, E, 1)
            logits.append(tower((g * expert_out).sum(dim=1)))  # (B, 1)
        return torch.cat(logits, dim=-1)  # (B, T)
