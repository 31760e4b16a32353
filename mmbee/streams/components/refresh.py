"""Online refresh: fine-tune the served model on recently joined examples and publish a version.

Component `refresh` (run it on ONE worker: `MMBEE_REFRESH_INTERVAL_S` set there only). It reads
every partition of `train.examples` into a bounded buffer (the newest `refresh_max_examples`)
and every `refresh_interval_s` of wall time, when at least `refresh_min_examples` new examples
arrived, it

1. builds an `ExampleTable` from the buffered examples and a segment store from the worker's
   segment view (the examples refer to segments by key; their features are kept for
   `views_retain_ms`),
2. fine-tunes the newest version announced on `model.versions` (what every serving worker
   swaps to; the worker needs no `serving` component of its own) on the executor (`fine_tune`:
   AdamW, the checkpoint's negative subsampling rate with its calibration offset, a fixed seed),
   or, with no version announced, the checkpoint a local `serving` component was pointed at
   (`model_path`), or, with neither and `refresh_bootstrap_variant` set, trains that variant from
   scratch (`mmbee.scorer.train.train_model`),
3. writes the checkpoint atomically into `model_dir` and publishes a `ModelVersion`
   (source "refresh") on `model.versions`; every serving worker then hot-swaps to it.

The newest fifth of the buffer (by impression time) is held out: the published version carries
the AUC of the new and of the previous model on it (`metrics`), so an operator can see whether a
refresh helped. Nothing is rolled back automatically. A base that cannot be loaded or trained
(a missing or foreign file) is logged and counted (`failed`) and not tried again until a newer
version is announced; the timer keeps running.

Example:
    >>> from mmbee.settings import Settings
    >>> refresh_config(Settings(refresh_interval_s=60)).interval_s
    60.0
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faust
import numpy as np
import torch
from pydantic import BaseModel

from mmbee.schemas.scoring import TrainingExample
from mmbee.schemas.serving import ModelVersion
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
from mmbee.settings import Settings
from mmbee.streams.runtime.context import StreamContext
from mmbee.streams.views import SegmentView, views

__all__ = [
    "AGENT_REFRESH",
    "RefreshConfig",
    "refresh_config",
    "RefreshResult",
    "build_table",
    "fine_tune",
    "RefreshRuntime",
    "register",
]

log = logging.getLogger("mmbee.streams.components.refresh")

AGENT_REFRESH = "refresh"
REFRESH_ERRORS = (OSError, ValueError, RuntimeError, KeyError)
"""What loading or training an announced base may raise (a missing file, not a GTR checkpoint,
a content encoder that does not fit the segments here)."""


@dataclass(frozen=True)
class RefreshConfig:
    """When and how the worker fine-tunes.

    Attributes:
        interval_s: wall seconds between refresh attempts.
        min_examples: new examples needed since the last refresh.
        max_examples: examples buffered (the newest).
        epochs, lr, batch_size, seed: the fine-tune.
        model_dir: where checkpoints are written.
        model_name: the `model.versions` key.
        bootstrap_variant: variant trained from scratch when nothing is served (None: wait).
        holdout: share of the newest examples held out for the AUC in the version's metrics.

    Example:
        >>> RefreshConfig(interval_s=1.0).min_examples
        500
    """

    interval_s: float = 300.0
    min_examples: int = 500
    max_examples: int = 50_000
    epochs: int = 1
    lr: float = 5e-4
    batch_size: int = 512
    seed: int = 0
    model_dir: Path = Path(".mmbee/models")
    model_name: str = "gtr"
    bootstrap_variant: str | None = None
    holdout: float = 0.2


def refresh_config(settings: Settings) -> RefreshConfig:
    """The refresh config under these settings (interval 0 when refresh is off)."""
    return RefreshConfig(
        interval_s=float(settings.refresh_interval_s or 0.0),
        min_examples=settings.refresh_min_examples,
        max_examples=settings.refresh_max_examples,
        epochs=settings.refresh_epochs,
        lr=settings.refresh_lr,
        batch_size=settings.refresh_batch_size,
        model_dir=settings.model_dir,
        model_name=settings.serving_model_name,
        bootstrap_variant=settings.refresh_bootstrap_variant,
    )


@dataclass
class RefreshResult:
    """A refresh's checkpoint and figures."""

    path: Path
    sha256: str
    examples: int
    samples_per_s: float
    metrics: dict[str, float]


def build_table(
    examples: Sequence[TrainingExample], features: FeatureConfig, segments: SegmentView
) -> tuple[ExampleTable, MemorySegmentStore]:
    """An ExampleTable of `examples` (impression order) and the store their segments resolve to
    (segments whose features the view no longer keeps are left out, as a missing reference)."""
    ordered = sorted(examples, key=lambda m: (m.ts_ms, m.event_id))
    store = segments.store_for((m.author_id, s) for m in ordered for s in m.segment_starts)
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
    config: RefreshConfig,
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


def _save(path: Path, model: GTRModel, config: dict[str, Any]) -> str:
    """Write a checkpoint atomically; returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    extra = {k: v for k, v in config.items() if k != "model"}
    save_checkpoint(tmp, model, extra)
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _holdout_auc(model: GTRModel, table: ExampleTable, store: MemorySegmentStore,
                 idx: np.ndarray) -> float:  # fmt: skip
    y = table.column("labels")[idx, TASKS.index("gift")]
    if len(idx) == 0 or y.min() == y.max():
        return float("nan")
    return float(auc(y, score_table(model, table, store, idx)))


class RefreshRuntime:
    """The refresh component's state: the example buffer and the schedule.

    Args:
        ctx: the stream context.
        config: the refresh config.
        serving: the serving runtime (the model to continue from), or None.
    """

    def __init__(self, ctx: StreamContext, config: RefreshConfig, serving: Any | None) -> None:
        self.ctx = ctx
        self.config = config
        self.serving = serving
        self.views = views(ctx)
        self.buffer: deque[TrainingExample] = deque(maxlen=config.max_examples)
        self.seen: set[str] = set()
        self.new = 0
        self.running = False
        self.refreshes = 0
        self.failed: set[str] = set()  # bases that could not be loaded or trained
        self.last: dict[str, Any] = {}
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="mmbee-refresh")

    def take(self, m: BaseModel) -> None:
        """An example read from `train.examples` (duplicates by event id are skipped)."""
        assert isinstance(m, TrainingExample)
        if m.event_id in self.seen:
            return
        if len(self.buffer) == self.buffer.maxlen:
            self.seen.discard(self.buffer[0].event_id)
        self.buffer.append(m)
        self.seen.add(m.event_id)
        self.new += 1

    def base(self) -> tuple[Path, str] | None:
        """The checkpoint to continue from and its version: the newest announced on
        `model.versions`, else the file a local `serving` component serves; None for none."""
        mv = self.views.models.get(self.config.model_name)
        if mv is not None:
            return Path(mv.path), mv.version
        source = getattr(self.serving, "source", {}) if self.serving is not None else {}
        if "path" in source and source.get("version"):
            return Path(source["path"]), str(source["version"])
        return None

    def run_once(self, examples: list[TrainingExample], base: Path | None,
                 now_ms: int) -> RefreshResult | None:  # fmt: skip
        """Build, train, evaluate, write (blocking: the executor runs it).

        Raises:
            OSError, ValueError, RuntimeError, KeyError: `base` cannot be loaded or trained.
        """
        torch.set_num_threads(1)
        cfg = self.config
        features = self.views.sources.features
        old: tuple[GTRModel, dict[str, Any]] | None = None
        if base is not None:
            old = load_checkpoint(base)
            features = checkpoint_features(old[1])
        elif cfg.bootstrap_variant is None:
            return None
        table, store = build_table(examples, features, self.views.segments)
        n = len(table)
        cut = int(n * (1 - cfg.holdout))
        train_idx, test_idx = np.arange(cut), np.arange(cut, n)
        labels = table.column("labels")[train_idx, TASKS.index("gift")]
        if labels.sum() == 0:
            log.info("refresh skipped: no positive example among %d", cut)
            return None
        metrics: dict[str, float] = {}
        if old is not None:
            model, ckpt_config = old
            metrics["auc_before"] = _holdout_auc(model, table, store, test_idx)
            rate = fine_tune(model, ckpt_config, table, store, train_idx, cfg)
        else:
            assert cfg.bootstrap_variant is not None
            overrides: dict[str, Any] = {}
            if "mfq" in cfg.bootstrap_variant.split("_"):
                overrides["content_config"] = default_content_config(
                    "mfq", store.frame_dim, store.text_dim
                )
            mc = config_for_variant(cfg.bootstrap_variant, **overrides)
            train = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                                device="cpu", progress=False)  # fmt: skip
            ckpt_config = {"build": {"features": asdict(features)}, "train": train.to_dict()}
            result = train_model(mc, table, store, train_idx, train)
            model, rate = result.model, result.samples_per_s
        metrics["auc"] = _holdout_auc(model, table, store, test_idx)
        metrics["train_samples_per_s"] = rate
        ckpt_config = dict(ckpt_config)
        ckpt_config["data"] = {"source": "refresh", "examples": n, "train_examples": cut}
        path = cfg.model_dir / f"refresh-{now_ms}.pt"
        sha = _save(path, model, ckpt_config)
        return RefreshResult(
            path, sha, n, rate, {k: v for k, v in metrics.items() if math.isfinite(v)}
        )

    def describe(self) -> dict[str, Any]:
        """The buffer, the schedule and the last published version (`/mmbee/refresh/`)."""
        return {
            "interval_s": self.config.interval_s,
            "buffered": len(self.buffer),
            "new": self.new,
            "running": self.running,
            "refreshes": self.refreshes,
            "failed": sorted(self.failed),
            "last": self.last,
        }

    async def tick(self) -> ModelVersion | None:
        """Refresh when due; returns the published version."""
        if self.running or self.new < self.config.min_examples:
            return None
        if not self.views.reader.caught_up.is_set():
            return None
        found = self.base()
        base, parent = found if found is not None else (None, None)
        if parent in self.failed or (base is None and self.config.bootstrap_variant is None):
            return None
        self.running, self.new = True, 0
        examples = list(self.buffer)
        now_ms = self.ctx.clock_ms()
        try:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(
                self.executor, self.run_once, examples, base, now_ms
            )
        except REFRESH_ERRORS as exc:
            self.failed.add(str(parent))
            self.ctx.metrics.count(AGENT_REFRESH, "failed")
            log.error("refresh_failed base=%s version=%s error=%s: %s", base, parent,
                      type(exc).__name__, exc)  # fmt: skip
            return None
        finally:
            self.running = False
        if result is None:
            return None
        mv = ModelVersion(
            model_name=self.config.model_name,
            version=f"refresh-{now_ms}-{result.sha256[:8]}",
            path=str(result.path.resolve()),
            sha256=result.sha256,
            created_at_ms=now_ms,
            source="refresh",
            parent_version=parent,
            examples=result.examples,
            metrics=result.metrics,
        )
        await self.ctx.publish("model.versions", mv.model_name.encode(), self.ctx.codec.encode(mv))
        self.refreshes += 1
        self.last = mv.model_dump(mode="json")
        self.ctx.metrics.count(AGENT_REFRESH, "published")
        log.info("model_refreshed version=%s examples=%s metrics=%s", mv.version, mv.examples,
                 mv.metrics)  # fmt: skip
        return mv


def register(ctx: StreamContext) -> None:
    """Component `refresh`: the example buffer (all partitions of `train.examples`), the
    fine-tune timer (off unless `refresh_interval_s` is set) and `/mmbee/refresh/`."""
    config = refresh_config(ctx.settings)
    runtime = RefreshRuntime(ctx, config, ctx.runtimes.get("serving"))
    ctx.runtimes[AGENT_REFRESH] = runtime
    runtime.views.reader.add_handler("train.examples", runtime.take)

    @ctx.app.page("/mmbee/refresh/")
    async def refresh_state(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.json(runtime.describe())

    if config.interval_s <= 0:
        return

    @ctx.app.timer(config.interval_s, name="mmbee.refresh")
    async def refresh() -> None:
        await runtime.tick()
