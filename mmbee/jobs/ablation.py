"""`mmbee experiment ablation`: MMBee's Table 2 grid trained and tested on one simulated log.

The log is simulated (or given), examples are built once with point-in-time features, and the
eight variants (SIM and MMoE, each alone, + MFQ, + GIE, + MFQ + GIE) are trained on the first
days and tested on the last. The report has every variant's AUC, UAUC, GAUC and top-K metrics,
the popularity baseline and the oracle (the simulator's true probabilities), whether the
Table 2 orderings hold (base < base+MFQ, base < base+GIE < base+MFQ+GIE), and the oracle-gap
ratio (AUC_full - AUC_base) / (AUC_oracle - AUC_base). Written as markdown, PNG and JSON.

Example:
    >>> report = run_ablation(AblationJob(out=Path("runs/ablation")))  # doctest: +SKIP
    >>> sorted(report["metrics"])[:2]  # doctest: +SKIP
    ['mmoe', 'mmoe_gie']
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mmbee.jobs.train import (
    BuildConfig,
    BuiltExamples,
    TrainJob,
    load_or_build,
    model_config,
    split_by_time,
    test_report,
)
from mmbee.scorer.gtr import VARIANTS
from mmbee.scorer.train import TrainConfig, score_table, train_model

__all__ = ["AblationJob", "run_ablation", "targets", "summary_json", "markdown_table"]

METRICS = ("auc", "uauc", "gauc")


@dataclass(frozen=True)
class AblationJob:
    """One ablation run.

    Attributes:
        out: output directory (log/, cache/, ablation.md, ablation.png, ablation.json).
        logdir: an existing log; None simulates `preset` (with the size overrides) into out/log.
        preset, n_users, n_streamers, days, sim_seed: the simulated world.
        variants: which of the Table 2 names to train.
        content_encoder: the encoder behind "_mfq" (e.g. "vbf++" for the VBF++ grid).
        build, train: example and training configs (every variant gets the same).
        seeds: training seeds per variant; metrics are averaged over them.
        test_days: days held out at the end.
        threads: torch CPU threads.
    """

    out: Path = Path("runs/ablation")
    logdir: Path | None = None
    preset: str = "demo"
    n_users: int | None = 8000
    n_streamers: int | None = 200
    days: int | None = 4
    sim_seed: int = 0
    variants: tuple[str, ...] = VARIANTS
    content_encoder: str = "mfq"
    build: BuildConfig = field(default_factory=BuildConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: int = 3
    test_days: float = 1.0
    threads: int = 1


def _simulate(job: AblationJob, log: Callable[[str], None]) -> Path:
    from mmbee.simulator.simulate import simulate

    logdir = Path(job.out) / "log"
    if (logdir / "mmbee_world.json").exists():
        return logdir
    log(f"simulating {job.preset} world into {logdir}")
    simulate(
        logdir,
        preset_name=job.preset,
        seed=job.sim_seed,
        days=job.days,
        n_users=job.n_users,
        n_streamers=job.n_streamers,
        text_embeddings=True,
    )
    return logdir


def _train_variant(
    job: AblationJob,
    built: BuiltExamples,
    variant: str,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
) -> tuple[dict[str, float], dict[str, float]]:
    per_seed: list[dict[str, float]] = []
    speed: list[float] = []
    seconds = 0.0
    for seed in range(job.seeds):
        tj = TrainJob(
            logdir=Path("."),
            out=Path(job.out),
            variant=variant,
            content_encoder=job.content_encoder,
            build=job.build,
            train=replace(job.train, seed=job.train.seed + seed),
        )
        cfg = model_config(tj, built)
        res = train_model(cfg, built.table, built.store, train_idx, tj.train)
        scores = score_table(res.model, built.table, built.store, test_idx)
        per_seed.append(test_report(built, test_idx, scores)["test"])
        speed.append(res.samples_per_s)
        seconds += res.seconds
    keys = per_seed[0].keys()
    mean = {k: float(np.mean([m[k] for m in per_seed])) for k in keys}
    if job.seeds > 1:
        for k in METRICS:
            mean[k + "_std"] = float(np.std([m[k] for m in per_seed]))
    return mean, {"train_samples_per_s": float(np.median(speed)), "train_seconds": seconds}


def targets(metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Which Table 2 orderings hold, by how much, and the oracle-gap ratio per base."""
    out: dict[str, Any] = {}
    oracle = metrics.get("oracle")
    for base in ("sim", "mmoe"):
        names = (base, f"{base}_mfq", f"{base}_gie", f"{base}_mfq_gie")
        if not all(n in metrics for n in names):
            continue
        b, mfq, gie, full = (metrics[n] for n in names)
        checks = {}
        for m in METRICS:
            checks[m] = {
                "base<mfq": mfq[m] - b[m],
                "base<gie": gie[m] - b[m],
                "gie<full": full[m] - gie[m],
            }
        entry: dict[str, Any] = {
            "margins": checks,
            "all_hold": all(v > 0 for c in checks.values() for v in c.values()),
        }
        if oracle is not None and oracle["auc"] > b["auc"]:
            entry["oracle_gap_ratio"] = (full["auc"] - b["auc"]) / (oracle["auc"] - b["auc"])
        observable = metrics.get("observable_oracle")
        if observable is not None:
            entry["observable_gap_ratio"] = {
                m: (full[m] - b[m]) / (observable[m] - b[m])
                for m in METRICS
                if observable[m] > b[m]
            }
        pop = metrics.get("popularity")
        if pop is not None:
            entry["beats_popularity"] = {
                n: all(metrics[n][m] > pop[m] for m in METRICS) for n in names
            }
        out[base] = entry
    return out


def summary_json(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The one-object summary `--json` prints: each variant's and the oracle's auc, uauc, gauc."""
    rows = [*report["variants"], "popularity", "oracle", "observable_oracle"]
    return {
        name: {m: round(report["metrics"][name][m], 6) for m in METRICS}
        for name in rows
        if name in report["metrics"]
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The ablation as a markdown table (MMBee Table 2 layout) with the targets below it."""
    cols = ("auc", "uauc", "gauc", "recall@10", "ndcg@10")
    lines = [
        "| variant | "
        + " | ".join(c.upper() if c in METRICS else c for c in cols)
        + " | samples/s |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    for name in [*report["variants"], "popularity", "observable_oracle", "oracle"]:
        m = report["metrics"].get(name)
        if m is None:
            continue
        speed = report["timing"].get(name, {}).get("train_samples_per_s")
        cells = [f"{m[c]:.4f}" for c in cols]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {'' if speed is None else f'{speed:.0f}'} |"
        )
    lines.append("")
    for base, t in report["targets"].items():
        ratio = t.get("oracle_gap_ratio")
        lines.append(
            f"- {base}: orderings {'hold' if t['all_hold'] else 'do NOT all hold'}; "
            + "; ".join(
                f"{m}: " + ", ".join(f"{k} {v:+.4f}" for k, v in c.items())
                for m, c in t["margins"].items()
            )
            + (f"; oracle-gap ratio {ratio:.3f} (target >= 0.5)" if ratio is not None else "")
            + "".join(
                f"; observable-oracle-gap ratio ({m}) {v:.3f}"
                for m, v in t.get("observable_gap_ratio", {}).items()
            )
            + (
                "; beats popularity on AUC, UAUC and GAUC: "
                + ", ".join(
                    f"{n} {'yes' if ok else 'NO'}" for n, ok in t["beats_popularity"].items()
                )
                if "beats_popularity" in t
                else ""
            )
        )
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in report["variants"] if n in report["metrics"]]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.8))
    for ax, m in zip(axes, METRICS, strict=True):
        vals = [report["metrics"][n][m] for n in names]
        colors = ["#4c72b0" if n.startswith("sim") else "#dd8452" for n in names]
        ax.bar(range(len(names)), vals, color=colors)
        for ref, style in (("oracle", "--"), ("popularity", ":")):
            if ref in report["metrics"]:
                ax.axhline(
                    report["metrics"][ref][m], color="k", linestyle=style, linewidth=1, label=ref
                )
        lo = min(vals + [report["metrics"].get("popularity", {}).get(m, min(vals))])
        hi = max(vals + [report["metrics"].get("oracle", {}).get(m, max(vals))])
        pad = 0.1 * (hi - lo + 1e-6)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(m.upper())
        ax.legend(fontsize=7)
    fig.suptitle("GTR ablation (MMBee Table 2 grid) on a simulated log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_ablation(job: AblationJob, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Simulate (or take) a log, build examples once, train and test every variant, write reports."""
    import torch

    torch.set_num_threads(job.threads)
    t0 = time.perf_counter()
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    logdir = job.logdir or _simulate(job, log)
    built = load_or_build(logdir, job.build, out / "cache", job.train.progress, log)
    train_idx, test_idx = split_by_time(built, job.test_days)
    log(
        f"examples {len(built.table)}: train {len(train_idx)} "
        f"({int(built.table.column('labels')[train_idx, 2].sum())} positive), test {len(test_idx)} "
        f"({int(built.table.column('labels')[test_idx, 2].sum())} positive)"
    )
    refs = test_report(built, test_idx, None)
    metrics: dict[str, dict[str, float]] = dict(refs)
    timing: dict[str, dict[str, float]] = {}
    for variant in job.variants:
        m, t = _train_variant(job, built, variant, train_idx, test_idx)
        metrics[variant], timing[variant] = m, t
        log(
            f"{variant:14s} AUC {m['auc']:.4f}  UAUC {m['uauc']:.4f}  GAUC {m['gauc']:.4f}  "
            f"({t['train_samples_per_s']:.0f} samples/s)"
        )
    report: dict[str, Any] = {
        "logdir": str(logdir),
        "variants": list(job.variants),
        "content_encoder": job.content_encoder,
        "seeds": job.seeds,
        "examples": {
            "train": int(len(train_idx)),
            "test": int(len(test_idx)),
            "train_positives": int(built.table.column("labels")[train_idx, 2].sum()),
            "test_positives": int(built.table.column("labels")[test_idx, 2].sum()),
            "build": built.stats,
        },
        "train_config": job.train.to_dict(),
        "build_config": job.build.to_dict(),
        "metrics": metrics,
        "timing": timing,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    report["targets"] = targets(metrics)
    (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "ablation.md").write_text("# GTR ablation\n\n" + markdown_table(report))
    _plot(report, out / "ablation.png")
    log(f"wrote {out / 'ablation.md'}, {out / 'ablation.png'}, {out / 'ablation.json'}")
    return report
