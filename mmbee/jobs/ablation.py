"""`mmbee experiment ablation`: MMBee's Table 2 grid trained and tested on one simulated log.

The log is simulated (or given), examples are built once with point-in-time features, and the
eight variants (SIM and MMoE, each alone, + MFQ, + GIE, + MFQ + GIE) are trained on the first
days and tested on the last, each with several training seeds. The report has every variant's
AUC, UAUC, GAUC and top-K metrics (mean and spread over the seeds), the popularity baseline, the
oracle (the simulator's true probabilities) and the observable oracle; whether the Table 2
orderings hold (base < base+MFQ, base < base+GIE < base+MFQ+GIE) as paired differences (same
test set, same seed) with their standard errors; and the gap ratios
(metric_full - metric_base) / (metric_reference - metric_base). Written as markdown, PNG and
JSON.

Diagnostics (`AblationJob.diagnostics`; they measure, they never ship):
- ceiling variants: SIM plus the simulator's truth as wide inputs (the moment at the
  impression; the viewer's idol and community membership of the target): how much this
  pipeline can gain from each hidden signal when it is handed over;
- linear probes: the moment at the impression from the raw features of the newest closed
  segment (is it in the data?), from the trained h_m (did the encoder get it?), and the
  target's community membership from the trained h_g.

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

from mmbee.jobs.diagnostics import CEILINGS, load_truth, run_probes, with_extra
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

__all__ = [
    "AblationJob",
    "run_ablation",
    "targets",
    "paired",
    "mean_metrics",
    "summary_json",
    "markdown_table",
]

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
        seeds: training seeds per variant (the same seeds for every variant, so differences
            are paired); metrics are averaged over them.
        test_days: days held out at the end.
        threads: torch CPU threads.
        diagnostics: also train the ceiling variants and run the linear probes.
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
    diagnostics: bool = True


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


PAIRS = (("base<mfq", "", "_mfq"), ("base<gie", "", "_gie"), ("gie<full", "_gie", "_mfq_gie"))
"""Table 2's orderings per base: (name, lower variant suffix, higher variant suffix)."""


def _train_variant(
    job: AblationJob,
    built: BuiltExamples,
    variant: str,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    table: Any = None,
    extra_wide: int = 0,
) -> tuple[list[dict[str, float]], dict[str, float], Any]:
    """Train `variant` with every seed: (per-seed test metrics, timing, the first seed's model).

    `table` replaces the example table (the ceiling variants' table with truth columns) and
    `extra_wide` is then its number of extra wide inputs."""
    per_seed: list[dict[str, float]] = []
    speed: list[float] = []
    seconds = 0.0
    first = None
    tab = built.table if table is None else table
    for seed in range(job.seeds):
        tj = TrainJob(
            logdir=Path("."),
            out=Path(job.out),
            variant=variant,
            content_encoder=job.content_encoder,
            build=job.build,
            train=replace(job.train, seed=job.train.seed + seed),
            model_overrides={"extra_wide": extra_wide} if extra_wide else {},
        )
        cfg = model_config(tj, built)
        res = train_model(cfg, tab, built.store, train_idx, tj.train)
        scores = score_table(res.model, tab, built.store, test_idx)
        per_seed.append(test_report(built, test_idx, scores)["test"])
        speed.append(res.samples_per_s)
        seconds += res.seconds
        if first is None:
            first = res.model
    timing = {"train_samples_per_s": float(np.median(speed)), "train_seconds": seconds}
    return per_seed, timing, first


def mean_metrics(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every metric over the seeds, plus `<metric>_std` of AUC, UAUC and GAUC."""
    out = {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}
    if len(per_seed) > 1:
        for k in METRICS:
            out[k + "_std"] = float(np.std([m[k] for m in per_seed], ddof=1))
    return out


def paired(lower: list[dict[str, float]], higher: list[dict[str, float]]) -> dict[str, Any]:
    """Paired differences higher - lower per metric (seed s against seed s, same test set):
    mean, standard error (std with ddof 1 / sqrt(n); None for one seed) and whether the mean
    exceeds two standard errors."""
    out: dict[str, Any] = {}
    for m in METRICS:
        d = np.array([h[m] - lo[m] for lo, h in zip(lower, higher, strict=True)])
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
        mean = float(d.mean())
        out[m] = {
            "mean": mean,
            "se": se,
            "holds": bool(mean > 0 and (se is None or mean > 2 * se)),
        }
    return out


def targets(
    metrics: dict[str, dict[str, float]],
    per_seed: dict[str, list[dict[str, float]]] | None = None,
) -> dict[str, Any]:
    """Which Table 2 orderings hold, by how much, and the gap ratios per base.

    With `per_seed` (variant -> one metrics dict per training seed, seeds aligned), an ordering
    holds when its mean paired difference exceeds two standard errors; without, when the mean
    difference is positive."""
    out: dict[str, Any] = {}
    for base in ("sim", "mmoe"):
        names = (base, f"{base}_mfq", f"{base}_gie", f"{base}_mfq_gie")
        if not all(n in metrics for n in names):
            continue
        full = metrics[names[3]]
        b = metrics[base]
        diffs: dict[str, Any] = {}
        for name, lo, hi in PAIRS:
            if per_seed is not None:
                diffs[name] = paired(per_seed[base + lo], per_seed[base + hi])
            else:
                diffs[name] = {
                    m: {
                        "mean": metrics[base + hi][m] - metrics[base + lo][m],
                        "se": None,
                        "holds": metrics[base + hi][m] > metrics[base + lo][m],
                    }
                    for m in METRICS
                }
        entry: dict[str, Any] = {
            "paired": diffs,
            "all_hold": all(d[m]["holds"] for d in diffs.values() for m in METRICS),
        }
        for ref_name, key in (("oracle", "oracle_gap_ratio"), ("observable_oracle", "gap_ratio")):
            ref = metrics.get(ref_name)
            if ref is not None:
                entry[key] = {
                    m: (full[m] - b[m]) / (ref[m] - b[m]) for m in METRICS if ref[m] > b[m]
                }
        pop = metrics.get("popularity")
        if pop is not None:
            entry["beats_popularity"] = {
                n: all(metrics[n][m] > pop[m] for m in METRICS) for n in names
            }
        out[base] = entry
    return out


def summary_json(report: dict[str, Any]) -> dict[str, Any]:
    """The one object `--json` prints: each variant's and reference's auc, uauc, gauc (means,
    with their seed std where trained), the paired orderings, the gap ratios against the
    observable oracle, whether each variant beats popularity, and the probes."""
    metrics = report["metrics"]
    rows = [*report["variants"], *report.get("ceilings", []), *REFERENCES]
    out: dict[str, Any] = {
        name: {
            k: round(metrics[name][k], 6)
            for k in (*METRICS, *(m + "_std" for m in METRICS))
            if k in metrics[name]
        }
        for name in rows
        if name in metrics
    }
    out["targets"] = {
        base: {
            "all_hold": t["all_hold"],
            "paired": t["paired"],
            "gap_ratio": t.get("gap_ratio", {}),
            "beats_popularity": t.get("beats_popularity", {}),
        }
        for base, t in report["targets"].items()
    }
    if "probes" in report:
        out["probes"] = report["probes"]
    out["seconds"] = report["seconds"]
    return out


REFERENCES = ("popularity", "observable_oracle", "oracle")


def markdown_table(report: dict[str, Any]) -> str:
    """The ablation as a markdown table (MMBee Table 2 layout), the paired differences, the gap
    ratios and the diagnostics."""
    cols = ("auc", "uauc", "gauc", "recall@10", "ndcg@10")
    n = report.get("seeds", 1)
    lines = [
        f"Means over {n} training seed(s); +- is the seed standard deviation.",
        "",
        "| variant | "
        + " | ".join(c.upper() if c in METRICS else c for c in cols)
        + " | samples/s |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    for name in [*report["variants"], *report.get("ceilings", []), *REFERENCES]:
        m = report["metrics"].get(name)
        if m is None:
            continue
        speed = report["timing"].get(name, {}).get("train_samples_per_s")
        cells = [
            f"{m[c]:.4f}" + (f" +- {m[c + '_std']:.4f}" if c + "_std" in m else "") for c in cols
        ]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {'' if speed is None else f'{speed:.0f}'} |"
        )
    lines.append("")
    for base, t in report["targets"].items():
        lines.append(
            f"**{base}**: orderings {'hold' if t['all_hold'] else 'do NOT all hold'} "
            "(mean paired difference > 2 standard errors)"
        )
        lines.append("")
        lines.append("| ordering | AUC | UAUC | GAUC |")
        lines.append("|---|---|---|---|")
        for name, d in t["paired"].items():
            cells = []
            for m in METRICS:
                se = d[m]["se"]
                cells.append(
                    f"{d[m]['mean']:+.4f}"
                    + (f" +- {se:.4f}" if se is not None else "")
                    + ("" if d[m]["holds"] else " (no)")
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        for key, label in (
            ("gap_ratio", "observable-oracle-gap ratio"),
            ("oracle_gap_ratio", "oracle-gap ratio"),
        ):
            if t.get(key):
                lines.append(
                    f"- {label} (full - base) / (reference - base): "
                    + ", ".join(f"{m.upper()} {v:.3f}" for m, v in t[key].items())
                )
        if "beats_popularity" in t:
            lines.append(
                "- beats popularity on AUC, UAUC and GAUC: "
                + ", ".join(
                    f"{n} {'yes' if ok else 'NO'}" for n, ok in t["beats_popularity"].items()
                )
            )
        lines.append("")
    probes = report.get("probes")
    if probes:
        lines.append(
            "**Linear probes** (test-day impressions; balanced accuracy, chance = 1/classes)"
        )
        lines.append("")
        lines.append(
            "| probe | classes | balanced accuracy | majority-class share | n train / test |"
        )
        lines.append("|---|---|---|---|---|")
        for name, p in probes.items():
            lines.append(
                f"| {name} | {p['classes']} | {p['balanced_accuracy']:.3f} | "
                f"{p['majority_share']:.3f} | {p['n_train']} / {p['n_test']} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [
        n for n in [*report["variants"], *report.get("ceilings", [])] if n in report["metrics"]
    ]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.4 * len(METRICS), 4.0))
    for ax, m in zip(axes, METRICS, strict=True):
        vals = [report["metrics"][n][m] for n in names]
        errs = [report["metrics"][n].get(m + "_std", 0.0) for n in names]
        colors = [
            "#8c8c8c" if "+" in n else "#4c72b0" if n.startswith("sim") else "#dd8452"
            for n in names
        ]
        ax.bar(range(len(names)), vals, color=colors, yerr=errs, capsize=3)
        for ref, style in (("oracle", "--"), ("observable_oracle", "-."), ("popularity", ":")):
            if ref in report["metrics"]:
                ax.axhline(
                    report["metrics"][ref][m], color="k", linestyle=style, linewidth=1, label=ref
                )
        lo = min(vals + [report["metrics"].get("popularity", {}).get(m, min(vals))])
        hi = max(vals + [report["metrics"].get("oracle", {}).get(m, max(vals))])
        pad = 0.1 * (hi - lo + 1e-6)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{m.upper()} (error bars: seed std)")
        ax.legend(fontsize=7)
    fig.suptitle("GTR ablation (MMBee Table 2 grid) on a simulated log; grey: truth ceilings")
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
    per_seed: dict[str, list[dict[str, float]]] = {}
    timing: dict[str, dict[str, float]] = {}
    models: dict[str, Any] = {}

    def record(name: str, runs: list[dict[str, float]], t: dict[str, float]) -> None:
        per_seed[name], timing[name] = runs, t
        m = metrics[name] = mean_metrics(runs)
        log(
            f"{name:24s} AUC {m['auc']:.4f}  UAUC {m['uauc']:.4f}  GAUC {m['gauc']:.4f}  "
            f"({t['train_samples_per_s']:.0f} samples/s)"
        )

    for variant in job.variants:
        runs, t, models[variant] = _train_variant(job, built, variant, train_idx, test_idx)
        record(variant, runs, t)
    ceilings: list[str] = []
    probes: dict[str, Any] = {}
    truth = load_truth(logdir, built) if job.diagnostics else None
    if truth is not None:
        for name, columns in CEILINGS.items():
            extra = truth.wide_columns(columns)  # (E, C)
            runs, t, _ = _train_variant(
                job,
                built,
                "sim",
                train_idx,
                test_idx,
                with_extra(built.table, extra),
                extra.shape[1],
            )
            record(name, runs, t)
            ceilings.append(name)
        probes = run_probes(built, truth, train_idx, test_idx, models, seed=job.train.seed)
        for name, p in probes.items():
            log(f"probe {name}: balanced accuracy {p['balanced_accuracy']:.3f}")
    report: dict[str, Any] = {
        "logdir": str(logdir),
        "variants": list(job.variants),
        "ceilings": ceilings,
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
        "per_seed": per_seed,
        "timing": timing,
        "probes": probes,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    report["targets"] = targets(metrics, per_seed)
    (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "ablation.md").write_text("# GTR ablation\n\n" + markdown_table(report))
    _plot(report, out / "ablation.png")
    log(f"wrote {out / 'ablation.md'}, {out / 'ablation.png'}, {out / 'ablation.json'}")
    return report
