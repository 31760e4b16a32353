"""The one Faust app factory: an app configured from `Settings`, with components registered by name.

A *component* is a module-level function `register(ctx: StreamContext) -> None` that declares its
agents, tables and web pages on `ctx.app` using what the context provides (topic objects by
catalogue name, tables with the configured store options, the codec, the dead-letter sink,
metrics, an executor for blocking work). `COMPONENTS` lists them by name; a worker runs the
names in `settings.components` (all of them when unset). Adding one is one line here plus a
`register` function in its own module (docs/streams.md).

Example:
    >>> from mmbee.settings import Settings
    >>> ctx = build_app(Settings(store="memory://"), components=[])  # doctest: +SKIP
    >>> ctx.app.conf.broker_session_timeout  # doctest: +SKIP
    6.0
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import faust
from faust.streams import _current_event  # faust 0.15: the contextvar behind current_event()
from faust.types import TP, EventT, TableT

from mmbee.schemas.topics import TOPICS
from mmbee.settings import Settings
from mmbee.streams.codec import EventCodec
from mmbee.streams.dlq import DeadLetterSink
from mmbee.streams.fetch_scope import install_fetch_scope
from mmbee.streams.handoff import install_inline_handoff, uninstall_inline_handoff
from mmbee.streams.metrics import StreamMetrics
from mmbee.streams.producer_flush import install_full_flush
from mmbee.streams.publish import FaustPublisher, Publisher
from mmbee.streams.recovery_order import install_sources_resume_after_flow

__all__ = [
    "COMPONENTS",
    "Component",
    "StreamContext",
    "UnknownComponentError",
    "build_app",
    "create_app",
    "faust_settings",
    "group_instance_id",
    "rocksdb_options",
    "resolve_components",
    "in_event_context",
    "clear_event_context",
]

log = logging.getLogger("mmbee.streams")

T = TypeVar("T")

Component = Callable[["StreamContext"], None]
"""Registers a component's agents/tables/pages on the context's app."""

COMPONENTS: dict[str, str] = {
    "segments": "mmbee.streams.content:register_segments",
    "asr": "mmbee.streams.content:register_asr",
    "graph": "mmbee.streams.graph_agent:register",
    "joiner": "mmbee.streams.joiner:register",
    "serving": "mmbee.streams.serving:register",
    "refresh": "mmbee.streams.refresh:register",
}
"""Component name -> "module:function". The order is the registration order."""

_MIB = 1024 * 1024
PRODUCER_MAX_REQUEST_BYTES = 4 * _MIB
"""Dead letters carry up to 1 MiB of original bytes (base64 in JSON): above aiokafka's 1 MB."""


class UnknownComponentError(KeyError):
    """A component name that is not in `COMPONENTS`."""


def in_event_context(event: EventT) -> None:
    """Make `event` Faust's current event in this task.

    Table writes take their changelog partition (and RocksDB partition) from the current event.
    Inside `stream.take()`-style batches the buffered events were consumed by another task, so
    an agent that writes a table while handling a batch sets the event it is applying first.
    """
    _current_event.set(weakref.ref(event))


def clear_event_context() -> None:
    """No current event in this task (table reads then look in every local partition)."""
    _current_event.set(None)


def rocksdb_options(settings: Settings) -> dict[str, int]:
    """Options of every RocksDB table partition (faust's own defaults are a 2 GiB block cache
    and 3 x 64 MiB write buffers per partition)."""
    return {
        "block_cache_size": settings.rocksdb_block_cache_mib * _MIB,
        "block_cache_compressed_size": settings.rocksdb_block_cache_mib * _MIB,
        "write_buffer_size": settings.rocksdb_write_buffer_mib * _MIB,
        "max_write_buffer_number": settings.rocksdb_max_write_buffers,
        "target_file_size_base": max(settings.rocksdb_write_buffer_mib, 8) * _MIB,
    }


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


def group_instance_id(settings: Settings) -> str | None:
    """This worker's static consumer-group member id (None: dynamic membership).

    Stable across restarts of the same worker (same host, same web port), distinct between
    workers of one host (they bind different web ports).
    """
    if not settings.static_membership:
        return None
    if settings.group_instance_id:
        return settings.group_instance_id
    return f"{settings.app_id}@{socket.gethostname()}:{settings.web_port}"


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


def resolve_components(names: Iterable[str | Component] | None) -> list[tuple[str, Component]]:
    """(name, register function) for each requested component; None = every registered one."""
    chosen: Iterable[str | Component] = list(COMPONENTS) if names is None else names
    out: list[tuple[str, Component]] = []
    for entry in chosen:
        if callable(entry):
            out.append((getattr(entry, "__name__", repr(entry)), entry))
            continue
        target = COMPONENTS.get(entry)
        if target is None:
            raise UnknownComponentError(
                f"unknown stream component {entry!r}; registered: {sorted(COMPONENTS)}"
            )
        module, _, attr = target.partition(":")
        out.append((entry, getattr(importlib.import_module(module), attr)))
    return out


@dataclass
class StreamContext:
    """What a component gets to declare its agents: the app and the shared services.

    Attributes:
        app: the Faust app.
        settings: the deployment's settings.
        codec: raw bytes <-> validated models (never raises).
        metrics: per-agent counters, served at /mmbee/metrics/.
        publisher: where agents send outputs (the app's producer in a worker).
        dlq: the dead-letter sink.
        clock_ms: wall-clock milliseconds (only for dead-letter timestamps; logic uses event time).
        monotonic: monotonic seconds (timeouts, e.g. how long an event waits for alignment).
        runtimes: objects components expose for inspection (tests, web pages), by component name.

    Example:
        >>> ctx.topic("live.gifts")  # doctest: +SKIP
        <Topic: mmbee.live.gifts>
    """

    app: faust.App
    settings: Settings
    codec: EventCodec
    metrics: StreamMetrics
    publisher: Publisher
    dlq: DeadLetterSink
    clock_ms: Callable[[], int]
    monotonic: Callable[[], float] = time.monotonic
    runtimes: dict[str, Any] = field(default_factory=dict)
    _topics: dict[tuple[str, ...], faust.TopicT] = field(default_factory=dict)
    _executor: ThreadPoolExecutor | None = None

    def topic_name(self, name: str) -> str:
        """Full topic name of catalogue topic `name` (KeyError for names not in the catalogue)."""
        if name not in TOPICS:
            raise KeyError(f"unknown topic {name!r}; known: {sorted(TOPICS)}")
        return self.settings.topic(name)

    def catalogue_name(self, full_name: str) -> str:
        """The catalogue name of a full topic name (the prefix removed)."""
        prefix = self.settings.topic_prefix
        return full_name[len(prefix) :] if full_name.startswith(prefix) else full_name

    def topic(self, *names: str) -> faust.TopicT:
        """A raw-bytes Faust topic over one or more catalogue topics (pre-created, never declared
        by Faust); the same object for the same names."""
        topic = self._topics.get(names)
        if topic is None:
            topic = self._topics[names] = self.app.topic(
                *(self.topic_name(n) for n in names),
                key_serializer="raw",
                value_serializer="raw",
                partitions=self.settings.partitions,
                internal=False,
            )
        return topic

    def table(self, name: str, *, help: str = "") -> TableT:
        """A changelogged table of raw bytes keyed by raw bytes, with the configured store and
        RocksDB options, partitioned like the source topics."""
        options = (
            rocksdb_options(self.settings) if self.settings.store.startswith("rocksdb") else None
        )
        return self.app.Table(
            name,
            default=None,
            key_type=bytes,  # bytes => faust's "raw" serializer for the store and changelog
            value_type=bytes,
            partitions=self.settings.partitions,
            options=options,
            help=help,
        )

    async def publish(self, name: str, key: bytes | None, value: bytes) -> None:
        """Send raw bytes to catalogue topic `name`."""
        await self.publisher.send(self.topic_name(name), key, value)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The worker's pool for blocking work (model inference), made on first use."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.settings.featurizer_threads, thread_name_prefix="mmbee-blocking"
            )
        return self._executor

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the executor so the event loop keeps heartbeating and committing."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def on_partitions_revoked(self, handler: Callable[[set[TP]], Awaitable[None] | None]) -> None:
        """Call `handler(revoked_tps)` when partitions are taken away from this worker."""

        def receiver(_sender: Any, /, *args: Any, signal: Any, **_: Any) -> Awaitable[None] | None:
            return handler(set(args[0]))  # args[0]: the revoked TPs

        self.app.on_partitions_revoked.connect(cast(Any, receiver))  # mode types it loosely
        # keep a strong reference: the signal may hold receivers weakly
        self.runtimes.setdefault("_receivers", []).append(receiver)

    def shutdown(self) -> None:
        """Release the executor (the app itself is stopped by its worker)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _register_metrics_page(ctx: StreamContext) -> None:
    @ctx.app.page("/mmbee/metrics/")
    async def mmbee_metrics(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.json(ctx.metrics.snapshot())


def build_app(
    settings: Settings,
    components: Sequence[str | Component] | None = None,
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
    install_full_flush()  # offsets are committed only after the buffered writes were sent
    install_sources_resume_after_flow()  # no source message is fetched before recovery's seek
    install_fetch_scope()  # a fetch never takes records of partitions Faust has paused
    if settings.faust_inline_handoff:
        install_inline_handoff()
    else:
        uninstall_inline_handoff()
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
    # operations (deploy issue): health/metrics/status pages, the worker's RocksDB budget over
    # every table the components declared, the dead-member watchdog (embedded broker)
    from mmbee.streams import deployment, web

    web.install(ctx)
    deployment.install(ctx)
    return ctx


def create_app(
    settings: Settings,
    components: Sequence[str | Component] | None = None,
    **kwargs: Any,
) -> faust.App:
    """The configured Faust app with `components` registered (see `build_app`)."""
    return build_app(settings, components, **kwargs).app
