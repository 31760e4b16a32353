"""The generative model: determinism, invariants (hypothesis), exact truth, modality-signal map."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmbee.simulator.config import PriceTable, WorldConfig, preset
from mmbee.simulator.content import (
    CATEGORIES,
    MOMENTS,
    SIGNAL_MODALITY,
    dequantize_latents,
    expand_frame_latents,
    text_catalogue,
)
from mmbee.simulator.logs import write_log
from mmbee.simulator.world import HOUR_MS, World, generate_world


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    cfg = preset("tiny")
    write_log(generate_world(cfg, 11), tmp_path / "a", preset_name="tiny")
    write_log(generate_world(cfg, 11), tmp_path / "b", preset_name="tiny")
    write_log(generate_world(cfg, 12), tmp_path / "c", preset_name="tiny")
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert len(a) >= 15
    assert a["click.csv"] != c["click.csv"]


def check_invariants(w: World) -> None:
    """Every law the logs must obey; raises AssertionError naming the broken one."""
    S, U = w.n_streamers, w.n_users
    cfg = w.config
    # sessions: a streamer is live once at a time, within the simulated span
    assert (w.session_end > w.session_start).all()
    assert (w.session_start >= cfg.start_ms).all() and (w.session_end <= cfg.end_ms).all()
    order = np.lexsort((w.session_start, w.session_streamer))
    same = w.session_streamer[order][1:] == w.session_streamer[order][:-1]
    assert (w.session_start[order][1:][same] >= w.session_end[order][:-1][same]).all()
    # clicks: inside their session, sorted by time, one room at a time per user, and no
    # re-entry of the same room within 1 h of entering it
    assert (np.diff(w.click_ts) >= 0).all()
    ses = w.click_session
    assert (w.click_ts >= w.session_start[ses]).all()
    leave = w.click_ts + w.click_watch_ms
    assert (leave <= w.session_end[ses]).all() and (w.click_watch_ms > 0).all()
    by_user = np.lexsort((w.click_ts, w.click_user))
    same_user = w.click_user[by_user][1:] == w.click_user[by_user][:-1]
    assert (w.click_ts[by_user][1:][same_user] >= leave[by_user][:-1][same_user]).all()
    pair = w.click_user * S + w.session_streamer[ses]
    by_pair = np.lexsort((w.click_ts, pair))
    same_pair = pair[by_pair][1:] == pair[by_pair][:-1]
    gap = w.click_ts[by_pair][1:] - w.click_ts[by_pair][:-1]
    assert (gap[same_pair] >= HOUR_MS).all()
    assert ((w.click_p >= 0) & (w.click_p <= 1)).all()
    # gifts: from a watching user, strictly inside the watch and the session
    g = w.gift_click
    assert (w.gift_user == w.click_user[g]).all() and (w.gift_session == ses[g]).all()
    assert (w.gift_ts > w.click_ts[g]).all() and (w.gift_ts < leave[g]).all()
    assert (w.gift_ts < w.session_end[w.gift_session]).all()
    assert (np.diff(w.gift_ts) >= 0).all()
    assert np.isin(w.gift_price, PriceTable().prices).all() and (w.gift_price > 0).all()
    # a gift's first gift of its impression is within the hour (label window)
    first = np.unique(g, return_index=True)[1]
    assert (w.gift_ts[first] - w.click_ts[g[first]] < HOUR_MS).all()
    # comments and likes: while watching
    for user, ts, s in (
        (w.comment_user, w.comment_ts, w.comment_session),
        (w.like_user, w.like_ts, w.like_session),
    ):
        assert (np.diff(ts) >= 0).all()
        assert ((user >= 0) & (user < U)).all()
        assert (ts >= w.session_start[s]).all() and (ts < w.session_end[s]).all()
    # content: one frame and one speech segment per segment, inside it
    seg_end = w.segment_start + cfg.segment_ms
    assert (w.frame_ts >= w.segment_start[w.frame_segment]).all()
    assert (w.frame_ts < seg_end[w.frame_segment]).all()
    assert (w.speech_end >= w.speech_start).all()
    assert (w.speech_end < seg_end[w.speech_segment]).all()
    assert np.array_equal(np.sort(w.frame_segment), np.arange(w.segment_start.size))


def test_invariants_tiny(tiny_world: World) -> None:
    check_invariants(tiny_world)
    assert tiny_world.gift_ts.size > 0 and tiny_world.comment_ts.size > 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    n_users=st.integers(5, 150),
    n_streamers=st.integers(1, 30),
    days=st.integers(1, 2),
    n_communities=st.integers(1, 5),
)
def test_invariants_hypothesis(
    seed: int, n_users: int, n_streamers: int, days: int, n_communities: int
) -> None:
    cfg = WorldConfig(
        n_users=n_users,
        n_streamers=n_streamers,
        days=days,
        n_communities=min(n_communities, n_users),
    )
    check_invariants(generate_world(cfg, seed))


def test_truth_is_the_label_probability() -> None:
    """Labels recomputed from the gift log (a gift by the same user to the same streamer within
    1 h after the click) match the truth probabilities: overall and per probability bin."""
    w = generate_world(preset("demo"), 3)
    streamer = w.session_streamer
    t_click, t_gift = w.click_ts, w.gift_ts
    key_c = w.click_user * w.n_streamers + streamer[w.click_session]
    key_g = w.gift_user * w.n_streamers + streamer[w.gift_session]
    order = np.lexsort((t_gift, key_g))
    kg, tg = key_g[order], t_gift[order]
    # first gift of the same pair strictly after the click (pair in the high bits, time low)
    t0 = w.config.start_ms
    pos = np.searchsorted((kg << 36) + (tg - t0), (key_c << 36) + (t_click - t0), side="right")
    pos_c = np.minimum(pos, kg.size - 1)
    label = (pos < kg.size) & (kg[pos_c] == key_c) & (tg[pos_c] - t_click <= HOUR_MS)
    p = w.click_p
    assert label.sum() > 200
    z = (label.sum() - p.sum()) / np.sqrt((p * (1 - p)).sum())
    assert abs(z) < 4, z
    for lo, hi in ((0.0, 0.02), (0.02, 0.2), (0.2, 0.6), (0.6, 1.0)):
        m = (p > lo) & (p <= hi)
        if m.sum() < 50:
            continue
        zb = (label[m].sum() - p[m].sum()) / np.sqrt((p[m] * (1 - p[m])).sum())
        assert abs(zb) < 4, (lo, hi, zb)
    assert not label[p == 0].any()


def test_moment_visible_only_in_its_category_modality() -> None:
    """Frames carry the moment only for visual categories, speech only for speech categories,
    comments only for comment categories; watch and like events carry it nowhere."""
    w = generate_world(replace(preset("demo"), days=1), 5)
    cat = text_catalogue()
    seg_cat = w.streamer_category[w.session_streamer[w.segment_session]]
    # frames: mean frame embedding of special moments vs normal, per category
    f_cat = seg_cat[w.frame_segment]
    f_mom = w.segment_moment[w.frame_segment]
    emb = expand_frame_latents(dequantize_latents(w.frame_latent))
    for c, name in enumerate(CATEGORIES):
        normal = emb[(f_cat == c) & (f_mom == 0)]
        pk = emb[(f_cat == c) & (f_mom == MOMENTS.index("lucky_draw"))]
        if len(normal) < 30 or len(pk) < 30:
            continue
        gap = np.linalg.norm(normal.mean(0) - pk.mean(0))
        spread = np.sqrt(normal.var(0).sum() / len(pk) + pk.var(0).sum() / len(pk))
        if SIGNAL_MODALITY[name] == "visual":
            assert gap > 5 * spread, (name, gap, spread)
        else:
            assert gap < 3 * spread, (name, gap, spread)
    # speech: moment sentences appear only in speech categories
    moment_sentences = np.concatenate(cat.speech_moment_pool[1:])
    s_cat = seg_cat[w.speech_segment]
    s_sentence = (w.speech_text - cat.speech_offset) % cat.n_sentences
    says_moment = np.isin(s_sentence, moment_sentences)
    speech_cats = np.array([SIGNAL_MODALITY[c] == "speech" for c in CATEGORIES])
    assert says_moment[speech_cats[s_cat]].any()
    assert not says_moment[~speech_cats[s_cat]].any()
    # comments: moment templates appear only in comment categories
    moment_templates = np.concatenate(cat.comment_moment_pool[1:])
    c_cat = w.streamer_category[w.session_streamer[w.comment_session]]
    about_moment = np.isin(w.comment_text // cat.n_suffixes, moment_templates)
    comment_cats = np.array([SIGNAL_MODALITY[c] == "comments" for c in CATEGORIES])
    assert about_moment[comment_cats[c_cat]].any()
    assert not about_moment[~comment_cats[c_cat]].any()


def test_moment_moves_gift_probability() -> None:
    w = generate_world(replace(preset("demo"), days=1), 2)
    gifting = w.click_p > 0
    means = {
        MOMENTS[m]: w.click_p[gifting & (w.click_moment == m)].mean()
        for m in range(len(MOMENTS))
        if (gifting & (w.click_moment == m)).sum() > 100
    }
    assert means["pk_battle"] > means["normal"] > means["break"]


def test_communities_predict_gifts() -> None:
    """Gifts go mostly to streamers of the giver's community set (home or ring neighbour)."""
    w = generate_world(replace(preset("demo"), days=1), 4)
    K = w.config.n_communities
    d = np.abs(
        w.user_community[w.gift_user] - w.streamer_community[w.session_streamer[w.gift_session]]
    )
    d = np.minimum(d, K - d)
    idol = w.user_idol[w.gift_user] == w.session_streamer[w.gift_session]
    share_near = ((d <= 1) | idol).mean()
    assert share_near > 0.6, share_near
    # clicks are spread much wider than gifts
    dc = np.abs(
        w.user_community[w.click_user] - w.streamer_community[w.session_streamer[w.click_session]]
    )
    dc = np.minimum(dc, K - dc)
    assert (dc <= 1).mean() < share_near


@pytest.mark.parametrize("name", ["tiny", "demo", "default"])
def test_presets_are_valid(name: str) -> None:
    cfg = preset(name)
    assert cfg.n_users >= 1 and cfg.end_ms - cfg.start_ms == cfg.days * 86_400_000
    with pytest.raises(KeyError, match="known"):
        preset("nope")
