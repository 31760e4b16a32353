"""Training wrapper: learns a planted signal, seeded, checkpoints reload, beats popularity."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbee.encoders.base import SegmentBatch
from mmbee.scorer.baselines import popularity_scores
from mmbee.scorer.batch import GTRBatch
from mmbee.scorer.dataset import ExampleTable
from mmbee.scorer.features import (
    GIFT,
    AuthorFeatures,
    Behaviour,
    FeatureConfig,
    FeatureSnapshot,
    UserFeatures,
)
from mmbee.scorer.gtr import GTRModel, config_for_variant, load_checkpoint
from mmbee.scorer.metrics import auc
from mmbee.scorer.train import (
    AdamWStep,
    TrainConfig,
    score_table,
    train_model,
    validation_split,
)

CFG = FeatureConfig(history=5, segments=2, expansion_n=3)
T = 1_700_000_000_000


def planted_table(n: int = 3000, seed: int = 0) -> ExampleTable:
    """Users gift again to the streamer they gifted before (in their history): positive w.p. 0.6
    when the target is that streamer (or shares its group, a % 4), 0.02 otherwise. Every streamer
    is equally popular, so popularity cannot tell."""
    rng = np.random.default_rng(seed)
    table = ExampleTable(CFG)
    for i in range(n):
        u, a = int(rng.integers(40)), int(rng.integers(12))
        fav = u % 12
        if rng.random() < 0.3:
            a = fav
        p = 0.6 if a == fav else 0.02
        y = float(rng.random() < p)
        hist = (Behaviour(T - 1000, f"a{fav}", GIFT),)
        snap = FeatureSnapshot(
            f"w{i}",
            T + i,
            UserFeatures(f"u{u}", history=hist),
            AuthorFeatures(f"a{a}", watches=100, gifts=5),
        )
        table.add_snapshot(snap, [], (1.0, 0.0, y))
    return table


def small(variant: str):
    return config_for_variant(
        variant,
        dim=8,
        user_rows=256,
        author_rows=256,
        hidden=(16,),
        mmoe_expert_hidden=(16,),
        sim_top_k=2,
    )


@pytest.mark.parametrize("variant", ["sim", "mmoe_gie"])
def test_learns_a_planted_signal_and_beats_popularity(variant: str, tmp_path: Path) -> None:
    table = planted_table()
    idx = np.arange(len(table))
    train, test = idx[:2400], idx[2400:]
    cfg = TrainConfig(
        epochs=6,
        batch_size=128,
        lr=1e-2,
        progress=False,
        device="cpu",
        negative_rate=1.0,
        stage2_epochs=0,
    )
    ckpt = tmp_path / "m.pt"
    res = train_model(
        small(variant),
        table,
        None,
        train,
        cfg,
        checkpoint=ckpt,
        extra_config={"features": {"history": 5}},
    )
    assert res.losses[-1]["total"] < res.losses[0]["total"]
    assert res.samples == 6 * len(train) and res.samples_per_s > 0
    y = table.column("labels")[test, 2]
    model_auc = auc(y, score_table(res.model, table, None, test))
    pop_auc = auc(y, popularity_scores(table, test))
    assert model_auc > 0.85 and abs(pop_auc - 0.5) < 1e-9
    loaded, config = load_checkpoint(ckpt)
    assert config["train"]["epochs"] == 6 and config["features"] == {"history": 5}
    assert np.allclose(
        score_table(loaded, table, None, test), score_table(res.model, table, None, test)
    )


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    table = planted_table(600)
    idx = np.arange(len(table))
    cfg = TrainConfig(epochs=1, batch_size=64, progress=False, device="cpu")
    a = train_model(small("sim_gie"), table, None, idx, cfg).model.state_dict()
    b = train_model(small("sim_gie"), table, None, idx, cfg).model.state_dict()
    c = train_model(
        small("sim_gie"),
        table,
        None,
        idx,
        TrainConfig(epochs=1, batch_size=64, progress=False, seed=1, device="cpu"),
    ).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_replacement_step_sees_every_epoch_and_batch_and_trains_in_the_same_loop() -> None:
    """`train_model(step=...)`: a step that wraps the default one gives the default's weights,
    and sees each epoch's subsampled examples before their batches."""
    table = planted_table(600)
    idx = np.arange(len(table))
    cfg = TrainConfig(epochs=2, batch_size=64, negative_rate=0.5, progress=False, device="cpu")
    calls: list[tuple[str, int]] = []

    class Counting:
        def __init__(self, model: GTRModel) -> None:
            self.inner = AdamWStep(model, cfg)

        def init_prior(self, batches: Iterable[SegmentBatch]) -> None:
            raise AssertionError("no prior to initialise without a content encoder")

        def start_epoch(self, epoch_idx: np.ndarray) -> None:
            calls.append(("epoch", len(epoch_idx)))

        def __call__(self, batch: GTRBatch) -> dict[str, float]:
            calls.append(("step", batch.batch_size))
            return self.inner(batch)

    plain = train_model(small("sim_gie"), table, None, idx, cfg)
    hooked = train_model(small("sim_gie"), table, None, idx, cfg, step=Counting)
    a, b = plain.model.state_dict(), hooked.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain.losses == hooked.losses and plain.val_losses == hooked.val_losses
    epochs = [i for i, (kind, _) in enumerate(calls) if kind == "epoch"]
    assert len(epochs) == cfg.epochs and epochs[0] == 0
    for start, end in zip(epochs, [*epochs[1:], len(calls)], strict=True):
        assert sum(n for _, n in calls[start + 1 : end]) == calls[start][1]
    assert sum(n for kind, n in calls if kind == "step") == hooked.samples


def test_time_budget_stops_early() -> None:
    table = planted_table(2000)
    cfg = TrainConfig(epochs=50, batch_size=32, progress=False, max_seconds=0.2, device="cpu")
    res = train_model(small("sim"), table, None, np.arange(len(table)), cfg)
    assert res.samples < 50 * len(table)


def test_negative_subsampling_keeps_ranking_and_calibration(tmp_path: Path) -> None:
    table = planted_table(4000, seed=1)
    idx = np.arange(len(table))
    train, test = idx[:3200], idx[3200:]
    full = train_model(
        small("sim"),
        table,
        None,
        train,
        TrainConfig(
            epochs=6, batch_size=128, lr=1e-2, progress=False, device="cpu", negative_rate=1.0
        ),
    )
    sub = train_model(
        small("sim"),
        table,
        None,
        train,
        TrainConfig(
            epochs=6, batch_size=128, lr=1e-2, progress=False, device="cpu", negative_rate=0.25
        ),
        checkpoint=tmp_path / "m.pt",
    )
    assert sub.samples < 0.5 * full.samples
    y = table.column("labels")[test, 2]
    p_sub = score_table(sub.model, table, None, test)
    assert auc(y, p_sub) > 0.85
    # Calibrated: the mean predicted probability is close to the observed rate (without the
    # log(rate) offset the odds would be 4x too high).
    assert abs(p_sub.mean() - y.mean()) < 0.3 * y.mean()
    assert float(sub.model.logit_offset[-1]) == pytest.approx(np.log(0.25))
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    assert np.allclose(score_table(loaded, table, None, test), p_sub, atol=1e-6)


def test_second_stage_keeps_id_tables_and_base_early_stops_and_keeps_its_best_epoch() -> None:
    table = planted_table(3000, seed=2)
    idx = np.arange(len(table))
    # the planted table spans 3 s of event time: hold out its last second
    cfg = TrainConfig(
        epochs=1,
        batch_size=128,
        progress=False,
        device="cpu",
        stage2_epochs=3,
        stage2_branches=("graph",),
        val_days=700 / 86_400_000,
        patience=3,
    )
    one = train_model(small("sim_gie"), table, None, idx, replace(cfg, stage2_epochs=0))
    two = train_model(small("sim_gie"), table, None, idx, cfg)
    a, b = one.model.state_dict(), two.model.state_dict()
    frozen = [k for k in a if not k.startswith(("gie.", "wide.")) or "theta" in k]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)
    # the wide term keeps its warm-started columns and bias; only its h_g columns may move
    fixed = two.model.n_fixed_wide
    assert torch.equal(a["wide.weight"][:, :fixed], b["wide.weight"][:, :fixed])
    assert torch.equal(a["wide.bias"], b["wide.bias"])
    assert all(p.requires_grad for p in two.model.parameters())
    # the default trains the content branch only: a model without one skips stage 2
    default = train_model(
        small("sim_gie"), table, None, idx, replace(cfg, stage2_branches=("content",))
    )
    assert default.val_losses == [] and all(
        torch.equal(a[k], default.model.state_dict()[k]) for k in a
    )
    # 1 + the stage-1 baseline + up to 3 second-stage validation losses; the kept epoch is the best
    assert 2 <= len(two.val_losses) <= 4
    assert two.best_stage2_epoch == int(np.argmin(two.val_losses))
    if two.best_stage2_epoch > 0:
        assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("gie."))


def test_validation_split_takes_the_last_days_of_training() -> None:
    table = planted_table(100)
    idx = np.arange(len(table))
    fit, val = validation_split(table, idx, 20 / 86_400_000)
    ts = table.column("ts")
    assert len(val) == 20 and ts[fit].max() < ts[val].min()
    assert validation_split(table, idx, 0.0)[1].size == 0
    # a span shorter than four validation windows keeps everything for fitting
    assert validation_split(table, idx, 30 / 86_400_000)[1].size == 0
