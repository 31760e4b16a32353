"""Replay a log directory into Kafka in event-time order, at real time, N x, or full speed.

Events come from `reader.iter_encoded` (merged across files, ties broken by topic rank and source
row), go to `settings.topic(<catalogue name>)` keyed by the catalogue's key field, on the partition
Kafka's default partitioner picks for the key (`schemas.topics.partition_for`: murmur2, as the Java
client, kafka-python, aiokafka and Faust do). They are packed into record batches per partition
with aiokafka's C batch builder and sent with `send_batch`, so the per-event cost is the encoding,
not a producer call. Pacing uses an injected clock and sleep: event time advances `speed` times
faster than the clock (`speed=None`: as fast as the broker takes them); before any pause the open
batches are sent, so paced events are not held back. A replay resumes from an event time
(`start_ms`); events at exactly that time are sent again, which consumers absorb because every
event id is stable (state is idempotent by event id). `end_ms` stops before an event time, so a log
replays a day (or any window) at a time: `[a, b)` then `[b, c)` sends what `[a, c)` sends.

Example:
    >>> stats = replay_log(Path("logs/tiny"), load_settings(), speed=None)  # doctest: +SKIP
    >>> stats.events, round(stats.per_s)  # doctest: +SKIP
    (18678, 52000)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmbee.schemas.topics import partition_for
from mmbee.settings import Settings
from mmbee.simulator.reader import count_events, iter_encoded, read_log

__all__ = [
    "Pacer",
    "ReplayStats",
    "ReplayError",
    "replay_log",
    "publish",
    "parse_speed",
    "REPLAY_TOPICS",
]

REPLAY_TOPICS = (
    "live.frames",
    "live.audio",
    "live.asr",
    "live.watch",
    "live.comments",
    "live.gifts",
)
"""Catalogue topics a replay writes to."""

Message = tuple[str, bytes | None, bytes, int]
"""(catalogue topic, key, value, event time ms)."""


class ReplayError(RuntimeError):
    """The broker refused or failed to take the replayed events."""


def parse_speed(text: str) -> float | None:
    """'1', '10', '2.5' -> that factor; 'max' -> None (no pacing)."""
    if text.strip().lower() == "max":
        return None
    value = float(text)
    if not value > 0:
        raise ValueError(f"speed must be > 0 or 'max', got {text!r}")
    return value


class Pacer:
    """When each event is due: event time t at clock0 + (t - t0) / 1000 / speed.

    The first event sets the origin (t0, clock0). `speed=None` never waits. A sender that fell
    behind the schedule sends what is due at once and waits again once it is ahead.

    Example:
        >>> now = [5.0]
        >>> p = Pacer(10.0, clock=lambda: now[0])
        >>> p.delay(1_000_000), p.delay(1_010_000)
        (0.0, 1.0)
    """

    def __init__(self, speed: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.speed = speed
        self.clock = clock
        self._origin: tuple[int, float] | None = None

    def delay(self, ts_ms: int) -> float:
        """Seconds to wait before event time `ts_ms` is due (0.0 when due)."""
        if self.speed is None:
            return 0.0
        if self._origin is None:
            self._origin = (ts_ms, self.clock())
            return 0.0
        t0, c0 = self._origin
        return max(0.0, c0 + (ts_ms - t0) / 1000.0 / self.speed - self.clock())


@dataclass
class ReplayStats:
    """What a replay sent: counts per catalogue topic, event-time span, wall time, rate."""

    events: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None
    seconds: float = 0.0
    slept_s: float = 0.0
    batches: int = 0

    @property
    def per_s(self) -> float:
        """Events per second of wall time."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _producer_kwargs(settings: Settings, max_request_bytes: int) -> dict[str, Any]:
    """aiokafka producer arguments from the settings (security included)."""
    kw = dict(settings.kafka_client_kwargs())
    ssl_files = {k: kw.pop(k) for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if k in kw}
    if ssl_files:
        from aiokafka.helpers import create_ssl_context

        kw["ssl_context"] = create_ssl_context(
            cafile=ssl_files.get("ssl_cafile"),
            certfile=ssl_files.get("ssl_certfile"),
            keyfile=ssl_files.get("ssl_keyfile"),
        )
    acks = settings.producer_acks or "1"
    return {
        "bootstrap_servers": settings.bootstrap_list(),
        "client_id": "mmbee-replay",
        "acks": "all" if acks == "all" else int(acks),
        "linger_ms": 0,
        "max_batch_size": 512 * 1024,
        "max_request_size": max_request_bytes,
        "request_timeout_ms": 60_000,
        **kw,
    }


async def _publish(
    messages: Iterable[Message],
    settings: Settings,
    pacer: Pacer,
    asleep: Callable[[float], Awaitable[object]],
    stats: ReplayStats,
    progress: Any,
    max_request_bytes: int,
) -> ReplayStats:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**_producer_kwargs(settings, max_request_bytes))
    await producer.start()
    names = {t: settings.topic(t) for t in REPLAY_TOPICS}
    counts = stats.per_topic
    n_parts: dict[str, int] = {}
    part_of: dict[tuple[str, bytes | None], int] = {}
    open_batches: dict[tuple[str, int], Any] = {}
    in_flight: list[asyncio.Future[Any]] = []

    async def partition(full: str, key: bytes | None) -> int:
        n = n_parts.get(full)
        if n is None:
            parts = await producer.partitions_for(full)
            if not parts:
                raise ReplayError(f"topic {full!r} has no partitions (create the topics first)")
            n = n_parts[full] = len(parts)
        # a null key (no catalogue topic here has one) would go to partition 0
        p = 0 if key is None else partition_for(key, n)
        part_of[(full, key)] = p
        return p

    async def ship(full: str, p: int, batch: Any) -> None:
        in_flight.append(await producer.send_batch(batch, full, partition=p))
        stats.batches += 1
        if len(in_flight) >= 256:
            await _settle(in_flight)
        await asyncio.sleep(0)  # let the sender task write to the socket

    async def ship_all() -> None:
        for (full, p), batch in list(open_batches.items()):
            await ship(full, p, batch)
        open_batches.clear()

    try:
        paced = pacer.speed is not None
        n = 0
        ts = None
        for topic, key, value, ts in messages:
            if paced:
                wait = pacer.delay(ts)
                if wait > 0:
                    await ship_all()
                    await asleep(wait)
                    stats.slept_s += wait
            if stats.first_ts_ms is None:
                stats.first_ts_ms = ts
            full = names[topic]
            p = part_of.get((full, key))
            if p is None:
                p = await partition(full, key)
            batch = open_batches.get((full, p))
            if batch is None:
                batch = open_batches[(full, p)] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                await ship(full, p, batch)
                batch = open_batches[(full, p)] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ReplayError(f"a {len(value)} B message does not fit a batch ({topic})")
            counts[topic] += 1
            n += 1
            if not n & 1023:
                progress.update(1024)
        await ship_all()
        await _settle(in_flight, wait_all=True)
        progress.update(n & 1023)
        stats.events = n
        stats.last_ts_ms = ts
    finally:
        await producer.stop()
    return stats


async def _settle(in_flight: list[asyncio.Future[Any]], wait_all: bool = False) -> None:
    """Drop delivered batches from `in_flight` (all of them when `wait_all`); raise on failure."""
    if wait_all and in_flight:
        await asyncio.wait(in_flight)
    done = [f for f in in_flight if f.done()]
    for f in done:
        exc = f.exception()
        if exc is not None:
            raise ReplayError(f"the broker did not take a batch: {exc!r}") from exc
    in_flight[:] = [f for f in in_flight if not f.done()]


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, disable=not enabled, mininterval=0.5)


def publish(
    messages: Iterable[Message],
    settings: Settings,
    *,
    speed: float | None = None,
    total: int | None = None,
    progress: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    max_request_bytes: int = 4 * 1024 * 1024,
) -> ReplayStats:
    """Send (catalogue topic, key, value, ts) messages in the given order, paced by `speed`.

    The topics must exist. Returns once every batch is acknowledged; raises ReplayError when the
    broker rejects one.
    """
    stats = ReplayStats(per_topic=dict.fromkeys(REPLAY_TOPICS, 0))
    bar = _progress(total or 0, progress)
    started = clock()
    try:
        asyncio.run(
            _publish(messages, settings, Pacer(speed, clock), sleep, stats, bar, max_request_bytes)
        )
    finally:
        bar.close()
    stats.seconds = clock() - started
    return stats


def replay_log(
    logdir: Path | str,
    settings: Settings,
    *,
    speed: float | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    frames: Literal["auto", "embedding", "jpeg"] = "auto",
    speech: Literal["auto", "text", "audio"] = "auto",
    attach_text_embeddings: bool = False,
    progress: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    prepare_topics: Callable[[Settings], object] | None = None,
) -> ReplayStats:
    """Publish every event of `logdir` to Kafka in event-time order; return what was sent.

    Args:
        speed: event-time seconds per clock second (1 = real time); None = as fast as possible.
        start_ms: resume from this event time (inclusive).
        end_ms: stop before this event time (exclusive; with `start_ms`, one day of a log).
        frames, speech, attach_text_embeddings: see `reader.iter_encoded`.
        progress: show a tqdm progress bar on stderr.
        clock, sleep: injected time (an async sleep).
        prepare_topics: called with `settings` before sending (the CLI passes the streams
            layer's `ensure_topics`, so topics exist with the configured partition counts).

    The wall time in the stats covers reading and checking the files too.
    """
    started = clock()
    bundle = read_log(logdir, skip=("like.csv",))
    total = count_events(bundle, start_ms, frames=frames, speech=speech, end_ms=end_ms)
    if prepare_topics is not None:
        prepare_topics(settings)
    events = iter_encoded(
        bundle,
        start_ms,
        frames=frames,
        speech=speech,
        attach_text_embeddings=attach_text_embeddings,
        end_ms=end_ms,
    )
    stats = publish(
        events,
        settings,
        speed=speed,
        total=total,
        progress=progress,
        clock=clock,
        sleep=sleep,
    )
    stats.seconds = clock() - started
    return stats
