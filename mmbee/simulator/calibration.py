"""Calibration statistics of a log directory beside KuaiLive's published aggregates.

Computed from the KuaiLive-schema files only (gift.csv, click.csv, streamer.csv / room.csv), so
`mmbee simulate --report` works on a user's own KuaiLive download too.

Definitions (the choices KuaiLive's summary leaves open are explained in docs/simulator.md):
    gift_price_*            over gift rows; p90/p99 are the lower empirical quantiles
                            (the smallest price with at least 90% / 99% of gifts at or below)
    price1_share/2_share    share of gift rows with price exactly 1 / 2
    gini_users              Gini of revenue over users with at least one gift
    gini_streamers          Gini of revenue over streamers with at least one gift
    top1pct_user_revenue_share  revenue share of the top ceil(1%) of gifting users
    click_to_gift           gift rows / click rows
    streamers_without_gift_share  streamers (streamer.csv, else room.csv) with no gift
    peak_hour               local hour (manifest tz, default UTC+8) with the most clicks

Example:
    >>> r = calibration_report(Path("logs/default"))  # doctest: +SKIP
    >>> r.stats["gift_price_median"]  # doctest: +SKIP
    2.0
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmbee.simulator.reader import LogBundle, read_log

__all__ = [
    "Target",
    "TARGETS",
    "CalibrationReport",
    "gini",
    "log_statistics",
    "calibration_report",
    "format_report",
]


@dataclass(frozen=True)
class Target:
    """A KuaiLive aggregate and the tolerance the default preset is tested against."""

    value: float
    lo: float
    hi: float
    note: str

    def ok(self, x: float) -> bool:
        """True when `x` lies within [lo, hi]."""
        return self.lo <= x <= self.hi


_SIDE_FILES = ("mmbee_texts.csv", "mmbee_comment_text.csv", "mmbee_speech.csv", "mmbee_frames.csv")

TARGETS: dict[str, Target] = {
    "gift_price_median": Target(2, 2, 2, "exact"),
    "gift_price_mean": Target(83, 58, 110, "-30% / +33%"),
    "gift_price_p90": Target(88, 66, 99, "the price steps next to 88"),
    "gift_price_p99": Target(1488, 888, 2888, "the price steps around 1488"),
    "price1_share": Target(0.44, 0.40, 0.48, "+-0.04"),
    "price2_share": Target(0.11, 0.08, 0.14, "+-0.03"),
    "gini_users": Target(0.94, 0.91, 0.97, "+-0.03"),
    "gini_streamers": Target(0.93, 0.89, 0.97, "+-0.04"),
    "top1pct_user_revenue_share": Target(0.60, 0.50, 0.70, "+-0.10"),
    "click_to_gift": Target(0.014, 0.010, 0.020, "0.010 .. 0.020"),
    "streamers_without_gift_share": Target(0.90, 0.86, 0.94, "+-0.04"),
    "peak_hour": Target(12, 11, 13, "+-1 h"),
}
"""KuaiLive's published aggregates and the tolerance each is tested with (default preset)."""


def gini(x: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0: equal, -> 1: one holds everything)."""
    v = np.sort(np.asarray(x, dtype=np.float64))
    n = v.size
    if n == 0 or v.sum() == 0:
        return 0.0
    return float((2.0 * np.arange(1, n + 1) - n - 1).dot(v) / (n * v.sum()))


def _lower_quantile(v: np.ndarray, q: float) -> float:
    s = np.sort(v)
    return float(s[max(0, math.ceil(q * s.size) - 1)])


def log_statistics(bundle: LogBundle) -> dict[str, float]:
    """The calibration statistics of a log (keys as in TARGETS, plus a few extras)."""
    gifts = bundle.table("gift.csv")
    clicks = bundle.table("click.csv")
    price = gifts["gift_price"]
    users = gifts["user_id"]
    streamers = gifts["streamer_id"]
    out: dict[str, float] = {}
    if price.size:
        out["gift_price_median"] = float(np.median(price))
        out["gift_price_mean"] = float(price.mean())
        out["gift_price_p90"] = _lower_quantile(price, 0.90)
        out["gift_price_p99"] = _lower_quantile(price, 0.99)
        out["price1_share"] = float((price == 1).mean())
        out["price2_share"] = float((price == 2).mean())
        _, inv = np.unique(users, return_inverse=True)
        rev_u = np.bincount(inv, weights=price)
        _, inv_s = np.unique(streamers, return_inverse=True)
        rev_s = np.bincount(inv_s, weights=price)
        out["gini_users"] = gini(rev_u)
        out["gini_streamers"] = gini(rev_s)
        k = max(1, math.ceil(0.01 * rev_u.size))
        out["top1pct_user_revenue_share"] = float(np.sort(rev_u)[::-1][:k].sum() / rev_u.sum())
    else:
        for key in TARGETS:
            if key not in ("click_to_gift", "streamers_without_gift_share", "peak_hour"):
                out[key] = float("nan")
    n_clicks = len(clicks)
    out["click_to_gift"] = float(price.size / n_clicks) if n_clicks else float("nan")
    if bundle.has("streamer.csv"):
        all_streamers = np.unique(bundle.table("streamer.csv")["streamer_id"])
    elif bundle.has("room.csv"):
        all_streamers = np.unique(bundle.table("room.csv")["streamer_id"])
    else:
        all_streamers = np.unique(np.concatenate([clicks["streamer_id"], streamers]))
    gifted = np.isin(all_streamers, np.unique(streamers))
    out["streamers_without_gift_share"] = (
        float(1.0 - gifted.mean()) if gifted.size else float("nan")
    )
    tz = int((bundle.manifest or {}).get("tz_offset_hours", 8))
    hours = ((clicks["timestamp"] + tz * 3_600_000) // 3_600_000) % 24
    out["peak_hour"] = (
        float(np.bincount(hours, minlength=24).argmax()) if n_clicks else float("nan")
    )
    # extras (not KuaiLive targets)
    out["gifts"] = float(price.size)
    out["clicks"] = float(n_clicks)
    out["gifting_users"] = float(np.unique(users).size)
    return out


@dataclass
class CalibrationReport:
    """Statistics of one log beside the targets."""

    logdir: str
    stats: dict[str, float]

    def within(self) -> dict[str, bool]:
        """Per target key: whether the statistic lies within its tolerance."""
        return {k: t.ok(self.stats.get(k, float("nan"))) for k, t in TARGETS.items()}

    def to_json(self) -> str:
        """One JSON object: the target keys with the generated values (then extras)."""
        body: dict[str, Any] = {k: self.stats.get(k) for k in TARGETS}
        body.update({k: v for k, v in self.stats.items() if k not in TARGETS})
        return json.dumps(body, sort_keys=False)


def calibration_report(logdir: Path | str) -> CalibrationReport:
    """Read the KuaiLive files of `logdir` and compute its calibration statistics."""
    bundle = read_log(logdir, skip=("like.csv", "comment.csv", *_SIDE_FILES))
    return CalibrationReport(str(logdir), log_statistics(bundle))


def format_report(report: CalibrationReport) -> str:
    """A plain-text table: statistic, KuaiLive target, tolerance, generated value, ok."""
    rows = [f"calibration of {report.logdir}", ""]
    rows.append(f"{'statistic':32s} {'target':>10s} {'tolerance':>18s} {'generated':>12s}  ok")
    for key, t in TARGETS.items():
        v = report.stats.get(key, float("nan"))
        tol = f"[{t.lo:g}, {t.hi:g}]"
        rows.append(f"{key:32s} {t.value:>10g} {tol:>18s} {v:>12.4g}  {'yes' if t.ok(v) else 'NO'}")
    rows.append("")
    rows.append(
        f"clicks {report.stats.get('clicks', 0):.0f}, gifts {report.stats.get('gifts', 0):.0f}, "
        f"gifting users {report.stats.get('gifting_users', 0):.0f}"
    )
    return "\n".join(rows)
