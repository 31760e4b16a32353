"""Online refresh, the model side: fine-tune a served checkpoint on recent joined examples.

The stream component `refresh` (`mmbee.streams.components.refresh`) buffers `train.examples`
and, when due, calls `refresh_model` on the executor. Everything here is model code: it reuses
`mmbee.scorer.train` (its optimiser, step, rows and scoring) rather than a copy of it, and knows
nothing of Faust or Kafka. `refresh_model`:

1. builds an `ExampleTable` of the examples (impression order) and the segment store they
   resolve to (`build_table`; segments the caller's store no longer keeps are left out, as a
   missing reference),
2. holds the newest `holdout` share out, then continues training the base checkpoint on the
   rest (`fine_tune`: AdamW, the checkpoint's negative subsampling rate and its calibration
   offset, a fixed seed) or, with no base and `bootstrap_variant` set, trains that variant from
   scratch (`train_model`),
3. writes the checkpoint atomically and returns it with the hold-out AUC of the new model and,
   when there was one, of the base (`auc_before`).

Example:
    >>> FineTuneConfig().holdout
    0.2
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmbee.schemas.scoring import TrainingExample
from mmbee.scorer.batch import TASKS
from mmbee.scorer.dataset import ExampleTable
from mmbee.scorer.examples import from_message
from mmbee.scorer.features import FeatureConfig, MemorySegmentStore
from mmbee.scorer.gtr import (
    GTRModel,
    config_for_variant,
    default_content_config,
    load_checkpoint,
    save_checkpoint,
)
from mmbee.scorer.metrics import auc
from mmbee.scorer.predict import checkpoint_features
from mmbee.scorer.train import (
    TrainConfig,
    make_optimizer,
    rows_for,
    score_table,
    train_model,
    train_step,
)

__all__ = ["FineTuneConfig", "RefreshResult", "build_table", "fine_tune", "refresh_model"]

log = logging.getLogger("mmbee.streams.components.refresh")  # the logger it had in streams/

StoreFor = Callable[[Iterable[tuple[str, int]]], MemorySegmentStore]
"""The segment store holding the given (author_id, segment start) keys that are still kept."""


@dataclass(frozen=True)
class FineTuneConfig:
    """How a refresh trains.

    Attributes:
        epochs, lr, batch_size, seed: the fine-tune.
        bootstrap_variant: variant trained from scratch when there is no base (None: wait).
        holdout: share of the newest examples held out for the AUC in the version's metrics.
    """

    epochs: int = 1
    lr: float = 5e-4
    batch_size: int = 512
    seed: int = 0
    bootstrap_variant: str | None = None
    holdout: float = 0.2


@dataclass
class RefreshResult:
    """A refresh's checkpoint and figures."""

    path: Path
    sha256: str
    examples: int
    samples_per_s: float
    metrics: dict[str, float]


def build_table(
    examples: Sequence[TrainingExample], features: FeatureConfig, store_for: StoreFor
) -> tuple[ExampleTable, MemorySegmentStore]:
    """An ExampleTable of `examples` (impression order) and the store their segments resolve to
    (segments `store_for` no longer keeps are left out, as a missing reference)."""
    ordered = sorted(examples, key=lambda m: (m.ts_ms, m.event_id))
    store = store_for((m.author_id, s) for m in ordered for s in m.segment_starts)
    table = ExampleTable(features)
    for m in ordered:
        table.add(from_message(m), store)
    return table, store


def fine_tune(
    model: GTRModel,
    ckpt_config: dict[str, Any],
    table: ExampleTable,
    store: MemorySegmentStore,
    idx: np.ndarray,
    config: FineTuneConfig,
) -> float:
    """Continue training `model` (loaded from a checkpoint with config `ckpt_config`) in place
    on examples `idx` of `table`; leaves it in eval mode with the calibrated offset and returns
    samples/s.

    Negatives are subsampled at the rate the checkpoint was trained with, and the served gift
    logit is shifted by log(rate) afterwards, as `train_model` does.
    """
    rate = float(ckpt_config.get("train", {}).get("negative_rate", 1.0))
    train = TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
        negative_rate=rate, device="cpu", progress=False,
    )  # fmt: skip
    with torch.no_grad():
        model.logit_offset.zero_()
    model.train()
    opt = make_optimizer(model, train)
    rng = np.random.default_rng(config.seed)
    rows = rows_for(model)
    positive = table.column("labels")[idx, TASKS.index("gift")] > 0
    samples, t0 = 0, time.perf_counter()
    for _ in range(config.epochs):
        keep = positive | (rng.random(len(idx)) < rate)
        epoch = idx[keep][rng.permutation(int(keep.sum()))]
        for lo in range(0, len(epoch), config.batch_size):
            batch = table.batch(epoch[lo : lo + config.batch_size], rows, store)
            train_step(model, opt, batch, train)
            samples += batch.batch_size
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        model.logit_offset[model.tasks.index("gift")] = math.log(rate)
    return samples / seconds if seconds > 0 else float("nan")


def refresh_model(
    examples: Sequence[TrainingExample],
    base: Path | None,
    features: FeatureConfig,
    store_for: StoreFor,
    config: FineTuneConfig,
    path: Path,
) -> RefreshResult | None:
    """Build, train, evaluate and write to `path` (blocking). `features` is used when there is
    no `base` (a base brings its own). None: nothing to train (no base and no bootstrap variant,
    or no positive example among the training share).

    Raises:
        OSError, ValueError, RuntimeError, KeyError: `base` cannot be loaded or trained.
    """
    torch.set_num_threads(1)
    old: tuple[GTRModel, dict[str, Any]] | None = None
    if base is not None:
        old = load_checkpoint(base)
        features = checkpoint_features(old[1])
    elif config.bootstrap_variant is None:
        return None
    table, store = build_table(examples, features, store_for)
    n = len(table)
    cut = int(n * (1 - config.holdout))
    train_idx, test_idx = np.arange(cut), np.arange(cut, n)
    if table.column("labels")[train_idx, TASKS.index("gift")].sum() == 0:
        log.info("refresh skipped: no positive example among %d", cut)
        return None
    metrics: dict[str, float] = {}
    if old is not None:
        model, ckpt_config = old
        metrics["auc_before"] = _holdout_auc(model, table, store, test_idx)
        rate = fine_tune(model, ckpt_config, table, store, train_idx, config)
    else:
        assert config.bootstrap_variant is not None
        overrides: dict[str, Any] = {}
        if "mfq" in config.bootstrap_variant.split("_"):
            overrides["content_config"] = default_content_config(
                "mfq", store.frame_dim, store.text_dim
            )
        mc = config_for_variant(config.bootstrap_variant, **overrides)
        train = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                            device="cpu", progress=False)  # fmt: skip
        ckpt_config = {"build": {"features": asdict(features)}, "train": train.to_dict()}
        result = train_model(mc, table, store, train_idx, train)
        model, rate = result.model, result.samples_per_s
    metrics["auc"] = _holdout_auc(model, table, store, test_idx)
    metrics["train_samples_per_s"] = rate
    ckpt_config = dict(ckpt_config)
    ckpt_config["data"] = {"source": "refresh", "examples": n, "train_examples": cut}
    sha = _save(path, model, ckpt_config)
    return RefreshResult(path, sha, n, rate, {k: v for k, v in metrics.items() if math.isfinite(v)})


def _save(path: Path, model: GTRModel, config: dict[str, Any]) -> str:
    """Write a checkpoint atomically; returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    extra = {k: v for k, v in config.items() if k != "model"}
    save_checkpoint(tmp, model, extra)
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _holdout_auc(
    model: GTRModel, table: ExampleTable, store: MemorySegmentStore, idx: np.ndarray
) -> float:
    y = table.column("labels")[idx, TASKS.index("gift")]
    if len(idx) == 0 or y.min() == y.max():
        return float("nan")
    return float(auc(y, score_table(model, table, store, idx)))
