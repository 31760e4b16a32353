"""Building blocks shared by the GTR models: MLPs, masked target attention, behaviour embeddings.

Shape letters: see `mmbee.scorer.batch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbee.scorer.batch import AGE_BUCKETS, EXPANSIONS, KINDS

__all__ = [
    "mlp",
    "TargetAttention",
    "BehaviourEmbedding",
    "masked_mean",
    "match_counts",
    "graph_membership",
    "GRAPH_MEMBERSHIP",
    "same_rows",
]


def same_rows(*xs: Tensor) -> bool:
    """Whether B > 1 and every row of each (B, ...) tensor equals its first row.

    A score request's batch repeats the user's side (history, expansions) in every candidate's
    row: the models then compute what depends only on those rows once, on row 0, and broadcast
    it (the cost of a 200-candidate request falls by the share of those projections). The
    check is one comparison per element, far cheaper than the projections it saves.

    Example:
        >>> same_rows(torch.tensor([[1, 2], [1, 2]])), same_rows(torch.tensor([[1, 2], [1, 3]]))
        (True, False)
    """
    return xs[0].shape[0] > 1 and all(bool((x == x[:1]).all()) for x in xs)


def mlp(
    in_dim: int, hidden: Sequence[int], out_dim: int | None, dropout: float = 0.0
) -> nn.Sequential:
    """Linear -> ReLU (-> Dropout) blocks over `hidden`, then an optional Linear to `out_dim`.

    Example:
        >>> mlp(8, (16,), 1)(torch.zeros(2, 8)).shape
        torch.Size([2, 1])
    """
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of (B, N, D) over N under a (B, N) bool mask; rows without any True give zeros."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def match_counts(
    hist_author: Tensor, hist_kind: Tensor, hist_mask: Tensor, author: Tensor
) -> Tensor:
    """log1p of how often the user's sequence holds the target author, per kind: (B, len(KINDS))."""
    same = (hist_author == author.unsqueeze(1)) & hist_mask  # (B, H)
    onehot = F.one_hot(hist_kind, len(KINDS)).to(torch.float32)  # (B, H, 3)
    return torch.log1p((onehot * same.unsqueeze(-1)).sum(dim=1))  # (B, 3)


_TARGET_LISTS = ("u2a2u2a", "u2a2a")
_NEIGHBOUR_LISTS = ("a2a", "a2u2a")
GRAPH_MEMBERSHIP = (
    *(f"{e}_{s}" for e in _TARGET_LISTS for s in ("hit", "log_rel_weight", "inv_sqrt_rank")),
    *(f"{e}_{k}_in_history" for e in _NEIGHBOUR_LISTS for k in ("watch", "gift")),
    *(f"{e}_present" for e in EXPANSIONS),
)
"""Names of the columns of `graph_membership` (15)."""


def graph_membership(
    exp_ids: Tensor,
    exp_weight: Tensor,
    exp_mask: Tensor,
    author: Tensor,
    hist_author: Tensor,
    hist_kind: Tensor,
    hist_mask: Tensor,
) -> Tensor:
    """Explicit graph-membership features of the target streamer, parameter-free: (B, 15).

    What GIE's attention has to discover from a few thousand positives, written out so a linear
    term can read it at once (docs/scorer.md, "Presenting the signals"):

    - for the viewer's author lists u2a2u2a and u2a2a (where co-gifting users, or authors close
      to the viewer's own, send gifts): whether the target is in the list, its log weight
      relative to the list's largest (0 at the top, <= 0 below) and 1/sqrt(1 + rank);
    - for the target's author lists a2a and a2u2a (its co-gifting neighbourhood): log1p of how
      many of the viewer's watches and gifts went to streamers of that neighbourhood. This
      reaches viewers who never gifted, through what they watched;
    - whether each of the five lists is present.

    Shapes:
        exp_ids, exp_weight, exp_mask: (B, P, N) or (1, P, N) broadcast over B; author (B,);
        hist_author, hist_kind, hist_mask: (B, H) or (1, H). Returns (B, 15) float32.

    Example:
        >>> ids = torch.zeros(2, 5, 3, dtype=torch.long); ids[0, 1, 1] = 7
        >>> w = torch.ones(2, 5, 3); m = ids > 0
        >>> h = torch.zeros(2, 4, dtype=torch.long)
        >>> f = graph_membership(ids, w, m, torch.tensor([7, 8]), h, h, h > 0)
        >>> f.shape, float(f[0, 0]), float(f[1, 0])
        (torch.Size([2, 15]), 1.0, 0.0)
    """
    b = author.shape[0]
    out: list[Tensor] = []
    logw = torch.log(exp_weight.clamp_min(1e-9))  # (B, P, N)
    for name in _TARGET_LISTS:
        p = EXPANSIONS.index(name)
        mask = exp_mask[:, p]  # (B, N)
        hit = (exp_ids[:, p] == author.unsqueeze(1)) & mask  # (B, N)
        found = hit.any(dim=-1)  # (B,)
        top = logw[:, p].masked_fill(~mask, -1e9).amax(dim=-1)  # (B,)
        rel = (logw[:, p] - top.unsqueeze(-1)).masked_fill(~hit, 0.0).sum(-1)  # (B,)
        # rank among the present entries by weight (0 = heaviest); ties share the lower rank
        heavier = (logw[:, p].unsqueeze(-1) < logw[:, p].unsqueeze(-2)) & mask.unsqueeze(-2)
        rank = heavier.sum(-1).to(torch.float32)  # (B, N)
        inv = (hit.to(torch.float32) / torch.sqrt(1.0 + rank)).sum(-1)  # (B,)
        out += [found.to(torch.float32).expand(b), rel.expand(b), inv.expand(b)]
    kinds = [KINDS.index("watch"), KINDS.index("gift")]
    for name in _NEIGHBOUR_LISTS:
        p = EXPANSIONS.index(name)
        ids, mask = exp_ids[:, p], exp_mask[:, p]  # (B, N)
        in_list = ((hist_author.unsqueeze(-1) == ids.unsqueeze(-2)) & mask.unsqueeze(-2)).any(-1)
        in_list = in_list & hist_mask  # (B, H)
        for k in kinds:
            n = (in_list & (hist_kind == k)).sum(-1).to(torch.float32)  # (B,)
            out.append(torch.log1p(n).expand(b))
    present = exp_mask.any(dim=-1).to(torch.float32)  # (B, P)
    return torch.cat([torch.stack(out, dim=-1), present.expand(b, -1)], dim=-1)  # (B, 15)


class TargetAttention(nn.Module):
    """Multi-head attention of one target query over a masked key sequence (DIN/SIM ESU style).

    Rows whose keys are all masked return zeros, never NaN.

    Example:
        >>> att = TargetAttention(8, heads=2)
        >>> out, logits = att(torch.zeros(3, 8), torch.zeros(3, 5, 8), torch.ones(3, 5, dtype=torch.bool))
        >>> tuple(out.shape), tuple(logits.shape)
        ((3, 8), (3, 2, 5))
    """

    def __init__(self, dim: int, heads: int = 1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, query: Tensor, keys: Tensor, mask: Tensor, bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Attend from `query` to `keys`.

        Shapes:
            query (B, D); keys (B, N, D), or (1, N, D) shared by every row (projected once);
            mask (B, N) bool; bias (B, N) added to every head's logits (e.g. log expansion
            weights) or None.
            Returns out (B, D) and the masked logits (B, heads, N) (-inf where masked).
        """
        b = query.shape[0]
        bk, n, d = keys.shape
        h, dh = self.heads, d // self.heads
        q = self.q(query).view(b, h, 1, dh)  # (B, h, 1, dh)
        k = self.k(keys).view(bk, n, h, dh).transpose(1, 2)  # (B or 1, h, N, dh)
        v = self.v(keys).view(bk, n, h, dh).transpose(1, 2)  # (B or 1, h, N, dh)
        logits = (q * k).sum(-1) / math.sqrt(dh)  # (B, h, N)
        if bias is not None:
            logits = logits + bias.unsqueeze(1)
        m = mask.unsqueeze(1)  # (B, 1, N)
        logits = logits.masked_fill(~m, float("-inf"))
        any_valid = mask.any(dim=-1).view(b, 1, 1)
        safe = torch.where(any_valid, logits, torch.zeros_like(logits))
        attn = torch.softmax(safe, dim=-1) * m  # (B, h, N)
        out = (attn.unsqueeze(-1) * v).sum(dim=2).reshape(b, d)  # (B, D)
        return self.out(out), logits


class BehaviourEmbedding(nn.Module):
    """Id tables of a base model: user, author, behaviour kind and behaviour age.

    A behaviour's vector is author + kind + age embeddings; the target is its author embedding.

    Example:
        >>> emb = BehaviourEmbedding(dim=8, user_rows=16, author_rows=16)
        >>> emb.items(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long),
        ...           torch.zeros(2, 3, dtype=torch.long)).shape
        torch.Size([2, 3, 8])
    """

    def __init__(self, dim: int, user_rows: int, author_rows: int) -> None:
        super().__init__()
        self.user = nn.Embedding(user_rows, dim, padding_idx=0)
        self.author = nn.Embedding(author_rows, dim, padding_idx=0)
        self.kind = nn.Embedding(len(KINDS), dim)
        self.age = nn.Embedding(AGE_BUCKETS, dim)
        for table in (self.user, self.author, self.kind, self.age):
            nn.init.normal_(table.weight, std=0.05)
            if table.padding_idx is not None:
                with torch.no_grad():
                    table.weight[table.padding_idx].zero_()

    def items(self, hist_author: Tensor, hist_kind: Tensor, hist_age: Tensor) -> Tensor:
        """Behaviour vectors (B, H, D) from (B, H) author rows, kinds and age buckets."""
        return self.author(hist_author) + self.kind(hist_kind) + self.age(hist_age)
