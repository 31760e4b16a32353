"""Metrics against scikit-learn (and a brute-force loop for Recall/Precision@K) on random data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from mmbee.scorer.metrics import auc, evaluate_scores, gauc, per_user_auc, ranking_at_k, uauc


def _random(seed: int, n: int = 3000, n_users: int = 80, n_items: int = 40, ties: bool = False):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    items = rng.integers(0, n_items, n)
    labels = (rng.random(n) < 0.15).astype(int)
    scores = rng.random(n) + 0.3 * labels
    if ties:
        scores = np.round(scores, 1)
    return users, items, labels, scores


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn(seed: int, ties: bool) -> None:
    _, _, y, s = _random(seed, ties=ties)
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_uauc_gauc_match_sklearn_per_user(ties: bool) -> None:
    users, _, y, s = _random(3, ties=ties)
    per, weights = [], []
    for u in np.unique(users):
        m = users == u
        if 0 < y[m].sum() < m.sum():
            per.append(roc_auc_score(y[m], s[m]))
            weights.append(m.sum())
    assert len(per) > 10
    assert uauc(users, y, s) == pytest.approx(np.mean(per), abs=1e-12)
    assert gauc(users, y, s) == pytest.approx(np.average(per, weights=weights), abs=1e-12)
    res, n = per_user_auc(users, y, s)
    assert res.size == len(per) and n.sum() == sum(weights)


def test_users_may_be_strings_and_single_class_gives_nan() -> None:
    users = np.array(["a", "a", "b", "b", "b"])
    y = np.array([0, 1, 0, 0, 0])
    s = np.array([0.2, 0.7, 0.1, 0.5, 0.9])
    assert uauc(users, y, s) == 1.0  # user b has no positive and is dropped
    assert np.isnan(auc(np.zeros(4, int), np.arange(4.0)))
    assert np.isnan(uauc(users, np.zeros(5, int), s))


def _brute_ranking(users, items, y, s, k):
    rec, prec, nd = [], [], []
    for u in np.unique(users):
        m = users == u
        best: dict[int, float] = {}
        rel: dict[int, int] = {}
        for i, yy, ss in zip(items[m], y[m], s[m], strict=True):
            best[i] = max(best.get(i, -np.inf), ss)
            rel[i] = max(rel.get(i, 0), yy)
        its = sorted(best, key=lambda i: -best[i])
        r = np.array([rel[i] for i in its])
        if r.sum() == 0:
            continue
        hits = r[:k].sum()
        rec.append(hits / r.sum())
        prec.append(hits / k)
        if len(its) > 1:
            nd.append(ndcg_score([r], [[best[i] for i in its]], k=k))
        else:
            nd.append(1.0)
    return np.mean(rec), np.mean(prec), np.mean(nd), len(rec)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_ranking_matches_bruteforce_and_sklearn_ndcg(k: int) -> None:
    users, items, y, s = _random(4, n=2000, n_users=50, n_items=60)
    r = ranking_at_k(users, items, y, s, k=k)
    rec, prec, nd, n_users = _brute_ranking(users, items, y, s, k)
    assert r.n_users == n_users
    assert r.recall == pytest.approx(rec, abs=1e-12)
    assert r.precision == pytest.approx(prec, abs=1e-12)
    assert r.ndcg == pytest.approx(nd, abs=1e-9)


def test_perfect_scores_give_perfect_metrics_and_bad_input_is_rejected() -> None:
    users, items, y, _ = _random(5)
    m = evaluate_scores(users, items, y, y.astype(float) + 1e-6 * items, k=10)
    assert m["auc"] == 1.0 and m["uauc"] == 1.0 and m["gauc"] == 1.0
    assert m["ndcg@10"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="length"):
        auc([0, 1, 1], [0.1, 0.2])
