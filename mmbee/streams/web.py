"""The worker's operational web endpoints: health probes, Prometheus metrics, a status summary.

Registered on every app by `build_app` (`install`), on the worker's web port
(`MMBEE_WEB_PORT`, 6066):

| path | what |
|---|---|
| `/mmbee/health/live/` | liveness: 200 while the app runs, 503 once it crashed or is stopping |
| `/mmbee/health/ready/` | readiness: 200 once the worker got its partitions and recovered its tables; 503 while (re)balancing or recovering, with the reason |
| `/metrics` | Prometheus text format: events/s, errors and dead letters per agent, consumer lag per partition, segment-buffer sizes, graph size, scoring latency histogram, model version, log records by level |
| `/mmbee/status/` | the same as one JSON summary (`mmbee status` prints it) |
| `/` | the live page for people: top streams, events/s and lag charts, dead letters, model, health (`mmbee/streams/page/`) |
| `/mmbee/page/` | the live page's data as JSON: the status, the last minutes of samples, the last dead letters, the top streams |

Two timers feed it: consumer lag every `metrics_lag_interval_s` (end offsets from the broker,
committed offsets from the consumer) and the agents' processed totals every second (events/s
over `metrics_rate_window_s`). They also keep the last `PAGE_HISTORY_S` seconds of both in ring
buffers for the page's charts; everything else the page shows is computed when it is asked
for (the top streams at most once per 2 s however many pages are open).

Example:
    >>> from mmbee.settings import Settings
    >>> from mmbee.streams.app import build_app
    >>> ctx = build_app(Settings(store="memory://"), components=[])  # doctest: +SKIP
    >>> ROUTES["metrics"] in {v.view_path for v in ctx.app.web.views.values()}  # doctest: +SKIP
    True
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import faust
from aiokafka.errors import KafkaError as AIOKafkaError
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from mmbee.streams.observability import (
    Observability,
    PartitionLag,
    Sample,
    observability,
    render_prometheus,
)
from mmbee.streams.page import PAGE_ASSETS, page_asset
from mmbee.streams.page.history import DLQ_LOGGER, RecentDeadLetters, SeriesRing
from mmbee.streams.runtime.compat import committed_offsets
from mmbee.streams.runtime.context import Inspectable, StreamContext, group_instance_id

__all__ = [
    "ROUTES",
    "PROMETHEUS_CONTENT_TYPE",
    "WorkerHealth",
    "install",
    "collect",
    "status",
    "source_partitions",
    "PAGE_HISTORY_S",
    "PageState",
    "page_data",
]

log = logging.getLogger("mmbee.streams.web")

ROUTES = {
    "live": "/mmbee/health/live/",
    "ready": "/mmbee/health/ready/",
    "metrics": "/metrics",
    "status": "/mmbee/status/",
    "page": "/",
    "page_data": "/mmbee/page/",
}
"""The operational routes (the deploy manifests' probes and scrape annotations use these)."""
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4"

_PAGE_HEADERS = {
    # the page loads nothing from outside the worker and runs no inline script
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "Cache-Control": "no-store",
}

_RUNTIME_KEY = "web"
_PAGE_KEY = "page"

PAGE_HISTORY_S = 300.0
"""How far back the page's charts reach (seconds)."""


@dataclass
class WorkerHealth:
    """Liveness and readiness of one worker's app.

    Example:
        >>> h = WorkerHealth()
        >>> h.readiness(state="running", rebalancing=False, in_recovery=False)
        (False, 'waiting for the first partition assignment')
        >>> h.assigned_once = True
        >>> h.readiness(state="running", rebalancing=False, in_recovery=True)
        (False, 'recovering tables from their changelogs')
    """

    assigned_once: bool = False
    assignments: int = 0

    @staticmethod
    def liveness(state: str) -> tuple[bool, str]:
        """Alive unless the app crashed or is shutting down (a restart is the cure)."""
        if state in ("crashed", "stopping", "shutdown"):
            return False, f"app {state}"
        return True, "ok"

    def readiness(self, *, state: str, rebalancing: bool, in_recovery: bool) -> tuple[bool, str]:
        """Ready once the app runs, has been assigned its partitions at least once (none is a
        valid assignment: more workers than partitions), and is neither rebalancing nor
        recovering tables."""
        alive, why = self.liveness(state)
        if not alive:
            return False, why
        if state != "running":
            return False, f"app {state}"
        if not self.assigned_once:
            return False, "waiting for the first partition assignment"
        if rebalancing:
            return False, "rebalancing"
        if in_recovery:
            return False, "recovering tables from their changelogs"
        return True, "ok"


def _health(ctx: StreamContext) -> WorkerHealth:
    got = ctx.runtimes.get(_RUNTIME_KEY)
    if got is None:
        got = ctx.runtimes[_RUNTIME_KEY] = WorkerHealth()
    assert isinstance(got, WorkerHealth)
    return got


def _ready(ctx: StreamContext) -> tuple[bool, str]:
    app = ctx.app
    return _health(ctx).readiness(
        state=app.state,
        rebalancing=bool(getattr(app, "rebalancing", False)),
        in_recovery=bool(getattr(app, "in_recovery", False)),
    )


def source_partitions(ctx: StreamContext) -> set[TP]:
    """Partitions this worker is active for, changelogs excluded (empty before assignment)."""
    app = ctx.app
    try:
        actives = app.assignor.assigned_actives()
    except AttributeError:  # no assignment made yet
        return set()
    return {tp for tp in actives if not tp.topic.endswith("-changelog")}


async def sample_lag(ctx: StreamContext, obs: Observability, timeout_s: float) -> None:
    """Read end offsets (from the broker) and committed offsets of the assigned source
    partitions into `obs`; a failure (rebalance in progress, broker away) keeps the last
    figures and notes the error."""
    tps = sorted(source_partitions(ctx))
    if not tps:
        obs.set_lag([])
        return
    consumer = ctx.app.consumer
    try:
        end = await asyncio.wait_for(consumer.highwaters(*tps), timeout_s)
        known = committed_offsets(consumer)  # fetched at assignment, and committed since
        committed: dict[TP, int | None] = {tp: known.get(tp) for tp in tps}
        missing = [tp for tp, off in committed.items() if off is None]
        if missing:
            earliest = await asyncio.wait_for(consumer.earliest_offsets(*missing), timeout_s)
            committed.update({tp: earliest.get(tp) for tp in missing})
    except (ConsumerNotStarted, AIOKafkaError, TimeoutError) as exc:
        obs.set_lag([], error=f"{type(exc).__name__}: {exc}")
        log.debug("lag sample failed: %r", exc)
        return
    obs.set_lag(PartitionLag(tp.topic, tp.partition, committed.get(tp), end.get(tp)) for tp in tps)


def _component_samples(ctx: StreamContext) -> Iterator[Sample]:
    for runtime in list(ctx.runtimes.values()):
        if isinstance(runtime, Inspectable):
            yield from runtime.samples()


def collect(ctx: StreamContext) -> list[Sample]:
    """Every sample `/metrics` serves."""
    obs = observability(ctx)
    ready, _ = _ready(ctx)
    out = list(obs.samples(ctx.metrics))
    out.extend(_component_samples(ctx))
    out.append(("mmbee_assigned_partitions", {}, float(len(source_partitions(ctx)))))
    out.append(("mmbee_worker_ready", {}, 1.0 if ready else 0.0))
    return out


def status(ctx: StreamContext) -> dict[str, Any]:
    """The one-screen summary as JSON-able data (`/mmbee/status/`, `mmbee status`)."""

    obs = observability(ctx)
    settings = ctx.settings
    ready, why = _ready(ctx)
    alive, _ = WorkerHealth.liveness(ctx.app.state)
    rates = obs.agent_rates(ctx.metrics)
    agents = {}
    for name, a in sorted(ctx.metrics.snapshot()["agents"].items()):
        agents[name] = {
            "processed": a["counters"].get("processed", 0),
            "per_s": round(rates.get(name, 0.0), 1),
            "errors": sum(a["dlq"].values()),
            "dlq": a["dlq"],
        }
    lags: dict[str, dict[str, int | None]] = {}
    for x in obs.lag:
        lags.setdefault(x.topic, {})[str(x.partition)] = x.lag
    assigned = source_partitions(ctx)
    # offset of the last message this worker read, per assigned partition (faust's monitor)
    read_offsets = ctx.app.monitor.tp_read_offsets
    read = {f"{tp.topic}:{tp.partition}": read_offsets[tp] for tp in assigned if tp in read_offsets}
    components = dict((name, value) for name, _, value in _component_samples(ctx))  # flat gauges
    latency = obs.scoring_latency
    now = obs.clock()
    return {
        "worker": {
            "app_id": settings.app_id,
            "instance": group_instance_id(settings) or socket.gethostname(),
            "pid": os.getpid(),
            "profile": settings.profile,
            "bootstrap": settings.bootstrap_servers,
            "web_port": settings.web_port,
            "uptime_s": round(now - obs.started_s, 1),
            "state": ctx.app.state,
            "live": alive,
            "ready": ready,
            "ready_reason": why,
            "assignments": _health(ctx).assignments,
        },
        "partitions": {
            "assigned": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
            "read": read,
            "lag": lags,
            "lag_total": obs.lag_total(),
            "lag_age_s": None if obs.lag_sampled_s is None else round(now - obs.lag_sampled_s, 1),
            "lag_error": obs.lag_error,
        },
        "agents": agents,
        "components": {k.removeprefix("mmbee_"): v for k, v in components.items()},
        "scoring": {
            "requests": latency.count,
            "p50_ms": None if latency.count == 0 else round(1000 * latency.quantile(0.5), 2),  # type: ignore[operator]
            "p99_ms": None if latency.count == 0 else round(1000 * latency.quantile(0.99), 2),  # type: ignore[operator]
        },
        "model": {"version": obs.model_version, "loaded_at_ms": obs.model_loaded_at_ms},
        "log_records": {
            f"{lvl}:{logger}": n for (lvl, logger), n in obs.log_counter.counts.items()
        },
    }


@dataclass
class PageState:
    """What the live page keeps between requests: ring buffers of processed totals per agent
    and of lag per partition (fed by the existing timers), the last dead letters (from the DLQ
    log lines) and the cached top-streams panel."""

    processed: SeriesRing
    lag: SeriesRing
    letters: RecentDeadLetters
    top: Any  # mmbee.streams.page.top.TopStreams, made on the first request
    requests: int = 0


def _page_state(ctx: StreamContext) -> PageState:
    got = ctx.runtimes.get(_PAGE_KEY)
    if got is None:
        # a little under the timers' periods, so a timer firing early does not skip a sample
        step = max(1.0, 0.9 * ctx.settings.metrics_lag_interval_s)
        got = ctx.runtimes[_PAGE_KEY] = PageState(
            processed=SeriesRing(PAGE_HISTORY_S, step_s=1.9),
            lag=SeriesRing(PAGE_HISTORY_S, step_s=step),
            letters=RecentDeadLetters(keep=8, clock_ms=ctx.clock_ms),
            top=None,
        )
    assert isinstance(got, PageState)
    return got


async def page_data(ctx: StreamContext) -> dict[str, Any]:
    """Everything the live page shows, as JSON-able data (`/mmbee/page/`): the status
    (`status(ctx)`, the same numbers as `/mmbee/status/`), events/s per agent and lag per
    partition over the last minutes (`[seconds before now, value]` points), dead letters by
    agent and reason with the last few, and the top streams."""
    from mmbee.streams.page.top import TopStreams

    cpu0 = time.thread_time()
    state = _page_state(ctx)
    state.requests += 1
    if state.top is None:
        state.top = TopStreams(ctx, clock=ctx.monotonic)
    now = ctx.monotonic()
    s = status(ctx)
    out = {
        "status": s,
        "now_ms": ctx.clock_ms(),
        "history_s": PAGE_HISTORY_S,
        "rates": state.processed.rates(now),
        "lag": state.lag.points(now),
        "dead_letters": {
            "by_agent": {a: v["dlq"] for a, v in s["agents"].items() if v["dlq"]},
            "recent": state.letters.letters(),
        },
    }
    # CPU of this request on the event loop, the top streams aside (they report their own
    # `cpu_ms` when computed; a cached answer costs nothing more)
    out["cpu_ms"] = round(1000 * (time.thread_time() - cpu0), 2)
    out["top"] = await state.top.get()
    return out


def install(ctx: StreamContext) -> None:
    """Register the health, metrics and status pages and the sampling timers on `ctx.app`."""
    app = ctx.app
    settings = ctx.settings
    obs = observability(ctx)
    health = _health(ctx)
    page = _page_state(ctx)
    dlq_log = logging.getLogger(DLQ_LOGGER)
    dlq_log.addHandler(page.letters)
    weakref.finalize(ctx, dlq_log.removeHandler, page.letters)  # one app per worker; tests make many

    async def on_assigned(_sender: Any, assigned: set[TP], **_: Any) -> None:
        health.assigned_once = True
        health.assignments += 1

    app.on_partitions_assigned.connect(cast(Any, on_assigned))  # mode types it loosely
    ctx.runtimes.setdefault("_receivers", []).append(on_assigned)  # signals may hold weakly

    @app.page(ROUTES["live"], name="mmbee_health_live")
    async def live(self: faust.web.View, request: faust.web.Request) -> Any:
        ok, why = WorkerHealth.liveness(app.state)
        return self.json({"live": ok, "reason": why}, status=200 if ok else 503)

    @app.page(ROUTES["ready"], name="mmbee_health_ready")
    async def ready(self: faust.web.View, request: faust.web.Request) -> Any:
        ok, why = _ready(ctx)
        return self.json({"ready": ok, "reason": why}, status=200 if ok else 503)

    @app.page(ROUTES["metrics"], name="mmbee_prometheus")
    async def metrics(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.text(render_prometheus(collect(ctx)), content_type=PROMETHEUS_CONTENT_TYPE)

    @app.page(ROUTES["status"], name="mmbee_status")
    async def status_page(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.json(status(ctx))

    @app.page(ROUTES["page"], name="mmbee_page")
    async def page_view(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.html(page_asset("index.html").decode(), headers=_PAGE_HEADERS)

    @app.page(ROUTES["page_data"], name="mmbee_page_data")
    async def page_json(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.json(await page_data(ctx), headers={"Cache-Control": "no-store"})

    for asset, ctype in PAGE_ASSETS.items():
        if asset == "index.html":
            continue

        def asset_view(name: str = asset, content_type: str = ctype) -> Any:
            async def get(self: faust.web.View, request: faust.web.Request) -> Any:
                return self.bytes(page_asset(name), content_type=content_type,
                                  headers={"Cache-Control": "max-age=3600"})  # fmt: skip

            return get

        app.page(f"{ROUTES['page_data']}{asset}", name=f"mmbee_page_{asset}")(asset_view())

    interval = settings.metrics_lag_interval_s

    @app.timer(interval, name="mmbee.observability.lag")
    async def lag_timer() -> None:
        await sample_lag(ctx, obs, timeout_s=max(interval, 1.0))
        if obs.lag_error is None:
            page.lag.record(obs.clock(), {f"{x.topic}:{x.partition}": x.lag for x in obs.lag})

    @app.timer(1.0, name="mmbee.observability.rates")
    async def rate_timer() -> None:
        obs.sample_rates(ctx.metrics)
        now = obs.clock()
        if page.processed.due(now):
            agents = ctx.metrics.snapshot()["agents"]
            page.processed.record(now, {a: m["counters"].get("processed", 0) for a, m in agents.items()})
