"""The seeded generative model of a live-streaming world, vectorised with numpy.

`generate_world(config, seed)` returns a `World`: plain numpy arrays of streamers, users,
live sessions, content segments with their hidden moment state, impressions (clicks) with
their exact gift probability, gifts, comments, likes, frames and speech. Nothing reads a wall
clock; the same config and seed give the same arrays bit for bit. docs/simulator.md explains
the model; in short, for impression i (user u enters streamer s's room at time t):

    lambda_i = base * gamma_u * appeal_s * (1 + boost_c * w(community_u, s))
               * (idol_boost if s is u's idol) * exp(beta * <style_u, style_s>)
               * GIFT_MULTIPLIER[moment_s(t)]
    p_i = 1 - exp(-lambda_i)

The impression sends its first gift with probability p_i, at t + delta with 0 < delta < 1 h and
before the session ends, and the viewer stays at least until its last gift. A viewer watches one
room at a time and never re-enters a room within 1 h of entering it, so a gift within 1 h of an
impression can only come from that impression: P(label_i = 1) = p_i exactly.

Example:
    >>> from mmbee.simulator.config import preset
    >>> w = generate_world(preset("tiny"), seed=0)
    >>> bool((w.gift_ts > w.click_ts[w.gift_click]).all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from mmbee.simulator.config import Calibration, WorldConfig
from mmbee.simulator.content import (
    CATEGORIES,
    CATEGORY_SHARE,
    GIFT_MULTIPLIER,
    LATENT_DIM,
    N_STYLE_CLUSTERS,
    SIGNAL_MODALITY,
    SPECIAL_MOMENT_MIX,
    STYLE_DIM,
    frame_tables,
    quantize_latents,
    text_catalogue,
)

__all__ = ["World", "generate_world", "diurnal_weights", "HOUR_MS"]

HOUR_MS = 3_600_000
MIN_MS = 60_000
DAY_MIN = 1440
N_CAT = len(CATEGORIES)
_NEVER = np.iinfo(np.int64).min // 2
_VISUAL = np.array([SIGNAL_MODALITY[c] == "visual" for c in CATEGORIES])
_SPEECH = np.array([SIGNAL_MODALITY[c] == "speech" for c in CATEGORIES])
_COMMENTS = np.array([SIGNAL_MODALITY[c] == "comments" for c in CATEGORIES])


@dataclass
class World:
    """A generated world: arrays indexed by entity / event number (int64 unless noted).

    Ids are array indices: user u, streamer s, session (live room) r. Event arrays are sorted by
    time. `click_p` is the exact P(gift by that user to that streamer within 1 h of the click);
    `click_moment` / `segment_moment` index `content.MOMENTS` and are hidden from models.
    `click_unit_rate` is lambda_i with the user's hidden propensity gamma_u set to 1 (so
    p = 1 - exp(-gamma_u * unit_rate)): what an evaluator needs to build an oracle that does not
    know gamma_u.
    """

    config: WorldConfig
    seed: int
    # users (U,)
    user_community: np.ndarray
    user_gamma: np.ndarray  # float64 gift propensity (0: never gifts)
    user_tier: np.ndarray  # 0 ordinary, 1 big spender, 2 whale (price tier at the idol)
    user_idol: np.ndarray  # the user's favourite streamer
    # streamers (S,)
    streamer_category: np.ndarray
    streamer_community: np.ndarray
    streamer_style: np.ndarray  # (S, STYLE_DIM) float64
    streamer_style_cluster: np.ndarray
    streamer_popularity: np.ndarray  # float64
    streamer_appeal: np.ndarray  # float64
    streamer_first_live_ms: np.ndarray
    # sessions (R,), sorted by (start, streamer); the index is the live id
    session_streamer: np.ndarray
    session_start: np.ndarray
    session_end: np.ndarray
    session_title: np.ndarray
    session_seg_offset: np.ndarray
    # segments (G,), session-major
    segment_session: np.ndarray
    segment_start: np.ndarray
    segment_moment: np.ndarray
    # clicks (N,), sorted by (ts, user, streamer)
    click_user: np.ndarray
    click_session: np.ndarray
    click_ts: np.ndarray
    click_watch_ms: np.ndarray
    click_p: np.ndarray  # float64
    click_unit_rate: np.ndarray  # float64: lambda_i / gamma_u, the rate at unit propensity
    click_moment: np.ndarray
    # gifts (K,)
    gift_user: np.ndarray
    gift_session: np.ndarray
    gift_ts: np.ndarray
    gift_price: np.ndarray
    gift_click: np.ndarray
    # comments (C,)
    comment_user: np.ndarray
    comment_session: np.ndarray
    comment_ts: np.ndarray
    comment_text: np.ndarray  # text id in content.TextCatalogue
    # likes (Lk,)
    like_user: np.ndarray
    like_session: np.ndarray
    like_ts: np.ndarray
    # frames (F,), one per segment
    frame_segment: np.ndarray
    frame_ts: np.ndarray
    frame_latent: np.ndarray  # (F, LATENT_DIM) int8 codes
    # speech (Sp,), one per segment
    speech_segment: np.ndarray
    speech_start: np.ndarray
    speech_end: np.ndarray
    speech_text: np.ndarray  # text id in content.TextCatalogue

    @property
    def n_users(self) -> int:
        """Number of users."""
        return int(self.user_community.shape[0])

    @property
    def n_streamers(self) -> int:
        """Number of streamers."""
        return int(self.streamer_category.shape[0])


def diurnal_weights(kind: str = "viewer") -> np.ndarray:
    """Relative activity per local minute of the day, shape (1440,), summing to 1.

    `viewer`: when users open rooms (peak at noon, a smaller one in the evening); `streamer`:
    when sessions start (earlier, so that supply covers the noon peak).
    """
    h = (np.arange(DAY_MIN) + 0.5) / 60.0

    def bump(mu: float, sd: float) -> np.ndarray:
        d = np.minimum(np.abs(h - mu), 24.0 - np.abs(h - mu))
        return np.exp(-0.5 * (d / sd) ** 2)

    if kind == "viewer":
        w = 0.08 + bump(12.5, 2.2) + 0.6 * bump(20.5, 1.8)
    elif kind == "streamer":
        w = 0.05 + bump(10.0, 2.0) + 0.7 * bump(18.5, 1.6)
    else:
        raise ValueError(f"unknown diurnal kind {kind!r}")
    return w / w.sum()


class _GroupSampler:
    """Draw one item per query among the items of a group, proportionally to their weights.

    Example:
        >>> gs = _GroupSampler(np.array([0, 0, 1]), np.array([1.0, 3.0, 2.0]), 2)
        >>> gs.sample(np.array([1]), np.array([0.5])).tolist()
        [2]
    """

    def __init__(self, keys: np.ndarray, weights: np.ndarray, n_keys: int) -> None:
        order = np.argsort(keys, kind="stable")
        self.items = order
        k = keys[order]
        self.cum = np.cumsum(weights[order])
        self.lo = np.searchsorted(k, np.arange(n_keys), side="left")
        self.hi = np.searchsorted(k, np.arange(n_keys), side="right")
        cum0 = np.concatenate([[0.0], self.cum])
        self.base = cum0[self.lo]
        self.total = cum0[self.hi] - self.base

    def sample(self, keys: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Item index for each query key (its group must be non-empty); `u` uniform in [0, 1)."""
        target = self.base[keys] + u * self.total[keys]
        idx = np.searchsorted(self.cum, target, side="right")
        idx = np.clip(idx, self.lo[keys], self.hi[keys] - 1)
        return self.items[idx]


def _lognormal(rng: np.random.Generator, median: float, sigma: float, n: int) -> np.ndarray:
    return median * np.exp(sigma * rng.standard_normal(n))


def _stratified_normal(rng: np.random.Generator, n: int) -> np.ndarray:
    """The n standard-normal quantiles at (i + 1/2) / n in random order: heavy-tailed
    attributes drawn this way keep their shape but vary far less between seeds."""
    nd = NormalDist()
    q = np.array([nd.inv_cdf((i + 0.5) / n) for i in range(n)]) if n else np.zeros(0)
    return q[rng.permutation(n)]


def _exact_share(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """A random mask with exactly round(share * n) True values."""
    mask = np.zeros(n, bool)
    mask[rng.permutation(n)[: int(round(share * n))]] = True
    return mask


def _categorical(rng: np.random.Generator, cdf: np.ndarray) -> np.ndarray:
    """One draw per row of a row-wise CDF (N, K) -> (N,)."""
    u = rng.random((cdf.shape[0], 1))
    return np.minimum((u >= cdf).sum(axis=1), cdf.shape[1] - 1)


def _ranks(group: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values (input sorted by group)."""
    if group.size == 0:
        return np.zeros(0, np.int64)
    new = np.concatenate([[True], group[1:] != group[:-1]])
    starts = np.flatnonzero(new)
    return np.arange(group.size) - starts[np.cumsum(new) - 1]


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, position) for `counts[i]` consecutive items owned by each i."""
    owner = np.repeat(np.arange(counts.size), counts)
    pos = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, pos


def _pick(rng: np.random.Generator, pools: list[np.ndarray], which: np.ndarray) -> np.ndarray:
    """One uniform element of `pools[which[i]]` for each i (pools are contiguous ranges)."""
    starts = np.array([p[0] if p.size else 0 for p in pools], np.int64)
    sizes = np.array([p.size for p in pools], np.int64)
    return starts[which] + np.floor(rng.random(which.size) * sizes[which]).astype(np.int64)


def _sessions(
    cal: Calibration, rng: np.random.Generator, popularity: np.ndarray, days: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Live sessions as (streamer, start minute, end minute), sorted by (start, streamer)."""
    S = popularity.size
    n_slots = days * DAY_MIN
    pop_rank = np.argsort(np.argsort(popularity, kind="stable"), kind="stable") / max(S - 1, 1)
    live_p = cal.live_prob_min + (cal.live_prob_max - cal.live_prob_min) * pop_rank
    s_idx, d_idx = np.nonzero(rng.random((S, days)) < live_p[:, None])
    n = s_idx.size
    start_cdf = np.cumsum(diurnal_weights("streamer"))
    a1 = np.minimum(np.searchsorted(start_cdf, rng.random(n)), DAY_MIN - 1) + d_idx * DAY_MIN

    def duration() -> np.ndarray:
        d = _lognormal(rng, cal.session_median_min, cal.session_sigma, n)
        return np.clip(np.rint(d), 20, 360).astype(np.int64)

    b1 = a1 + duration()
    two = rng.random(n) < cal.second_session_prob
    a2 = b1 + rng.integers(30, 181, n)
    b2 = a2 + duration()
    ses_s = np.concatenate([s_idx, s_idx[two]])
    ses_a = np.concatenate([a1, a2[two]])
    ses_b = np.minimum(np.concatenate([b1, b2[two]]), n_slots)
    keep = ses_b - ses_a >= 20
    ses_s, ses_a, ses_b = ses_s[keep], ses_a[keep], ses_b[keep]
    # a streamer is live once at a time: drop sessions overlapping the previous kept one
    order = np.lexsort((ses_a, ses_s))
    ses_s, ses_a, ses_b = ses_s[order], ses_a[order], ses_b[order]
    keep = np.ones(ses_s.size, bool)
    while True:
        idx = np.flatnonzero(keep)
        bad = (ses_s[idx[1:]] == ses_s[idx[:-1]]) & (ses_a[idx[1:]] < ses_b[idx[:-1]])
        if not bad.any():
            break
        keep[idx[1:][bad]] = False
    ses_s, ses_a, ses_b = ses_s[keep], ses_a[keep], ses_b[keep]
    order = np.lexsort((ses_s, ses_a))
    return ses_s[order], ses_a[order], ses_b[order]


def _moments(
    cal: Calibration, rng: np.random.Generator, seg_session: np.ndarray, session_cat: np.ndarray
) -> np.ndarray:
    """Hidden moment per segment: alternating normal / special runs (geometric lengths); a
    special run's type is drawn from its category's `SPECIAL_MOMENT_MIX` row."""
    G = seg_session.size
    R = max(int(session_cat.size), 1)
    lengths: list[np.ndarray] = []
    total = 0
    while total < G or not lengths:
        n = max(64, (G - total) // 8)
        normal = rng.geometric(1.0 / cal.normal_run_mean_segments, n)
        special = rng.geometric(1.0 / cal.special_run_mean_segments, n)
        pair = np.stack([normal, special], axis=1).reshape(-1)
        lengths.append(pair)
        total += int(pair.sum())
    run_end = np.cumsum(np.concatenate(lengths)) - int(rng.integers(0, 16))
    seg_run = np.searchsorted(run_end, np.arange(G), side="right")
    # a run that straddles two sessions gets a type per session
    uniq, inv = np.unique(seg_run.astype(np.int64) * R + seg_session, return_inverse=True)
    mix_cdf = np.cumsum(SPECIAL_MOMENT_MIX, axis=1)
    kind = _categorical(rng, mix_cdf[session_cat[uniq % R]]) + 1
    return np.where(seg_run % 2 == 1, kind[inv], 0).astype(np.int64)


def generate_world(config: WorldConfig, seed: int) -> World:
    """Generate a world from `config` and `seed` (deterministic; see the module docstring)."""
    cal = config.calibration
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(9)]
    r_str, r_usr, r_ses, r_mom, r_vis, r_gift, r_cmt, r_like, r_fan = rngs
    S, U, K, D = config.n_streamers, config.n_users, config.n_communities, config.days
    seg_ms = config.segment_ms
    t0 = config.start_ms
    n_slots = D * DAY_MIN
    catalogue = text_catalogue()

    # ---- communities and streamers -----------------------------------------------------------
    comm_profile = r_str.dirichlet(np.full(N_CAT, 0.6), size=K) * 0.7 + CATEGORY_SHARE * 0.3
    category = r_str.choice(N_CAT, size=S, p=CATEGORY_SHARE)
    home_w = comm_profile[:, category].T  # (S, K): communities that like the category
    s_comm = _categorical(r_str, np.cumsum(home_w / home_w.sum(1, keepdims=True), axis=1))
    style = r_str.standard_normal((S, STYLE_DIM))
    style /= np.linalg.norm(style, axis=1, keepdims=True)
    protos = np.random.default_rng(7).standard_normal((N_STYLE_CLUSTERS, STYLE_DIM))
    style_cluster = np.argmax(style @ protos.T, axis=1)
    popularity = np.exp(cal.popularity_sigma * _stratified_normal(r_str, S))
    appeal = popularity**cal.appeal_popularity_exponent * np.exp(
        cal.appeal_sigma * _stratified_normal(r_str, S)
    )
    # only the most appealing streamers draw real gifting; the rest get a trickle
    n_giftable = int(round(cal.giftable_share * S))
    giftable = np.zeros(S, bool)
    giftable[np.argsort(-appeal, kind="stable")[:n_giftable]] = True
    appeal = appeal * np.where(giftable, 1.0, cal.non_giftable_appeal)
    first_live = t0 - r_str.integers(30, 2000, S) * 86_400_000
    # community membership: home (weight 1) and the two ring neighbours (overlapping sets)
    n_memb = 3 if K >= 3 else 1
    memb_s = np.tile(np.arange(S), n_memb)
    memb_k = np.concatenate([s_comm, (s_comm + 1) % K, (s_comm - 1) % K][:n_memb])
    memb_w = np.concatenate([np.ones(S), np.full(2 * S, cal.neighbour_weight)])[: n_memb * S]

    # ---- users ------------------------------------------------------------------------------
    u_comm = r_usr.integers(0, K, U)
    cat_pref = r_usr.standard_gamma(comm_profile[u_comm] * 4.0 + 0.05)  # Dirichlet rows
    cat_pref /= cat_pref.sum(axis=1, keepdims=True)
    u_style = r_usr.standard_normal((U, STYLE_DIM))
    u_style /= np.linalg.norm(u_style, axis=1, keepdims=True)
    activity = _lognormal(r_usr, 1.0, cal.activity_sigma, U)
    activity *= cal.visits_per_user_day / activity.mean()
    is_gifter = r_usr.random(U) < cal.gifter_share
    gamma = np.exp(cal.gamma_sigma * r_usr.standard_normal(U)) * is_gifter
    tu = r_usr.random(U)
    tier = np.where(
        tu < cal.whale_share, 2, np.where(tu < cal.whale_share + cal.big_spender_share, 1, 0)
    )
    tier = np.where(is_gifter, tier, 0)
    gamma = gamma * np.where(tier == 2, cal.whale_gamma_boost, 1.0)
    comment_rate = _lognormal(r_usr, cal.comments_per_min, 1.0, U)
    like_rate = _lognormal(r_usr, cal.likes_per_min, 1.0, U)
    suffix_pref = r_usr.integers(0, catalogue.n_suffixes, U)
    # idol: a favourite streamer in the community's set; spenders follow the platform's stars
    idol_w = (popularity[memb_s] * appeal[memb_s] * memb_w) ** cal.idol_concentration
    idol = memb_s[_GroupSampler(memb_k, idol_w, K).sample(u_comm, r_usr.random(U))]
    star_w = (popularity * appeal) ** cal.idol_concentration
    star = np.minimum(np.searchsorted(np.cumsum(star_w) / star_w.sum(), r_usr.random(U)), S - 1)
    idol = np.where(tier >= cal.star_follower_min_tier, star, idol)

    # ---- live sessions, segments, hidden moments ---------------------------------------------
    ses_s, ses_a, ses_b = _sessions(cal, r_ses, popularity, D)
    R = ses_s.size
    session_start = t0 + ses_a * MIN_MS
    session_end = t0 + ses_b * MIN_MS
    title = category[ses_s] * 100 + r_ses.integers(0, 20, R)
    n_seg = (ses_b - ses_a) * (MIN_MS // seg_ms)
    seg_offset = np.concatenate([[0], np.cumsum(n_seg)[:-1]]).astype(np.int64)
    seg_session, seg_pos = _expand(n_seg)
    seg_start = session_start[seg_session] + seg_pos * seg_ms
    seg_moment = _moments(cal, r_mom, seg_session, category[ses_s])

    # ---- browsing visits: a diurnal Poisson stream per user; room by community or category ----
    v_user = np.repeat(np.arange(U), r_usr.poisson(activity * D))
    N0 = v_user.size
    vcdf = np.cumsum(diurnal_weights("viewer"))
    v_slot = r_usr.integers(0, D, N0) * DAY_MIN + np.minimum(
        np.searchsorted(vcdf, r_usr.random(N0)), DAY_MIN - 1
    )
    v_ts = t0 + v_slot * MIN_MS + r_usr.integers(0, MIN_MS, N0)
    # enterable (minute slot, session): every minute of a session but its last
    o_ses, o_pos = _expand(ses_b - ses_a - 1)
    o_slot = ses_a[o_ses] + o_pos
    o_str = ses_s[o_ses]
    cat_sampler = _GroupSampler(
        o_slot * N_CAT + category[o_str], popularity[o_str], n_slots * N_CAT
    )
    mass = cat_sampler.total.reshape(n_slots, N_CAT)
    m_cnt = np.full(S, n_memb)
    c_open, c_j = _expand(m_cnt[o_str])
    c_memb = c_j * S + o_str[c_open]
    com_sampler = _GroupSampler(
        o_slot[c_open] * K + memb_k[c_memb],
        popularity[o_str[c_open]] * memb_w[c_memb],
        n_slots * K,
    )
    com_key = v_slot * K + u_comm[v_user]
    use_com = (r_usr.random(N0) < cal.community_watch_share) & (com_sampler.total[com_key] > 0)
    cw = cat_pref[v_user] * mass[v_slot]  # (N0, N_CAT)
    cw_tot = cw.sum(axis=1)
    ok = use_com | (cw_tot > 0)
    v_cat = _categorical(r_usr, np.cumsum(cw, axis=1) / np.where(cw_tot > 0, cw_tot, 1.0)[:, None])
    u_pick = r_usr.random(N0)
    v_open = np.zeros(N0, np.int64)
    v_open[use_com] = c_open[com_sampler.sample(com_key[use_com], u_pick[use_com])]
    gen = ~use_com & ok
    v_open[gen] = cat_sampler.sample(v_slot[gen] * N_CAT + v_cat[gen], u_pick[gen])
    b_user, b_ts, b_ses = v_user[ok], v_ts[ok], o_ses[v_open[ok]]

    # ---- fan visits: fans come when their idol goes live ---------------------------------------
    fans = np.argsort(idol, kind="stable")
    fan_lo = np.searchsorted(idol[fans], np.arange(S), side="left")
    fan_n = np.bincount(idol, minlength=S)
    f_ses, f_j = _expand(fan_n[ses_s])
    f_user = fans[fan_lo[ses_s[f_ses]] + f_j]
    attend = r_fan.random(f_user.size) < np.asarray(cal.fan_attend_prob)[tier[f_user]]
    f_ses, f_user = f_ses[attend], f_user[attend]
    f_delay = np.floor(r_fan.exponential(cal.fan_delay_mean_min * MIN_MS, f_ses.size)).astype(
        np.int64
    )
    f_ts = session_start[f_ses] + f_delay
    f_ok = f_ts < session_end[f_ses] - MIN_MS
    f_user, f_ses, f_ts = f_user[f_ok], f_ses[f_ok], f_ts[f_ok]

    v_user = np.concatenate([b_user, f_user])
    v_ts = np.concatenate([b_ts, f_ts])
    v_ses = np.concatenate([b_ses, f_ses])
    is_fan = np.concatenate([np.zeros(b_user.size, bool), np.ones(f_user.size, bool)])
    v_str = ses_s[v_ses]
    N1 = v_user.size

    # ---- gift probability, decision, gift times, watch time ----------------------------------
    v_moment = seg_moment[seg_offset[v_ses] + (v_ts - session_start[v_ses]) // seg_ms]
    ring = np.abs(u_comm[v_user] - s_comm[v_str])
    ring = np.minimum(ring, K - ring)
    w_comm = np.where(ring == 0, 1.0, np.where(ring == 1, cal.neighbour_weight, 0.0))
    at_idol = idol[v_user] == v_str
    lam = (
        cal.base_gift_rate
        * gamma[v_user]
        * appeal[v_str]
        * (1.0 + cal.community_gift_boost * w_comm)
        * np.where(at_idol, cal.idol_gift_boost, 1.0)
        * np.exp(cal.style_beta * np.einsum("ij,ij->i", u_style[v_user], style[v_str]))
        * GIFT_MULTIPLIER[v_moment]
    )
    unit_rate = (  # the same rate at gamma_u = 1 (for oracles that do not know gamma_u)
        cal.base_gift_rate
        * appeal[v_str]
        * (1.0 + cal.community_gift_boost * w_comm)
        * np.where(at_idol, cal.idol_gift_boost, 1.0)
        * np.exp(cal.style_beta * np.einsum("ij,ij->i", u_style[v_user], style[v_str]))
        * GIFT_MULTIPLIER[v_moment]
    )
    p = -np.expm1(-lam)
    gifts_now = r_gift.random(N1) < p
    room_left = session_end[v_ses] - v_ts  # >= 1 min by construction
    hi = np.minimum(HOUR_MS - 1, room_left - 2_000).astype(np.float64)
    tau = cal.first_gift_mean_s * 1000.0
    ug = r_gift.random(N1)  # truncated exponential on (1 s, hi)
    delta = np.floor(1_000.0 - tau * np.log1p(-ug * -np.expm1(-(hi - 1_000.0) / tau)))
    delta = np.clip(delta.astype(np.int64), 1_000, hi.astype(np.int64))
    v_tier = np.where(at_idol, tier[v_user], 0)  # spenders spend big on their idol only
    n_extra = r_gift.poisson(np.asarray(cal.extra_gifts_mean)[v_tier]) * gifts_now
    span = np.asarray(cal.extra_gift_span_s, np.int64)[v_tier] * 1000
    last_gift = np.where(n_extra > 0, np.minimum(delta + span, room_left - 1_000), delta)
    median_watch = np.where(is_fan, cal.fan_watch_median_s, cal.watch_median_s) * 1000.0
    base_watch = np.maximum(
        1_000, np.rint(median_watch * np.exp(cal.watch_sigma * r_gift.standard_normal(N1)))
    )
    base_watch = base_watch.astype(np.int64)
    watch = np.where(gifts_now, last_gift + np.maximum(1_000, base_watch // 2), base_watch)
    watch = np.minimum(watch, room_left)

    # ---- one room at a time; no re-entry of a room within 1 h of entering it -----------------
    order = np.lexsort((v_ts, v_user))
    rank = _ranks(v_user[order])
    pair = np.unique(v_user * S + v_str, return_inverse=True)[1]
    last_leave = np.full(U, _NEVER)
    last_enter = np.full(int(pair.max(initial=-1)) + 1, _NEVER)
    keep = np.zeros(N1, bool)
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max(initial=-1)) + 2))
    for k in range(bounds.size - 1):
        idx = order[by_rank[bounds[k] : bounds[k + 1]]]  # at most one visit per user
        fine = (v_ts[idx] >= last_leave[v_user[idx]]) & (
            v_ts[idx] >= last_enter[pair[idx]] + HOUR_MS
        )
        idx = idx[fine]
        keep[idx] = True
        last_leave[v_user[idx]] = v_ts[idx] + watch[idx]
        last_enter[pair[idx]] = v_ts[idx]
    sel = np.flatnonzero(keep)
    sel = sel[np.lexsort((v_str[sel], v_user[sel], v_ts[sel]))]
    c_user, c_ses, c_ts, c_watch = v_user[sel], v_ses[sel], v_ts[sel], watch[sel]
    c_gift, c_delta, c_extra, c_last = gifts_now[sel], delta[sel], n_extra[sel], last_gift[sel]
    N = sel.size

    # ---- gifts: the first at delta, extras between it and the last gift time ----------------
    gi = np.flatnonzero(c_gift)
    g_click = np.repeat(gi, 1 + c_extra[gi])
    first = _ranks(g_click) == 0
    g_lo, g_hi = c_delta[g_click], c_last[g_click]
    g_off = np.where(first, g_lo, g_lo + 1 + np.floor(r_gift.random(g_click.size) * (g_hi - g_lo)))
    g_ts = c_ts[g_click] + g_off.astype(np.int64)
    cdf = cal.price_table.cdf()
    prices = np.asarray(cal.price_table.prices, np.int64)
    g_tier = v_tier[sel][g_click]
    g_price = prices[
        np.minimum((r_gift.random(g_click.size)[:, None] >= cdf[g_tier]).sum(1), prices.size - 1)
    ]
    o = np.lexsort((g_click, g_ts))
    g_click, g_ts, g_price = g_click[o], g_ts[o], g_price[o]

    # ---- comments and likes: Poisson in the watch time, text by category (and moment) --------
    minutes = c_watch / MIN_MS
    m_click = np.repeat(np.arange(N), r_cmt.poisson(comment_rate[c_user] * minutes))
    m_ts = (
        c_ts[m_click]
        + 1
        + np.floor(r_cmt.random(m_click.size) * (c_watch[m_click] - 1)).astype(np.int64)
    )
    m_ses = c_ses[m_click]
    m_cat = category[ses_s[m_ses]]
    m_moment = seg_moment[seg_offset[m_ses] + (m_ts - session_start[m_ses]) // seg_ms]
    m_tpl = _pick(r_cmt, catalogue.comment_category_pool, m_cat)
    about = _COMMENTS[m_cat] & (m_moment > 0) & (r_cmt.random(m_click.size) < 0.7)
    m_tpl[about] = _pick(r_cmt, catalogue.comment_moment_pool, m_moment[about])
    m_suffix = np.where(
        r_cmt.random(m_click.size) < 0.7,
        suffix_pref[c_user[m_click]],
        r_cmt.integers(0, catalogue.n_suffixes, m_click.size),
    )
    m_text = catalogue.comment_id(m_tpl, m_suffix)
    o = np.lexsort((m_click, m_ts))
    m_click, m_ts, m_text = m_click[o], m_ts[o], m_text[o]

    l_click = np.repeat(np.arange(N), r_like.poisson(like_rate[c_user] * minutes))
    l_ts = (
        c_ts[l_click]
        + 1
        + np.floor(r_like.random(l_click.size) * (c_watch[l_click] - 1)).astype(np.int64)
    )
    o = np.lexsort((l_click, l_ts))
    l_click, l_ts = l_click[o], l_ts[o]

    # ---- frames and speech: one of each per segment -------------------------------------------
    G = seg_session.size
    seg_str = ses_s[seg_session]
    seg_cat = category[seg_str]
    cat_dir, style_dir, mom_dir = frame_tables()
    latent = (
        cat_dir[seg_cat]
        + style[seg_str] @ style_dir
        + np.where(_VISUAL[seg_cat][:, None], mom_dir[seg_moment], 0.0)
        + cal.frame_noise * r_vis.standard_normal((G, LATENT_DIM))
    )
    f_ts = seg_start + r_vis.integers(seg_ms // 4, 3 * seg_ms // 4, G)
    sp_start = seg_start + r_vis.integers(0, seg_ms // 10, G)
    sp_sent = _pick(r_vis, catalogue.speech_category_pool, seg_cat)
    says = _SPEECH[seg_cat] & (seg_moment > 0) & (r_vis.random(G) < 0.9)
    sp_sent[says] = _pick(r_vis, catalogue.speech_moment_pool, seg_moment[says])
    catch = np.where(r_vis.random(G) < 0.3, style_cluster[seg_str], -1)
    sp_text = catalogue.speech_id(sp_sent, catch)
    n_words = np.array([len(t.split()) for t in catalogue.texts], np.int64)[sp_text]
    sp_end = np.minimum(sp_start + 400 * n_words + 500, seg_start + seg_ms - 1)
    segs = np.arange(G)
    fo = np.lexsort((segs, f_ts))
    so = np.lexsort((segs, sp_start))

    return World(
        config=config,
        seed=seed,
        user_community=u_comm,
        user_gamma=gamma,
        user_tier=tier.astype(np.int64),
        user_idol=idol.astype(np.int64),
        streamer_category=category.astype(np.int64),
        streamer_community=s_comm.astype(np.int64),
        streamer_style=style,
        streamer_style_cluster=style_cluster.astype(np.int64),
        streamer_popularity=popularity,
        streamer_appeal=appeal,
        streamer_first_live_ms=first_live.astype(np.int64),
        session_streamer=ses_s.astype(np.int64),
        session_start=session_start.astype(np.int64),
        session_end=session_end.astype(np.int64),
        session_title=title.astype(np.int64),
        session_seg_offset=seg_offset,
        segment_session=seg_session.astype(np.int64),
        segment_start=seg_start.astype(np.int64),
        segment_moment=seg_moment,
        click_user=c_user.astype(np.int64),
        click_session=c_ses.astype(np.int64),
        click_ts=c_ts.astype(np.int64),
        click_watch_ms=c_watch.astype(np.int64),
        click_p=p[sel],
        click_unit_rate=unit_rate[sel],
        click_moment=v_moment[sel].astype(np.int64),
        gift_user=c_user[g_click].astype(np.int64),
        gift_session=c_ses[g_click].astype(np.int64),
        gift_ts=g_ts.astype(np.int64),
        gift_price=g_price.astype(np.int64),
        gift_click=g_click.astype(np.int64),
        comment_user=c_user[m_click].astype(np.int64),
        comment_session=c_ses[m_click].astype(np.int64),
        comment_ts=m_ts.astype(np.int64),
        comment_text=m_text.astype(np.int64),
        like_user=c_user[l_click].astype(np.int64),
        like_session=c_ses[l_click].astype(np.int64),
        like_ts=l_ts.astype(np.int64),
        frame_segment=segs[fo],
        frame_ts=f_ts[fo].astype(np.int64),
        frame_latent=quantize_latents(latent)[fo],
        speech_segment=segs[so],
        speech_start=sp_start[so].astype(np.int64),
        speech_end=sp_end[so].astype(np.int64),
        speech_text=sp_text[so].astype(np.int64),
    )
