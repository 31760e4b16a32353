"""The composition root: the Faust app configured from `Settings`, with its components registered.

A *component* (`mmbee.streams.runtime.component.Component`, one module each in
`mmbee.streams.components`) is a frozen config, a pure step, a state codec, and a `register(ctx)`
that declares its agents, tables and web pages on `ctx.app` using what the context provides
(`mmbee.streams.runtime.context`: topic objects by catalogue name, tables with the configured
store options, the codec, the dead-letter sink, metrics, an executor for blocking work).
`COMPONENTS` holds the component objects by name; a worker runs the names in
`settings.components` (all of them when unset). Adding one is one module in `components/` and
one line here (docs/streams.md). Nothing below this module imports it.

Example:
    >>> from mmbee.settings import Settings
    >>> ctx = build_app(Settings(store="memory://"), components=[])  # doctest: +SKIP
    >>> ctx.app.conf.broker_session_timeout  # doctest: +SKIP
    6.0
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import faust

from mmbee.settings import Settings
from mmbee.streams import watchdog, web
from mmbee.streams.codec import EventCodec
from mmbee.streams.components import asr, graph, joiner, refresh, segments, serving
from mmbee.streams.dlq import DeadLetterSink
from mmbee.streams.metrics import StreamMetrics
from mmbee.streams.publish import FaustPublisher, Publisher
from mmbee.streams.runtime import compat
from mmbee.streams.runtime.component import Component
from mmbee.streams.runtime.context import Register, StreamContext, group_instance_id
from mmbee.streams.runtime.rocksdb import apply_rocksdb_budget

__all__ = [
    "COMPONENTS",
    "UnknownComponentError",
    "build_app",
    "create_app",
    "faust_settings",
    "resolve_components",
]

log = logging.getLogger("mmbee.streams")

COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        segments.COMPONENT,
        asr.COMPONENT,
        graph.COMPONENT,
        joiner.COMPONENT,
        serving.COMPONENT,
        refresh.COMPONENT,
    )
}
"""Component name -> the component (`mmbee.streams.runtime.component.Component`: frozen config,
pure step, state codec, register). The order is the registration order."""

_MIB = 1024 * 1024
PRODUCER_MAX_REQUEST_BYTES = 4 * _MIB
"""Dead letters carry up to 1 MiB of original bytes (base64 in JSON): above aiokafka's 1 MB."""


class UnknownComponentError(KeyError):
    """A component name that is not in `COMPONENTS`."""


def _credentials(settings: Settings) -> Any:
    if settings.security_protocol == "PLAINTEXT":
        return None
    context = None
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
        )
        if settings.ssl_certfile:
            context.load_cert_chain(
                str(settings.ssl_certfile),
                str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
            )
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(context)
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    return faust.SASLCredentials(
        username=settings.sasl_username or "",
        password=password,
        ssl_context=context,
        mechanism=settings.sasl_mechanism or "PLAIN",
    )


def faust_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of `faust.App` for these settings (see docs/streams.md for why)."""
    acks = {"0": 0, "1": 1, "all": -1}[settings.producer_acks or "1"]
    return {
        "broker": [f"kafka://{hp}" for hp in settings.bootstrap_list()],
        "broker_credentials": _credentials(settings),
        "store": settings.store,
        "datadir": str(settings.data_dir),
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor or 1,
        "topic_disable_leader": True,
        "table_standby_replicas": settings.standby_replicas or 0,
        "processing_guarantee": "at_least_once",
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": settings.heartbeat_interval_s,
        "broker_commit_interval": settings.commit_interval_s,
        "broker_rebalance_timeout": settings.rebalance_timeout_s,
        "consumer_group_instance_id": group_instance_id(settings),
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": acks,
        "producer_linger": settings.producer_linger_ms / 1000,
        "producer_max_request_size": PRODUCER_MAX_REQUEST_BYTES,
        # Agents that batch (segments, asr) hold acks until their state is persisted; faust must
        # not wait for those on rebalance/shutdown (the events are redelivered instead).
        "stream_wait_empty": False,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "web_enabled": True,
        "web_bind": settings.web_host,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "autodiscover": False,
    }


def resolve_components(
    names: Iterable[str | Component | Register] | None,
) -> list[tuple[str, Register]]:
    """(name, register) for each requested component (by name, a `Component`, or a bare
    register function); None = every registered one."""
    chosen: Iterable[str | Component | Register] = list(COMPONENTS) if names is None else names
    out: list[tuple[str, Register]] = []
    for entry in chosen:
        if isinstance(entry, Component):
            out.append((entry.name, entry))
            continue
        if callable(entry):
            out.append((getattr(entry, "__name__", repr(entry)), entry))
            continue
        target = COMPONENTS.get(entry)
        if target is None:
            raise UnknownComponentError(
                f"unknown stream component {entry!r}; registered: {sorted(COMPONENTS)}"
            )
        out.append((entry, target))
    return out


def _register_metrics_page(ctx: StreamContext) -> None:
    @ctx.app.page("/mmbee/metrics/")
    async def mmbee_metrics(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.json(ctx.metrics.snapshot())


def build_app(
    settings: Settings,
    components: Sequence[str | Component | Register] | None = None,
    *,
    publisher: Publisher | None = None,
    clock_ms: Callable[[], int] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> StreamContext:
    """Create the Faust app for `settings` and register `components` on it.

    Args:
        settings: deployment settings.
        components: names from `COMPONENTS` (or register functions); None = `settings.components`,
            and when that is unset too, every registered component.
        publisher: where agents send; default the app's own producer.
        clock_ms: wall clock in ms for dead-letter timestamps (default `time.time`).
        monotonic: monotonic clock of timeouts and of the metrics' timing.
    """
    compat.install(settings)  # version check, then the patches (runtime/compat.py)
    app = faust.App(settings.app_id, **faust_settings(settings))
    wall_ms = clock_ms or (lambda: int(time.time() * 1000))
    metrics = StreamMetrics(clock=monotonic)
    pub: Publisher = publisher if publisher is not None else FaustPublisher(app)
    ctx = StreamContext(
        app=app,
        settings=settings,
        codec=EventCodec(frame_dim=settings.frame_dim, text_dim=settings.text_dim),
        metrics=metrics,
        publisher=pub,
        dlq=DeadLetterSink(settings.topic("dlq"), pub, metrics, wall_ms),
        clock_ms=wall_ms,
        monotonic=monotonic,
    )
    _register_metrics_page(ctx)
    chosen = components if components is not None else settings.components
    for name, register in resolve_components(chosen):
        log.info("registering stream component %s", name)
        register(ctx)
    # operations: health/metrics/status pages, the worker's RocksDB budget over every table the
    # components declared, the dead-member watchdog (embedded broker only)
    web.install(ctx)
    apply_rocksdb_budget(ctx)
    watchdog.install(ctx)
    return ctx


def create_app(
    settings: Settings,
    components: Sequence[str | Component | Register] | None = None,
    **kwargs: Any,
) -> faust.App:
    """The configured Faust app with `components` registered (see `build_app`)."""
    return build_app(settings, components, **kwargs).app
