"""Component `refresh`: fine-tune the served model on recent joined examples, publish a version.

Run it on ONE worker (`MMBEE_REFRESH_INTERVAL_S` set there only). It reads every partition of
`train.examples` into a bounded buffer (`apply`: the newest `refresh_max_examples`, redeliveries
skipped; core: `mmbee.state.examples`), and every `refresh_interval_s` of wall time, when at
least `refresh_min_examples` new examples arrived, it

1. picks the base: the newest version announced on `model.versions` (what every serving worker
   swaps to; this worker needs no `serving` of its own), else the checkpoint a local `serving`
   component serves, else, with `refresh_bootstrap_variant` set, none (train from scratch);
2. fine-tunes (or trains) on the executor with the segment features the worker's segment view
   still keeps (`views_retain_ms`): `mmbee.scorer.refresh.refresh_model`, the model side;
3. writes the checkpoint atomically into `model_dir` and publishes a `ModelVersion` (source
   "refresh") on `model.versions`; every serving worker then hot-swaps to it.

The newest fifth of the buffer is held out: the version carries the AUC of the new and of the
previous model on it (`metrics`). Nothing is rolled back automatically. A base that cannot be
loaded or trained is logged and counted (`failed`) and not tried again until a newer version is
announced; the timer keeps running.

The buffer is not stored in a table (codec None): it is rebuilt by reading `train.examples` again
after a restart, as the views reader does for every worker.

Example:
    >>> from mmbee.settings import Settings
    >>> config(Settings(refresh_interval_s=60)).interval_s
    60.0
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from pydantic import BaseModel

from mmbee.schemas.scoring import TrainingExample
from mmbee.schemas.serving import ModelVersion
from mmbee.scorer.refresh import FineTuneConfig, RefreshResult, refresh_model
from mmbee.settings import Settings
from mmbee.state.examples import ExampleBuffer
from mmbee.streams.components.serving import ServingRuntime
from mmbee.streams.runtime.component import Component, Step
from mmbee.streams.runtime.context import StreamContext
from mmbee.streams.views import views

__all__ = ["AGENT_REFRESH", "COMPONENT", "RefreshConfig", "RefreshRuntime", "apply", "config",
           "register"]  # fmt: skip

log = logging.getLogger("mmbee.streams.components.refresh")

AGENT_REFRESH = "refresh"
REFRESH_ERRORS = (OSError, ValueError, RuntimeError, KeyError)
"""What loading or training an announced base may raise (a missing file, not a GTR checkpoint,
a content encoder that does not fit the segments here)."""


@dataclass(frozen=True)
class RefreshConfig(FineTuneConfig):
    """When the worker fine-tunes, and how (the `FineTuneConfig` fields).

    Attributes:
        interval_s: wall seconds between refresh attempts (0: off).
        min_examples: new examples needed since the last refresh.
        max_examples: examples buffered (the newest).
        model_dir: where checkpoints are written.
        model_name: the `model.versions` key.

    Example:
        >>> RefreshConfig(interval_s=1.0).min_examples
        500
    """

    interval_s: float = 300.0
    min_examples: int = 500
    max_examples: int = 50_000
    model_dir: Path = Path(".mmbee/models")
    model_name: str = "gtr"


def config(settings: Settings) -> RefreshConfig:
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


def apply(
    cfg: RefreshConfig, state: ExampleBuffer, item: TrainingExample
) -> Step[ExampleBuffer, Any]:
    """One example into the buffer (in place); nothing to publish or dead-letter: a redelivered
    example is skipped (`ExampleBuffer.add`), the training runs on the timer."""
    state.add(item)
    return Step(state)


class RefreshRuntime:
    """The refresh component's worker: the example buffer, the schedule, what was published.

    Args:
        ctx: the stream context.
        config: the refresh config.
        serving: the serving runtime (the model to continue from), or None.
    """

    def __init__(
        self, ctx: StreamContext, config: RefreshConfig, serving: ServingRuntime | None
    ) -> None:
        self.ctx = ctx
        self.config = config
        self.serving = serving
        self.views = views(ctx)
        self.buffer = ExampleBuffer(config.max_examples)
        self.running = False
        self.refreshes = 0
        self.failed: set[str] = set()  # bases that could not be loaded or trained
        self.last: dict[str, Any] = {}
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="mmbee-refresh")

    def take(self, m: BaseModel) -> None:
        """An example read from `train.examples`, through the step."""
        assert isinstance(m, TrainingExample)
        self.buffer = apply(self.config, self.buffer, m).state

    def base(self) -> tuple[Path, str] | None:
        """The checkpoint to continue from and its version: the newest announced on
        `model.versions`, else the file a local `serving` component serves; None for none."""
        mv = self.views.models.get(self.config.model_name)
        if mv is not None:
            return Path(mv.path), mv.version
        source = self.serving.models.source if self.serving is not None else {}
        if "path" in source and source.get("version"):
            return Path(source["path"]), str(source["version"])
        return None

    def run_once(
        self, examples: list[TrainingExample], base: Path | None, now_ms: int
    ) -> RefreshResult | None:
        """Build, train, evaluate, write `refresh-<now_ms>.pt` (blocking: on the executor)."""
        views, cfg = self.views, self.config
        return refresh_model(examples, base, views.sources.features, views.segments.store_for,
                             cfg, cfg.model_dir / f"refresh-{now_ms}.pt")  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """The buffer, the schedule and the last published version (`/mmbee/refresh/`)."""
        return {
            "interval_s": self.config.interval_s,
            "buffered": len(self.buffer),
            "new": self.buffer.new,
            "running": self.running,
            "refreshes": self.refreshes,
            "failed": sorted(self.failed),
            "last": self.last,
        }

    async def tick(self) -> ModelVersion | None:
        """Refresh when due; returns the published version."""
        if self.running or self.buffer.new < self.config.min_examples:
            return None
        if not self.views.reader.caught_up.is_set():
            return None
        found = self.base()
        base, parent = found if found is not None else (None, None)
        if parent in self.failed or (base is None and self.config.bootstrap_variant is None):
            return None
        self.running = True
        examples = self.buffer.take()
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
    """The example buffer (all partitions of `train.examples`), the fine-tune timer (off unless
    `refresh_interval_s` is set) and `/mmbee/refresh/`."""
    cfg = config(ctx.settings)
    serving = ctx.runtimes.get("serving")  # a serving component on this worker, if any
    runtime = RefreshRuntime(ctx, cfg, serving if isinstance(serving, ServingRuntime) else None)
    ctx.runtimes[AGENT_REFRESH] = runtime
    runtime.views.reader.add_handler("train.examples", runtime.take)

    @ctx.app.page("/mmbee/refresh/")
    async def refresh_state(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.json(runtime.describe())

    if cfg.interval_s <= 0:
        return

    @ctx.app.timer(cfg.interval_s, name="mmbee.refresh")
    async def refresh() -> None:
        await runtime.tick()


COMPONENT = Component(name="refresh", config=config, apply=apply, codec=None, register=register)
