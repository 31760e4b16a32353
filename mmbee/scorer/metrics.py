"""Evaluation metrics of the GTR scorer: AUC, UAUC, GAUC and top-K ranking metrics (numpy only).

Definitions (MMBee Table 2 and KuaiLive):
    AUC   area under the ROC curve over all impressions (ties count one half, as scikit-learn).
    UAUC  mean of per-user AUCs over the users that have both a positive and a negative.
    GAUC  per-user AUCs over the same users, weighted by the user's number of impressions.
    Recall@K, Precision@K, NDCG@K   ranking streamers per user (MMBee Table 3): per user, each
          candidate streamer gets the highest score of its impressions and is relevant when any
          of its impressions is positive; averaged over users with at least one relevant streamer.
          Precision divides by K (not by the number of candidates), as is usual.

Every function takes 1-d arrays of equal length; labels are 0/1.

Example:
    >>> import numpy as np
    >>> auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.3, 0.2]))
    0.75
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "auc",
    "per_user_auc",
    "uauc",
    "gauc",
    "RankingMetrics",
    "ranking_at_k",
    "evaluate_scores",
]


def _check(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    yi = y.astype(np.int64)
    if y.size and not np.isin(yi, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return yi, s


def _grouped_auc(
    groups: NDArray[np.int64], labels: NDArray[np.int64], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """AUC per group, vectorised: (auc (G,), n_pos (G,), n (G,)); auc is NaN without both labels.

    `groups` are dense ids 0..G-1. Ranks are taken within each group with ties averaged
    (the Mann-Whitney U statistic), which is exactly scikit-learn's `roc_auc_score`.
    """
    n_groups = int(groups.max()) + 1 if groups.size else 0
    order = np.lexsort((scores, groups))  # by group, then score
    g = groups[order]
    s = scores[order]
    y = labels[order]
    n = np.bincount(g, minlength=n_groups)
    starts = np.concatenate(([0], np.cumsum(n)[:-1]))
    # 1-based rank inside the group before tie averaging.
    rank = np.arange(g.size, dtype=np.float64) - starts[g] + 1.0
    # Tie blocks: runs of equal (group, score); each gets the mean rank of the run.
    new_block = np.ones(g.size, dtype=bool)
    if g.size > 1:
        new_block[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    block = np.cumsum(new_block) - 1
    block_sum = np.bincount(block, weights=rank)
    block_len = np.bincount(block)
    avg_rank = (block_sum / block_len)[block]
    n_pos = np.bincount(g, weights=y, minlength=n_groups).astype(np.int64)
    n_neg = n - n_pos
    rank_pos = np.bincount(g, weights=avg_rank * y, minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = rank_pos - n_pos * (n_pos + 1) / 2.0
        res = u / (n_pos * n_neg)
    res[(n_pos == 0) | (n_neg == 0)] = np.nan
    return res, n_pos, n


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC over all impressions; NaN when only one class is present."""
    y, s = _check(labels, scores)
    if y.size == 0:
        return float("nan")
    res, _, _ = _grouped_auc(np.zeros(y.size, dtype=np.int64), y, s)
    return float(res[0])


def _dense_ids(users: ArrayLike) -> NDArray[np.int64]:
    _, inverse = np.unique(np.asarray(users).reshape(-1), return_inverse=True)
    return inverse.astype(np.int64).reshape(-1)


def per_user_auc(
    users: ArrayLike, labels: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Per-user AUC and impression count, over users with both labels (others dropped)."""
    y, s = _check(labels, scores)
    u = _dense_ids(users)
    if u.shape != y.shape:
        raise ValueError(f"users and labels differ in length: {u.shape[0]} vs {y.shape[0]}")
    if y.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    res, _, n = _grouped_auc(u, y, s)
    keep = ~np.isnan(res)
    return res[keep], n[keep]


def uauc(users: ArrayLike, labels: ArrayLike, scores: ArrayLike) -> float:
    """Mean per-user AUC over users with both a positive and a negative (NaN if none)."""
    res, _ = per_user_auc(users, labels, scores)
    return float(res.mean()) if res.size else float("nan")


def gauc(users: ArrayLike, labels: ArrayLike, scores: ArrayLike) -> float:
    """Impression-weighted per-user AUC over users with both labels (NaN if none)."""
    res, n = per_user_auc(users, labels, scores)
    return float((res * n).sum() / n.sum()) if res.size else float("nan")


@dataclass(frozen=True)
class RankingMetrics:
    """Top-K metrics of ranking streamers per user, averaged over users with a relevant one.

    Example:
        >>> RankingMetrics(k=10, recall=0.5, precision=0.05, ndcg=0.3, n_users=12).k
        10
    """

    k: int
    recall: float
    precision: float
    ndcg: float
    n_users: int


def ranking_at_k(
    users: ArrayLike,
    items: ArrayLike,
    labels: ArrayLike,
    scores: ArrayLike,
    k: int = 10,
) -> RankingMetrics:
    """Recall@K, Precision@K and NDCG@K (binary gains) of ranking items (streamers) per user.

    Impressions of the same (user, item) pair are merged first: max score, any positive.
    Ties in score are broken by item order of first appearance (stable sort), deterministically.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    y, s = _check(labels, scores)
    u = _dense_ids(users)
    it = _dense_ids(items)
    if not (u.shape == it.shape == y.shape):
        raise ValueError("users, items, labels and scores must have the same length")
    if y.size == 0:
        return RankingMetrics(k, float("nan"), float("nan"), float("nan"), 0)
    # Merge impressions into (user, item) pairs.
    n_items = int(it.max()) + 1
    pair = u * n_items + it
    pairs, first, inv = np.unique(pair, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    pair_score = np.full(pairs.size, -np.inf)
    np.maximum.at(pair_score, inv, s)
    pair_rel = np.zeros(pairs.size, dtype=np.int64)
    np.maximum.at(pair_rel, inv, y)
    pair_user = pairs // n_items
    # Sort by user, then score descending, then first appearance (stable tie break).
    order = np.lexsort((first, -pair_score, pair_user))
    pu = pair_user[order]
    rel = pair_rel[order]
    n_per_user = np.bincount(pu)
    starts = np.concatenate(([0], np.cumsum(n_per_user)[:-1]))
    pos_in_user = np.arange(pu.size) - starts[pu]  # 0-based rank
    in_top = pos_in_user < k
    n_users = n_per_user.size
    n_rel = np.bincount(pu, weights=rel, minlength=n_users)
    hits = np.bincount(pu, weights=rel * in_top, minlength=n_users)
    discount = 1.0 / np.log2(pos_in_user + 2.0)
    dcg = np.bincount(pu, weights=rel * in_top * discount, minlength=n_users)
    ideal_n = np.minimum(n_rel, k).astype(np.int64)
    cum_disc = np.concatenate(([0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))))
    idcg = cum_disc[ideal_n]
    keep = n_rel > 0
    if not keep.any():
        return RankingMetrics(k, float("nan"), float("nan"), float("nan"), 0)
    return RankingMetrics(
        k=k,
        recall=float((hits[keep] / n_rel[keep]).mean()),
        precision=float((hits[keep] / k).mean()),
        ndcg=float((dcg[keep] / idcg[keep]).mean()),
        n_users=int(keep.sum()),
    )


def evaluate_scores(
    users: ArrayLike,
    items: ArrayLike,
    labels: ArrayLike,
    scores: ArrayLike,
    k: int = 10,
) -> dict[str, float]:
    """All metrics at once as a flat dict: auc, uauc, gauc, recall@k, precision@k, ndcg@k, n, pos."""
    y, s = _check(labels, scores)
    r = ranking_at_k(users, items, y, s, k)
    return {
        "auc": auc(y, s),
        "uauc": uauc(users, y, s),
        "gauc": gauc(users, y, s),
        f"recall@{k}": r.recall,
        f"precision@{k}": r.precision,
        f"ndcg@{k}": r.ndcg,
        "n": float(y.size),
        "pos": float(y.sum()),
    }
