"""`mmbee evaluate CHECKPOINT [LOGDIR]`: score a trained model on the test days of a log.

The checkpoint carries its feature and label configuration, so the examples are rebuilt (or
loaded from the cache) exactly as for training. The report holds the model's AUC, UAUC, GAUC
and Recall / Precision / NDCG@K, the popularity baseline's, and the oracle's (the simulator's
true probabilities, when the log has a truth file).

Example:
    >>> r = run_evaluate(EvaluateJob(Path("runs/demo/model.pt")))  # doctest: +SKIP
    >>> sorted(r)[:3]  # doctest: +SKIP
    ['checkpoint', 'logdir', 'oracle']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmbee.jobs.train import BuildConfig, load_or_build, split_by_time, test_report
from mmbee.scorer.gtr import load_checkpoint
from mmbee.scorer.train import score_table

__all__ = ["EvaluateJob", "run_evaluate", "format_report", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("auc", "uauc", "gauc", "recall@10", "precision@10", "ndcg@10")


@dataclass(frozen=True)
class EvaluateJob:
    """One `mmbee evaluate` run.

    Attributes:
        checkpoint: a `mmbee train` checkpoint.
        logdir: the log to evaluate on (None: the one the model was trained on).
        test_days: held-out days (None: as in training).
        cache_dir: example cache (None: next to the checkpoint).
        k: K of the ranking metrics.
        threads: torch CPU threads.
    """

    checkpoint: Path
    logdir: Path | None = None
    test_days: float | None = None
    cache_dir: Path | None = None
    k: int = 10
    threads: int = 1
    progress: bool = True


def run_evaluate(job: EvaluateJob, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load the checkpoint once, score the test split, return the metrics report."""
    import torch

    torch.set_num_threads(job.threads)
    model, config = load_checkpoint(job.checkpoint)
    data = config.get("data", {})
    logdir = job.logdir or (Path(data["logdir"]) if "logdir" in data else None)
    if logdir is None:
        raise ValueError(f"{job.checkpoint} does not name its log directory; pass LOGDIR")
    build = BuildConfig.from_dict(config["build"])
    test_days = job.test_days if job.test_days is not None else float(data.get("test_days", 1.0))
    cache = job.cache_dir or Path(job.checkpoint).parent / "cache"
    built = load_or_build(logdir, build, cache, job.progress, log)
    _, test_idx = split_by_time(built, test_days)
    scores = score_table(model, built.table, built.store, test_idx)
    return {
        "checkpoint": str(job.checkpoint),
        "logdir": str(logdir),
        "variant": model.config.variant,
        "test_examples": int(len(test_idx)),
        "test_positives": int(built.table.column("labels")[test_idx, 2].sum()),
        **test_report(built, test_idx, scores, job.k),
    }


def format_report(
    report: dict[str, Any], rows: tuple[str, ...] = ("test", "popularity", "oracle")
) -> str:
    """A markdown table of the report's metric rows."""
    lines = [
        "| scorer | " + " | ".join(METRIC_COLUMNS) + " |",
        "|---|" + "---|" * len(METRIC_COLUMNS),
    ]
    for name in rows:
        m = report.get(name)
        if m is None:
            continue
        label = report.get("variant", name) if name == "test" else name
        lines.append(
            f"| {label} | "
            + " | ".join(f"{m.get(c, float('nan')):.4f}" for c in METRIC_COLUMNS)
            + " |"
        )
    return "\n".join(lines)
