"""What every component gets: the app, the shared services, and the inspection protocol.

`StreamContext` is the handle a component's `register(ctx)` declares its agents and tables
with. It sits below every component and below the composition root (`mmbee.streams.app`, which
builds it), so no component imports the app factory. `Inspectable` is what a component's
runtime offers the web and metrics layer: `samples()` for `/metrics`, `describe()` for its JSON
page; the web layer reads that protocol instead of the runtimes' classes.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

import faust
from faust.types import TP, EventT, StreamT, TableT

from mmbee.schemas.topics import TOPICS
from mmbee.settings import Settings
from mmbee.streams.codec import EventCodec
from mmbee.streams.dlq import DeadLetterSink
from mmbee.streams.metrics import StreamMetrics
from mmbee.streams.publish import Publisher
from mmbee.streams.runtime import compat
from mmbee.streams.runtime.rocksdb import rocksdb_options

__all__ = [
    "Register",
    "Inspectable",
    "Sample",
    "StreamContext",
    "clear_event_context",
    "group_instance_id",
    "in_event_context",
]

T = TypeVar("T")

Sample = tuple[str, dict[str, str], float]
"""One Prometheus sample: (metric name, labels, value)."""

Register = Callable[["StreamContext"], None]
"""A bare register function (declares agents/tables/pages on the context's app): accepted
wherever a component is (`mmbee.streams.runtime.component.Component` is one too)."""


@runtime_checkable
class Inspectable(Protocol):
    """A component runtime the web and metrics layer can read."""

    def samples(self) -> Iterable[Sample]:
        """Gauges for `/metrics` (names start with `mmbee_`)."""
        ...

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for the component's status page."""
        ...


def in_event_context(event: EventT) -> None:
    """Make `event` Faust's current event in this task.

    Table writes take their changelog partition (and RocksDB partition) from the current event.
    Inside `stream.take()`-style batches the buffered events were consumed by another task, so
    an agent that writes a table while handling a batch sets the event it is applying first.
    """
    compat.set_current_event(event)


def clear_event_context() -> None:
    """No current event in this task (table reads then look in every local partition)."""
    compat.set_current_event(None)


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

    def batch_agent(
        self,
        name: str,
        topics: tuple[str, ...],
        process: Callable[[StreamT, list[EventT]], Awaitable[None]],
        batch: int | None = None,
        within_s: float | None = None,
    ) -> None:
        """Agent `mmbee.<name>` over catalogue `topics` that hands `process(stream, events)`
        batches of up to `batch` events (default `stream_batch_max`) taken within `within_s`
        (default `stream_batch_wait_ms`), unacked: `process` acks through its envelope."""
        size = batch or self.settings.stream_batch_max
        within = within_s if within_s is not None else self.settings.stream_batch_wait_ms / 1000

        async def agent(stream: StreamT) -> None:
            async for events in cast(faust.Stream, stream).noack_take(size, within=within):
                await process(stream, list(events))

        self.app.agent(self.topic(*topics), name=f"mmbee.{name}")(agent)

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
