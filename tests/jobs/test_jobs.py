"""train / evaluate / ablation jobs end to end on a tiny simulated log (real MiniLM text cache)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbee.cli import main
from mmbee.jobs.ablation import summary_json, targets
from mmbee.jobs.train import BuildConfig, build_examples, load_or_build, split_by_time
from mmbee.schemas import WatchEvent
from mmbee.scorer.features import FeatureConfig
from mmbee.scorer.gtr import VARIANTS, load_checkpoint
from mmbee.simulator.reader import iter_events, read_truth

pytestmark = [pytest.mark.models, pytest.mark.slow]  # MiniLM text cache; ~1 min

BUILD = BuildConfig(features=FeatureConfig(history=20, segments=5, expansion_n=10))


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmbee.simulator.simulate import simulate

    root = tmp_path_factory.mktemp("log") / "tiny2"
    simulate(root, preset_name="tiny", seed=0, days=2, text_embeddings=True)
    return root


def test_build_examples_cover_impressions_and_cache(logdir: Path, tmp_path: Path) -> None:
    built = load_or_build(logdir, BUILD, tmp_path / "cache", progress=False)
    again = load_or_build(logdir, BUILD, tmp_path / "cache", progress=False, log=lambda _m: None)
    t = built.table
    enters = [
        e for _, e in iter_events(logdir) if isinstance(e, WatchEvent) and e.action == "enter"
    ]
    assert len(t) + built.stats["censored"] == len(enters) == built.stats["impressions"]
    assert 0 < built.stats["positives"] < len(t)
    assert built.truth is not None and not np.isnan(built.truth).any()
    truth = read_truth(logdir)
    assert all(truth[e] == p for e, p in zip(t.event_ids[:50], built.truth[:50], strict=True))
    assert again.table.event_ids == t.event_ids and len(again.store) == len(built.store)
    assert np.array_equal(again.table.column("seg_rows"), t.column("seg_rows"))
    assert (t.column("seg_rows") >= 0).any(), "impressions see closed content segments"
    train, test = split_by_time(built, 1.0)
    assert len(train) and len(test) and t.column("ts")[train].max() < t.column("ts")[test].min()
    # Same log, same config: the same examples, bit for bit.
    other = build_examples(logdir, BUILD, progress=False)
    assert np.array_equal(other.table.column("dense"), t.column("dense"))
    assert np.array_equal(other.table.column("exp_weight"), t.column("exp_weight"))


def test_train_then_evaluate_through_the_cli(
    logdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as code:
        main(["train", str(logdir), "--variant", "sim_mfq_gie", "--out", str(out), "--no-progress"])
    assert code.value.code == 0
    assert "checkpoint" in capsys.readouterr().out
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert set(ckpt) == {"config", "state_dict"}
    assert {"model", "train", "build", "data"} <= set(ckpt["config"])
    model, _ = load_checkpoint(out / "model.pt")
    assert model.config.variant == "sim_mfq_gie" and model.content is not None
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test", "popularity", "oracle"} <= set(metrics)
    with pytest.raises(SystemExit):
        main(["evaluate", str(out / "model.pt"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["test"]["auc"] == pytest.approx(metrics["test"]["auc"])
    assert report["oracle"]["auc"] > 0.9


def test_ablation_json_and_files(
    logdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "abl"
    with pytest.raises(SystemExit):
        main(
            [
                "experiment",
                "ablation",
                "--logdir",
                str(logdir),
                "--out",
                str(out),
                "--json",
                "--variants",
                "sim,sim_mfq,sim_gie,sim_mfq_gie",
            ]
        )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary) == {
        "sim",
        "sim_mfq",
        "sim_gie",
        "sim_mfq_gie",
        "popularity",
        "oracle",
        "observable_oracle",
    }
    assert all(set(v) == {"auc", "uauc", "gauc"} for v in summary.values())
    assert (out / "ablation.png").stat().st_size > 1000
    md = (out / "ablation.md").read_text()
    assert "| sim_mfq_gie |" in md and "oracle-gap ratio" in md
    report = json.loads((out / "ablation.json").read_text())
    assert summary_json(report) == summary
    assert "sim" in report["targets"] and "oracle_gap_ratio" in report["targets"]["sim"]
    assert "observable-oracle-gap ratio" in md and "beats popularity" in md
    assert summary["observable_oracle"]["auc"] < summary["oracle"]["auc"]


def test_targets_logic() -> None:
    m = {v: {"auc": 0.9, "uauc": 0.8, "gauc": 0.8} for v in VARIANTS}
    m["oracle"] = {"auc": 1.0, "uauc": 1.0, "gauc": 1.0}
    for k, bump in (("sim_mfq", 0.01), ("sim_gie", 0.02), ("sim_mfq_gie", 0.05)):
        m[k] = {x: m["sim"][x] + bump for x in ("auc", "uauc", "gauc")}
    t = targets(m)
    assert t["sim"]["all_hold"] and not t["mmoe"]["all_hold"]
    assert t["sim"]["oracle_gap_ratio"] == pytest.approx(0.5)
    m["observable_oracle"] = {"auc": 0.95, "uauc": 0.9, "gauc": 0.9}
    m["popularity"] = {"auc": 0.85, "uauc": 0.805, "gauc": 0.79}
    t = targets(m)
    assert t["sim"]["observable_gap_ratio"]["auc"] == pytest.approx(1.0)
    assert t["sim"]["beats_popularity"] == {
        "sim": False,
        "sim_mfq": True,
        "sim_gie": True,
        "sim_mfq_gie": True,
    }
