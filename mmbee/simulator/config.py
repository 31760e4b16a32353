"""Configuration of a simulated world: sizes, time span, calibration knobs, and named presets.

Example:
    >>> cfg = preset("tiny")
    >>> cfg.n_users, cfg.n_streamers, cfg.days
    (200, 40, 1)
    >>> preset("default", days=2).days
    2
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import date
from typing import Any

import numpy as np

__all__ = ["PriceTable", "Calibration", "WorldConfig", "PRESETS", "preset"]


@dataclass(frozen=True)
class PriceTable:
    """The discrete gift prices (KuaiLive `gift_price` units) and their probabilities per tier.

    Tier 0 is an ordinary gifter, tier 1 a big spender, tier 2 a whale; a gift's price is drawn
    from its sender's tier row. The mix over all gifts is what `mmbee simulate --report` checks
    against KuaiLive's published price quantiles.
    """

    prices: tuple[int, ...] = (
        1, 2, 5, 6, 10, 20, 30, 52, 66, 88, 99, 188, 199, 288, 328, 520, 666, 888, 1288,
        1488, 1888, 2888, 5200, 8888,
    )  # fmt: skip
    tier_probs: tuple[tuple[float, ...], ...] = (
        (
            0.47, 0.12, 0.08, 0.05, 0.08, 0.04, 0.03, 0.02, 0.02, 0.04, 0.005, 0.003,
            0.002, 0.001, 0.001, 0.0005, 0.0003, 0.0002, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ),
        (
            0.20, 0.05, 0.05, 0.04, 0.08, 0.07, 0.06, 0.06, 0.06, 0.10, 0.05, 0.04,
            0.03, 0.025, 0.02, 0.02, 0.01, 0.01, 0.006, 0.006, 0.002, 0.001, 0.0, 0.0,
        ),
        (
            0.10, 0.03, 0.02, 0.02, 0.03, 0.03, 0.03, 0.03, 0.03, 0.07, 0.05, 0.05,
            0.05, 0.04, 0.04, 0.05, 0.04, 0.04, 0.04, 0.08, 0.03, 0.035, 0.025, 0.01,
        ),
    )  # fmt: skip

    def cdf(self) -> np.ndarray:
        """Cumulative probabilities per tier, shape (n_tiers, n_prices), last column exactly 1."""
        p = np.asarray(self.tier_probs, dtype=np.float64)
        c = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
        c[:, -1] = 1.0
        return c


@dataclass(frozen=True)
class Calibration:
    """Knobs of the generative model, tuned so the `default` preset matches KuaiLive's aggregates.

    Rates are per user-day or per impression; times in seconds or minutes as named.
    """

    visits_per_user_day: float = 22.0
    activity_sigma: float = 0.9
    gifter_share: float = 0.22
    gamma_sigma: float = 1.0
    big_spender_share: float = 0.08
    whale_share: float = 0.015
    whale_gamma_boost: float = 10.0
    base_gift_rate: float = 0.0014
    extra_gifts_mean: tuple[float, float, float] = (0.16, 0.85, 9.0)
    extra_gift_span_s: tuple[int, int, int] = (300, 900, 1800)
    giftable_share: float = 0.20
    appeal_sigma: float = 1.2
    appeal_popularity_exponent: float = 0.5
    non_giftable_appeal: float = 0.003
    popularity_sigma: float = 1.5
    community_watch_share: float = 0.35
    community_gift_boost: float = 8.0
    neighbour_weight: float = 0.35
    idol_gift_boost: float = 8.0
    idol_concentration: float = 1.2
    star_follower_min_tier: int = 2
    fan_attend_prob: tuple[float, float, float] = (0.15, 0.6, 0.85)
    fan_delay_mean_min: float = 8.0
    fan_watch_median_s: float = 600.0
    style_beta: float = 0.5
    live_prob_min: float = 0.25
    live_prob_max: float = 0.8
    second_session_prob: float = 0.25
    session_median_min: float = 100.0
    session_sigma: float = 0.6
    watch_median_s: float = 60.0
    watch_sigma: float = 1.2
    first_gift_mean_s: float = 150.0
    comments_per_min: float = 0.25
    likes_per_min: float = 0.6
    normal_run_mean_segments: float = 12.0
    special_run_mean_segments: float = 8.0
    frame_noise: float = 0.45
    price_table: PriceTable = field(default_factory=PriceTable)


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and time span of one simulated world (the seed is passed separately).

    Attributes:
        n_users, n_streamers: population sizes.
        days: simulated days, starting at local midnight of `start_date`.
        n_communities: user communities (each favours an overlapping set of streamers).
        start_date: ISO date of the first day (KuaiLive covers 2025-05-05 .. 2025-05-25).
        tz_offset_hours: the local time zone of `p_date` and of the daily activity curve.
        segment_ms: content segment length; frames and speech come one per segment.
        calibration: the generative model's knobs.
    """

    n_users: int
    n_streamers: int
    days: int = 1
    n_communities: int = 40
    start_date: str = "2025-05-05"
    tz_offset_hours: int = 8
    segment_ms: int = 30_000
    calibration: Calibration = field(default_factory=Calibration)

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_streamers < 1 or self.days < 1:
            raise ValueError("n_users, n_streamers and days must be >= 1")
        if not 1 <= self.n_communities <= self.n_users:
            raise ValueError("n_communities must be in 1..n_users")
        if self.segment_ms <= 0 or 60_000 % self.segment_ms:
            raise ValueError("segment_ms must divide one minute (60000 ms)")
        date.fromisoformat(self.start_date)

    @property
    def start_ms(self) -> int:
        """Epoch milliseconds of local midnight of `start_date`."""
        d = date.fromisoformat(self.start_date)
        days = (d - date(1970, 1, 1)).days
        return (days * 86_400 - self.tz_offset_hours * 3600) * 1000

    @property
    def end_ms(self) -> int:
        """Epoch milliseconds where the simulated span ends (exclusive)."""
        return self.start_ms + self.days * 86_400_000

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the manifest stores it)."""
        return asdict(self)


PRESETS: dict[str, WorldConfig] = {
    "tiny": WorldConfig(n_users=200, n_streamers=40, days=1, n_communities=4),
    "demo": WorldConfig(n_users=1500, n_streamers=200, days=3, n_communities=10),
    "default": WorldConfig(n_users=10_000, n_streamers=2_000, days=1, n_communities=40),
}
"""`tiny` for tests (well under a second), `demo` for `make demo`, `default` = calibration scale."""


def preset(name: str, **overrides: Any) -> WorldConfig:
    """The named preset with field overrides (e.g. `days=3`); unknown names list the presets."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
