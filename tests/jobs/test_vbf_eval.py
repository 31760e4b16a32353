"""`mmbee experiment vbf` on a tiny simulated world: the VBF++ training loop, the diagnostics and
the report (real MiniLM text cache, so `models`)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbee.cli import main
from mmbee.encoders.base import SegmentBatch
from mmbee.encoders.vbf import VBFEncoder
from mmbee.encoders.vbf_train import VBFTrainConfig
from mmbee.jobs.train import BuildConfig, BuiltExamples, load_or_build, split_by_time
from mmbee.jobs.vbf_eval import (
    MetaConfig,
    _model_config,
    _splice,
    _variant,
    _vbf_train_config,
    encoder_diagnostics,
    fusion_by_category,
    heldout_adaptation,
    mixed_vs_pure,
    train_vbf,
)
from mmbee.scorer.features import FeatureConfig
from mmbee.scorer.train import TrainConfig, score_table

pytestmark = [pytest.mark.models, pytest.mark.slow]  # MiniLM text cache; ~40 s

BUILD = BuildConfig(features=FeatureConfig(history=20, segments=4, expansion_n=10))
TRAIN = TrainConfig(batch_size=256, negative_rate=1.0, progress=False, prior_init_examples=256)
META = MetaConfig(every=2, tasks=2, support=20, support_positives=4, query=32, repeats=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuiltExamples]:
    from mmbee.simulator.simulate import simulate

    root = tmp_path_factory.mktemp("vbf") / "log"
    simulate(root, preset_name="tiny", seed=0, days=2, n_users=500, text_embeddings=True)
    built = load_or_build(root, BUILD, None, progress=False)
    return root, built


def test_splice_takes_older_half_of_a_and_newer_half_of_b() -> None:
    def batch(fill: float, comments: bool) -> SegmentBatch:
        smm = torch.ones(1, 4, 3, dtype=torch.bool)
        smm[..., 2] = comments
        return SegmentBatch(
            visual=torch.full((1, 4, 2), fill),
            speech=torch.full((1, 4, 2), fill),
            comments=torch.full((1, 4, 2), fill),
            segment_mask=torch.ones(1, 4, dtype=torch.bool),
            modality_mask=smm.any(dim=1),
            author_ids=torch.tensor([int(fill)]),
            context=torch.tensor([[fill, 0.0]]),
            segment_modality_mask=smm,
        )

    s = _splice(batch(1.0, False), batch(2.0, True), cut=1)
    assert s.visual[0, :, 0].tolist() == [1.0, 2.0, 2.0, 2.0]
    assert s.segment_modality_mask is not None
    assert s.segment_modality_mask[0, :, 2].tolist() == [False, True, True, True]
    assert s.modality_mask.tolist() == [[True, True, True]]  # b brings the comments
    assert s.context is not None and s.context.tolist() == [[1.5, 0.0]]
    s.check()


def test_train_vbf_is_seeded_alternates_and_meta_steps(world: tuple[Path, BuiltExamples]) -> None:
    _, built = world
    train_idx, test_idx = split_by_time(built, 1.0)
    cfg = _model_config(built, _variant("vbf++"), 1.0)
    runs = [train_vbf(cfg, built, train_idx, TRAIN, VBFTrainConfig(), META) for _ in range(2)]
    a, b = (score_table(r.model, built.table, built.store, test_idx) for r in runs)
    assert np.array_equal(a, b), "same seed, same scores"
    run = runs[0]
    assert run.meta_steps == run.steps // META.every > 0
    hist = "".join(run.trainer.history)
    assert set(hist) <= {"D", "E", "M"} and hist.count("M") == run.meta_steps
    # encoder steps only until the replay buffer fills, then strictly discriminator, encoder
    assert hist.count("E") == run.steps and "D" in hist
    assert re.fullmatch(r"E*(DE)*", hist.replace("M", ""))
    assert float(run.model.logit_offset[-1]) == pytest.approx(np.log(TRAIN.negative_rate))
    assert isinstance(run.model.content, VBFEncoder)
    no_rar = _vbf_train_config(VBFTrainConfig(), _variant("vbf++-rar"))  # the -RAR row's
    assert not no_rar.rar and _vbf_train_config(VBFTrainConfig(), _variant("vbf++")).rar
    other = train_vbf(cfg, built, train_idx, replace(TRAIN, seed=1), no_rar, None)
    assert other.meta_steps == 0
    assert "D" not in other.trainer.history and len(other.trainer.buffer) == 0
    assert not np.array_equal(a, score_table(other.model, built.table, built.store, test_idx))


def test_diagnostics_and_adaptation(world: tuple[Path, BuiltExamples]) -> None:
    root, built = world
    carriers = json.loads((root / "mmbee_world.json").read_text())["signal_modality"]
    train_idx, test_idx = split_by_time(built, 1.0)
    cfg = _model_config(built, _variant("vbf++"), 1.0)
    run = train_vbf(cfg, built, train_idx, TRAIN, VBFTrainConfig(), META)
    diag = encoder_diagnostics(run.model, built, test_idx)
    assert diag["alpha"].shape == (len(test_idx), 3)
    np.testing.assert_allclose(diag["alpha"][diag["full"]].sum(1), 1.0, atol=1e-5)
    fusion = fusion_by_category(built, test_idx, diag, carriers)
    assert fusion["categories"], "some category has buffers with all three modalities"
    for cat, c in fusion["categories"].items():
        assert c["carrier"] == carriers[cat]
        assert abs(sum(c["alpha"]) - 1.0) < 1e-5 and c["streams"] >= 1
        assert c["follows"] == (c["top"] == c["carrier"])
    var = mixed_vs_pure(run.model, built, test_idx, 50, np.random.default_rng(0), max_buffers=200)
    if var["buffers"] >= 4 and "cross" in var:
        assert var["pure"] > 0 and var["cross"]["spliced"] > 0 and var["cross"]["pairs"] > 0
    names = built.table.category_names(train_idx)
    y = built.table.column("labels")[train_idx, 2]
    counts: dict[str, float] = {}
    for n, v in zip(names, y, strict=True):
        counts[n or ""] = counts.get(n or "", 0.0) + float(v)
    cat = max(counts, key=lambda k: counts[k])
    r = heldout_adaptation(run, built, train_idx, test_idx, cat, META, seed=0)
    assert r["query"] > 0
    if "after" in r:
        assert r["before"]["bce"] > 0 and r["after"]["bce"] > 0
        assert r["before"]["bce"] != r["after"]["bce"], "adaptation changed the encoder"
    # adaptation works on a copy: the trained encoder is untouched
    again = score_table(run.model, built.table, built.store, test_idx)
    assert np.array_equal(again, score_table(run.model, built.table, built.store, test_idx))


def test_cli_experiment_vbf_json(
    world: tuple[Path, BuiltExamples], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = world
    out = tmp_path / "vbf"
    argv = [
        "experiment", "vbf", "--logdir", str(root), "--out", str(out), "--seeds", "1",
        "--variants", "sim,fixed-fusion,vbf++,vbf++-ve", "--holdout", "music", "--json",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as code:
        main(argv)
    assert code.value.code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"sim", "fixed-fusion", "vbf++", "vbf++-ve", "oracle"} <= set(summary)
    for name in ("sim", "fixed-fusion", "vbf++", "vbf++-ve"):
        assert 0.0 <= summary[name]["auc"] <= 1.0
    assert 0.0 <= summary["vbf++"]["fusion_follows_carrier"] <= 1.0
    report = json.loads((out / "vbf.json").read_text())
    assert set(report["fusion"]) == {"vbf++", "vbf++-ve"}
    assert "vbf++-ve" not in report["variance"], "no posterior to speak of without sampling"
    assert set(report["heldout"]) == {"vbf++", "vbf++-ml"}
    assert report["exploration"]["explored_share"] > 0
    md = (out / "vbf.md").read_text()
    assert "| vbf++ |" in md and "Fusion weights of `vbf++`" in md
    assert "500 users x 40 streamers x 2 days" in md, "the world of --logdir, not the defaults"
    assert (out / "vbf.png").stat().st_size > 0


def test_cli_vbf_defaults_are_the_jobs_and_parser_is_lazy() -> None:
    import subprocess
    import sys

    from mmbee.cli import build_parser
    from mmbee.jobs.vbf_eval import DEFAULT_VARIANTS, VBFEvalJob

    args = build_parser().parse_args(["experiment", "vbf"])
    job = VBFEvalJob()
    assert (args.out, args.preset, args.users, args.streamers, args.days, args.sim_seed) == (
        job.out, job.preset, job.n_users, job.n_streamers, job.days, job.sim_seed,
    )  # fmt: skip
    assert (args.seeds, args.elbo_weight, args.test_days) == (
        job.seeds, job.elbo_weight, job.test_days,
    )  # fmt: skip
    assert tuple(args.holdout.split(",")) == job.holdout
    assert args.variants is None and job.variants == tuple(v.name for v in DEFAULT_VARIANTS)
    code = "import sys; from mmbee.cli import build_parser; build_parser(); " + (
        "print('mmbee.jobs.vbf_eval' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "building the parser must not import the VBF job"
