"""The observable oracle: truth without the hidden propensity, point in time, exact in the limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmbee.simulator.config import preset
from mmbee.simulator.oracle import GammaPrior, observable_truth, posterior_scores
from mmbee.simulator.reader import read_truth
from mmbee.simulator.world import World, generate_world

HOUR = 3_600_000


def test_unit_rate_times_gamma_is_the_truth(tiny_world: World) -> None:
    w = tiny_world
    gamma = w.user_gamma[w.click_user]
    assert (w.click_unit_rate > 0).all()
    np.testing.assert_allclose(-np.expm1(-gamma * w.click_unit_rate), w.click_p, rtol=1e-12)


def test_posterior_moves_with_resolved_outcomes_only() -> None:
    prior = GammaPrior()
    values, weights = prior.grid()
    r = 0.05
    ts = np.array([0, 10, 2 * HOUR, 3 * HOUR])
    user = np.zeros(4, np.int64)
    rate = np.full(4, r)
    # impression 0 gifts at t = 5 ms (known from then on); impression 1 gifts never
    label = np.array([1, 0, 0, 0])
    resolved = np.array([5, 10 + HOUR, 2 * HOUR + HOUR, 3 * HOUR + HOUR])
    s = posterior_scores(user, ts, rate, label, resolved, prior)
    prior_mean = float((weights * -np.expm1(-values * r)).sum())
    assert s[0] == pytest.approx(prior_mean)  # nothing known yet
    assert s[1] > 3 * prior_mean  # the gift at t = 5 proves gamma > 0
    # impression 1 (no gift) is resolved at 10 + 1 h, before impression 2: a little lower
    assert s[2] < s[1]
    # a future outcome never changes an earlier score
    other = posterior_scores(user, ts, rate, np.array([1, 1, 1, 1]), resolved, prior)
    assert other[:2] == pytest.approx(s[:2])
    # other users are independent
    two = posterior_scores(
        np.r_[user, user + 1], np.r_[ts, ts], np.r_[rate, rate], np.r_[label, 0 * label],
        np.r_[resolved, ts + HOUR], prior,
    )  # fmt: skip
    assert two[:4] == pytest.approx(s)
    assert two[4] == pytest.approx(prior_mean) and two[5] == pytest.approx(prior_mean)


def test_observable_truth_of_a_log(tmp_path: Path) -> None:
    from mmbee.simulator.logs import write_log

    world = generate_world(preset("tiny", n_users=400, days=2), 3)
    write_log(world, tmp_path, preset_name="tiny")
    obs = observable_truth(tmp_path)
    truth = read_truth(tmp_path)
    assert obs.keys() == truth.keys()
    p = np.array([truth[k] for k in truth])
    q = np.array([obs[k] for k in truth])
    assert ((q >= 0) & (q <= 1)).all()
    # knows the streamer side: correlated with the truth, but spreads mass onto gamma = 0 users
    assert np.corrcoef(p, q)[0, 1] > 0.3
    zero = world.user_gamma[world.click_user] == 0
    assert (q[zero] > 0).all() and (p[zero] == 0).all()
    # calibrated on average (the posterior mean of an exact prior)
    assert q.sum() == pytest.approx(p.sum(), rel=0.5)
