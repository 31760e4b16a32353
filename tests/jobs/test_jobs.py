"""train / evaluate / ablation jobs end to end on a tiny simulated log (real MiniLM text cache)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmbee.cli import main
from mmbee.jobs.ablation import paired, summary_json, targets
from mmbee.jobs.diagnostics import CEILINGS
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
                "--seeds",
                "2",
                "--variants",
                "sim,sim_mfq,sim_gie,sim_mfq_gie",
            ]
        )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {"sim", "sim_mfq", "sim_gie", "sim_mfq_gie", *CEILINGS}
    assert set(summary) == rows | {
        "popularity",
        "oracle",
        "observable_oracle",
        "targets",
        "probes",
        "seconds",
    }
    for name in rows:
        assert set(summary[name]) == {"auc", "uauc", "gauc", "auc_std", "uauc_std", "gauc_std"}
    paired = summary["targets"]["sim"]["paired"]
    assert set(paired) == {"base<mfq", "base<gie", "gie<full"}
    for d in paired.values():
        assert set(d) == {"auc", "uauc", "gauc"}
        assert all(v["se"] is not None and v["se"] >= 0 for v in d.values())
    assert set(summary["targets"]["sim"]["gap_ratio"]) <= {"auc", "uauc", "gauc"}
    probes = summary["probes"]
    assert "moment <- newest segment (raw)" in probes
    assert any(k.startswith("moment <- h_m") for k in probes)
    assert any(k.startswith("community <- h_g") for k in probes)
    for p in probes.values():
        assert 0.0 <= p["balanced_accuracy"] <= 1.0 and p["classes"] >= 2
    assert (out / "ablation.png").stat().st_size > 1000
    md = (out / "ablation.md").read_text()
    assert "| sim_mfq_gie |" in md and "| sim+true_moment |" in md and "+-" in md
    assert "observable-oracle-gap ratio" in md and "beats popularity" in md
    assert "Linear probes" in md
    report = json.loads((out / "ablation.json").read_text())
    assert summary_json(report) == summary
    assert len(report["per_seed"]["sim"]) == 2
    assert summary["observable_oracle"]["auc"] < summary["oracle"]["auc"]


def test_targets_logic() -> None:
    m = {v: {"auc": 0.9, "uauc": 0.8, "gauc": 0.8} for v in VARIANTS}
    m["oracle"] = {"auc": 1.0, "uauc": 1.0, "gauc": 1.0}
    for k, bump in (("sim_mfq", 0.01), ("sim_gie", 0.02), ("sim_mfq_gie", 0.05)):
        m[k] = {x: m["sim"][x] + bump for x in ("auc", "uauc", "gauc")}
    t = targets(m)
    assert t["sim"]["all_hold"] and not t["mmoe"]["all_hold"]
    assert t["sim"]["oracle_gap_ratio"]["auc"] == pytest.approx(0.5)
    m["observable_oracle"] = {"auc": 0.95, "uauc": 0.9, "gauc": 0.9}
    m["popularity"] = {"auc": 0.85, "uauc": 0.805, "gauc": 0.79}
    t = targets(m)
    assert t["sim"]["gap_ratio"]["auc"] == pytest.approx(1.0)
    assert t["sim"]["beats_popularity"] == {
        "sim": False,
        "sim_mfq": True,
        "sim_gie": True,
        "sim_mfq_gie": True,
    }


def test_paired_differences_need_more_than_two_standard_errors() -> None:
    base = [{"auc": 0.90, "uauc": 0.80, "gauc": 0.80} for _ in range(3)]
    steady = [{k: v + 0.01 + 0.001 * i for k, v in b.items()} for i, b in enumerate(base)]
    noisy = [{k: v + d for k, v in b.items()} for b, d in zip(base, (0.03, -0.02, 0.0), strict=True)]
    p = paired(base, steady)
    assert p["uauc"]["mean"] == pytest.approx(0.011) and p["uauc"]["holds"]
    assert p["uauc"]["se"] == pytest.approx(0.001 / 3**0.5)
    q = paired(base, noisy)
    assert q["auc"]["mean"] > 0 and not q["auc"]["holds"]
    per_seed = {v: base for v in VARIANTS}
    per_seed["sim_mfq"] = per_seed["sim_gie"] = steady
    per_seed["sim_mfq_gie"] = [{k: v + 0.01 for k, v in s.items()} for s in steady]
    means = {v: {k: float(sum(s[k] for s in r) / 3) for k in r[0]} for v, r in per_seed.items()}
    t = targets(means, per_seed)
    assert t["sim"]["all_hold"] and not t["mmoe"]["all_hold"]
