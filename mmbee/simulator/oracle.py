"""The observable oracle: the simulator's truth without the viewer's hidden gift propensity.

The full oracle scores impression i with p_i = 1 - exp(-gamma_u * r_i), where r_i (the
"unit rate", `truth/impressions.csv` column `unit_rate`) holds everything but the user's hidden
propensity gamma_u: streamer appeal, community, idol, style match and the moment. No model can
know gamma_u for a user who has never gifted, so the full oracle is out of reach by design.

The observable oracle knows r_i exactly but not gamma_u: it scores
E[1 - exp(-gamma r_i) | what the log showed of user u before the impression], the posterior
mean under the simulator's own prior on gamma (a share of users never gift; the others have a
lognormal gamma, whales x boost) and the likelihood of the user's earlier impressions whose
outcome was known at the impression time: a gift (known when the first gift arrived) or no gift
(known once the 1 h window closed). It is the best score of any point-in-time model that knows
the streamer side perfectly: the reference for how much of the oracle gap a model can close.

Example:
    >>> p = observable_truth("logs/demo")  # doctest: +SKIP
    >>> len(p) == len(read_truth("logs/demo"))  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmbee.simulator.reader import (
    MANIFEST,
    LogBundle,
    LogError,
    _read_csv,
    event_id,
)

__all__ = ["GammaPrior", "observable_truth", "posterior_scores"]

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class GammaPrior:
    """The simulator's prior on a user's gift propensity gamma, discretised.

    Attributes:
        gifter_share: P(gamma > 0).
        sigma: gamma of a gifter is lognormal(0, sigma) ...
        whale_share, whale_boost: ... times `whale_boost` for a `whale_share` of gifters.
        points: quantile points per lognormal component.

    Example:
        >>> g, w = GammaPrior().grid()
        >>> g.shape == w.shape and abs(w.sum() - 1) < 1e-12 and g[0] == 0.0
        True
    """

    gifter_share: float = 0.22
    sigma: float = 1.0
    whale_share: float = 0.015
    whale_boost: float = 10.0
    points: int = 64

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(values (G,), prior weights (G,)): 0, then the lognormal and the whale quantiles."""
        from scipy.stats import norm

        q = norm.ppf((np.arange(self.points) + 0.5) / self.points)
        base = np.exp(self.sigma * q)
        values = np.concatenate([[0.0], base, self.whale_boost * base])
        n = self.points
        g = self.gifter_share
        weights = np.concatenate(
            [
                [1.0 - g],
                np.full(n, g * (1.0 - self.whale_share) / n),
                np.full(n, g * self.whale_share / n),
            ]
        )
        return values, weights


def posterior_scores(
    user: np.ndarray,
    ts: np.ndarray,
    unit_rate: np.ndarray,
    label: np.ndarray,
    resolved_ms: np.ndarray,
    prior: GammaPrior,
) -> np.ndarray:
    """E[1 - exp(-gamma r_i) | outcomes of the user's impressions resolved before ts_i].

    Shapes: every argument (N,) over impressions: user ids, enter times, unit rates r, labels
    (0/1), and the time each label became known (first gift time, or enter + 1 h). Returns (N,).
    """
    values, weights = prior.grid()
    log_prior = np.log(weights)
    out = np.zeros(ts.shape[0])
    label = label.astype(bool)
    order = np.lexsort((ts, user))
    bounds = np.flatnonzero(np.diff(user[order])) + 1
    for idx in np.split(order, bounds):
        known = idx[np.argsort(resolved_ms[idx], kind="stable")]
        rate = values[None, :] * unit_rate[known][:, None]  # (n, G)
        with np.errstate(divide="ignore"):
            log_lik = np.where(
                label[known][:, None], np.log(-np.expm1(-rate)), -rate
            )  # (n, G); log(0) = -inf for gamma = 0 and a gift
        cum = np.vstack([np.zeros(values.size), np.cumsum(log_lik, axis=0)])  # (n + 1, G)
        k = np.searchsorted(resolved_ms[known], ts[idx], side="left")  # resolved strictly before
        post = cum[k] + log_prior  # (m, G)
        post = np.exp(post - post.max(axis=1, keepdims=True))
        post /= post.sum(axis=1, keepdims=True)
        p_gift = -np.expm1(-values[None, :] * unit_rate[idx][:, None])  # (m, G)
        out[idx] = (post * p_gift).sum(axis=1)
    return out


def observable_truth(logdir: LogBundle | Path | str) -> dict[str, float]:
    """Watch (enter) event id -> the observable oracle's probability (see module docstring).

    Needs a simulated log whose truth file has `unit_rate` (written since this module exists);
    raises LogError otherwise.
    """
    root = logdir.root if isinstance(logdir, LogBundle) else Path(logdir)
    manifest = json.loads((root / MANIFEST).read_text())
    truth, bad = _read_csv(root, "truth/impressions.csv")
    if truth is None or bad or "unit_rate" not in truth.columns:
        raise LogError("truth/impressions.csv has no readable unit_rate column (older simulator)")
    clicks, bad_c = _read_csv(root, "click.csv")
    gifts, bad_g = _read_csv(root, "gift.csv")
    if clicks is None or gifts is None or bad_c or bad_g:
        raise LogError("the observable oracle needs clean click.csv and gift.csv")
    cal = manifest["config"]["calibration"]
    prior = GammaPrior(
        gifter_share=float(cal["gifter_share"]),
        sigma=float(cal["gamma_sigma"]),
        whale_share=float(cal["whale_share"]),
        whale_boost=float(cal["whale_gamma_boost"]),
    )
    row = clicks.rows
    user = clicks["user_id"].astype(np.int64)
    streamer = clicks["streamer_id"].astype(np.int64)
    ts = clicks["timestamp"].astype(np.int64)
    rate = np.full(row.size, np.nan)
    by_row = dict(zip(truth["click_row"].tolist(), truth["unit_rate"].tolist(), strict=True))
    rate[:] = [by_row.get(int(r), np.nan) for r in row]
    # first gift of the same user to the same streamer at or after the enter, within 1 h
    n_streamers = int(max(streamer.max(initial=0), gifts["streamer_id"].max(initial=0))) + 1
    gkey = gifts["user_id"].astype(np.int64) * n_streamers + gifts["streamer_id"]
    gsort = np.lexsort((gifts["timestamp"], gkey))
    gk, gt = gkey[gsort], gifts["timestamp"].astype(np.int64)[gsort]
    ckey = user * n_streamers + streamer
    both = np.concatenate([ts, gt])
    t0 = int(both.min()) if both.size else 0
    span = int(both.max()) - t0 + 1 if both.size else 1
    if span >= 1 << 32 or (int(ckey.max(initial=0)) + 1) * (1 << 32) >= 1 << 62:
        raise LogError("log too long or too large for the observable oracle's key packing")
    pos = np.searchsorted(  # first gift of the pair at or after the enter
        gk * (1 << 32) + (gt - t0), ckey * (1 << 32) + (ts - t0), side="left"
    )
    hit = pos < gk.size
    hit[hit] &= gk[pos[hit]] == ckey[hit]
    first = np.where(hit, gt[np.minimum(pos, gk.size - 1)], np.iinfo(np.int64).max)
    label = first <= ts + HOUR_MS
    resolved = np.where(label, first, ts + HOUR_MS)
    ok = np.isfinite(rate)
    scores = np.full(row.size, np.nan)
    scores[ok] = posterior_scores(user[ok], ts[ok], rate[ok], label[ok], resolved[ok], prior)
    log_id = manifest["log_id"]
    return {
        event_id(log_id, "click", int(r)): float(p)
        for r, p in zip(row.tolist(), scores.tolist(), strict=True)
        if np.isfinite(p)
    }
