"""GIE: MMBee's Graph-guided Interest Expansion, h_g from the five metapath expansions.

Each expansion (u2a2u, u2a2u2a, u2a2a of the viewer; a2a, a2u2a of the target streamer) is a
weighted top-N node list looked up in the GraphCL node tables Theta (one for users, one for
authors). A target query built from Theta(user) and Theta(author) attends over each list, with
the log expansion weight as an attention bias. Per expansion the block keeps the attended vector,
the log-sum-exp of its attention logits (how strongly the list matches the target) and the
expansion weight of the target streamer itself when it appears in an author list; a linear
layer fuses the five into h_g.

GraphCL (MMBee Algorithm 1) trains Theta jointly: `nce_loss` is the InfoNCE term L_NCE with the
u2a2u neighbourhood as a user's positives and the a2u2a neighbourhood as an author's, other nodes
of the same type in the batch as negatives; the training wrapper adds lambda * L_NCE to L_CE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbee.scorer.batch import EXPANSIONS, GTRBatch
from mmbee.scorer.layers import TargetAttention, same_rows

__all__ = ["GIEConfig", "GIE"]

_USER_LIST = EXPANSIONS.index("u2a2u")
_AUTHOR_POS = EXPANSIONS.index("a2u2a")


@dataclass(frozen=True)
class GIEConfig:
    """GIE hyperparameters.

    Attributes:
        dim: Theta width and h_g width D.
        user_rows, author_rows: hashed Theta table sizes (row 0 = padding).
        heads: attention heads per expansion.
        temperature: InfoNCE temperature of the GraphCL loss.
    """

    dim: int = 32
    user_rows: int = 1 << 15
    author_rows: int = 1 << 12
    heads: int = 1
    temperature: float = 0.2


class GIE(nn.Module):
    """Target attention over the GraphCL embeddings of the five metapath expansions.

    Example:
        >>> from mmbee.scorer.batch import GTRBatch
        >>> g = GIE(GIEConfig(dim=8, user_rows=16, author_rows=16))
        >>> g(GTRBatch.empty_like_for_tests(3, history=2, n=4)).shape
        torch.Size([3, 8])
    """

    def __init__(self, config: GIEConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.theta_user = nn.Embedding(config.user_rows, d, padding_idx=0)
        self.theta_author = nn.Embedding(config.author_rows, d, padding_idx=0)
        for table in (self.theta_user, self.theta_author):
            nn.init.normal_(table.weight, std=0.05)
            with torch.no_grad():
                table.weight[0].zero_()
        self.query = nn.Linear(2 * d, d)
        self.attend = nn.ModuleList(TargetAttention(d, config.heads) for _ in EXPANSIONS)
        p = len(EXPANSIONS)
        self.fuse = nn.Linear(p * d + 3 * p, d)

    def _lookup(self, exp_ids: Tensor) -> list[Tensor]:
        """Theta rows of every expansion's nodes (user table for u2a2u), one (B, N, D) per
        expansion, or (1, N, D) where every row lists the same nodes (a score request's
        user-side expansions: projected once by the attention)."""
        out = []
        for i, name in enumerate(EXPANSIONS):
            table = self.theta_user if name == "u2a2u" else self.theta_author
            ids = exp_ids[:, i]  # (B, N)
            out.append(table(ids[:1] if same_rows(ids) else ids))
        return out

    def forward(self, batch: GTRBatch) -> Tensor:
        """h_g.

        Shapes:
            batch.exp_ids / exp_weight / exp_mask (B, P, N); batch.user, batch.author (B,).
            Returns h_g (B, D).
        """
        tu = self.theta_user(batch.user)  # (B, D)
        ta = self.theta_author(batch.author)  # (B, D)
        query = self.query(torch.cat([tu, ta], dim=-1))  # (B, D)
        nodes = self._lookup(batch.exp_ids)  # P x (B or 1, N, D)
        bias = torch.log(batch.exp_weight.clamp_min(1e-6))  # (B, P, N)
        feats = []
        stats = []
        for i, name in enumerate(EXPANSIONS):
            mask = batch.exp_mask[:, i]  # (B, N)
            out, logits = self.attend[i](query, nodes[i], mask, bias[:, i])
            feats.append(out)
            any_valid = mask.any(dim=-1, keepdim=True)  # (B, 1)
            lse = torch.logsumexp(logits.mean(dim=1).masked_fill(~mask, -1e4), dim=-1, keepdim=True)
            lse = torch.where(any_valid, lse, torch.zeros_like(lse))  # (B, 1)
            if name == "u2a2u":  # a user list cannot contain the target streamer
                target_w = torch.zeros_like(lse)
            else:
                hit = (batch.exp_ids[:, i] == batch.author.unsqueeze(1)) & mask  # (B, N)
                target_w = torch.log1p((batch.exp_weight[:, i] * hit).sum(-1, keepdim=True))
            stats.append(torch.cat([lse, target_w, any_valid.to(lse.dtype)], dim=-1))  # (B, 3)
        return self.fuse(torch.cat(feats + stats, dim=-1))

    def nce_loss(self, batch: GTRBatch) -> Tensor:
        """GraphCL's L_NCE on the batch (scalar): users vs u2a2u, authors vs a2u2a, in-batch negatives."""
        losses = []
        for ids, table, pos in (
            (batch.user, self.theta_user, _USER_LIST),
            (batch.author, self.theta_author, _AUTHOR_POS),
        ):
            mask = batch.exp_mask[:, pos]  # (B, N)
            valid = mask.any(dim=-1)  # (B,)
            if int(valid.sum()) < 2:
                continue
            w = batch.exp_weight[:, pos] * mask  # (B, N)
            neigh = table(batch.exp_ids[:, pos])  # (B, N, D)
            positive = (w.unsqueeze(-1) * neigh).sum(1) / w.sum(-1, keepdim=True).clamp_min(1e-6)
            z = F.normalize(table(ids)[valid], dim=-1)  # (V, D)
            p = F.normalize(positive[valid], dim=-1)  # (V, D)
            logits = z @ p.T / self.config.temperature  # (V, V)
            # The same node twice in a batch is not its own negative.
            same = ids[valid].unsqueeze(0) == ids[valid].unsqueeze(1)
            eye = torch.eye(same.shape[0], dtype=torch.bool, device=same.device)
            logits = logits.masked_fill(same & ~eye, float("-inf"))
            target = torch.arange(logits.shape[0], device=logits.device)
            losses.append(F.cross_entropy(logits, target))
        if not losses:
            return self.theta_user.weight.sum() * 0.0
        return torch.stack(losses).mean()
