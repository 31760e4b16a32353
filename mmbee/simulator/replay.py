"""Replay a log directory into Kafka in event-time order, at real time, N x, or full speed.

Events come from `reader.iter_encoded` (merged across files, ties broken by topic rank and
source row), go to `settings.topic(<catalogue name>)` keyed by the catalogue's key field, and
are paced by an injected clock and sleep: event time advances `speed` times faster than the
clock (`speed=None`: as fast as the producer takes them). A replay can resume from an event
time (`start_ms`); events at exactly that time are sent again, which consumers absorb because
every event id is stable (state is idempotent by event id).

Example:
    >>> stats = replay_log(Path("logs/tiny"), load_settings(), speed=None)  # doctest: +SKIP
    >>> stats.events, stats.per_s  # doctest: +SKIP
    (18678, 31000.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from mmbee.settings import Settings
from mmbee.simulator.reader import count_events, iter_encoded, read_log

__all__ = ["Pacer", "ReplayStats", "ReplayError", "Sink", "KafkaSink", "replay_log", "parse_speed"]


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
    """Holds events back until the clock reaches their scaled event time.

    The first event sets the origin: event time t is due at clock0 + (t - t0) / 1000 / speed.
    `speed=None` never waits.

    Example:
        >>> now = [0.0]
        >>> p = Pacer(10.0, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
        >>> p.wait_until(1_000_000); p.wait_until(1_010_000); now[0]
        1.0
    """

    def __init__(
        self,
        speed: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.speed = speed
        self.clock = clock
        self.sleep = sleep
        self._origin: tuple[int, float] | None = None
        self.slept_s = 0.0

    def wait_until(self, ts_ms: int) -> None:
        """Return once event time `ts_ms` is due."""
        if self.speed is None:
            return
        if self._origin is None:
            self._origin = (ts_ms, self.clock())
            return
        t0, c0 = self._origin
        due = c0 + (ts_ms - t0) / 1000.0 / self.speed
        ahead = due - self.clock()
        if ahead > 0:
            self.sleep(ahead)
            self.slept_s += ahead


class Sink(Protocol):
    """Where replayed messages go (full topic name, key, value)."""

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue one message."""
        ...

    def flush(self) -> None:
        """Block until every queued message is acknowledged; raise ReplayError on failures."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class KafkaSink:
    """A kafka-python producer tuned for bulk replay (batches, linger, no compression).

    Args:
        settings: bootstrap list, security and acks come from here.
        max_request_bytes: the largest message (audio chunks are ~1.3 MB as JSON).
    """

    def __init__(self, settings: Settings, max_request_bytes: int = 4 * 1024 * 1024) -> None:
        from kafka import KafkaProducer  # lazy: only replay needs a producer

        acks_setting = settings.producer_acks or "1"
        acks: int | str = "all" if acks_setting == "all" else int(acks_setting)
        self._producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap_list(),
            acks=acks,
            enable_idempotence=acks == "all",
            linger_ms=20,
            batch_size=512 * 1024,
            buffer_memory=128 * 1024 * 1024,
            max_request_size=max_request_bytes,
            client_id="mmbee-replay",
            **settings.kafka_client_kwargs(),
        )
        self._errors: list[BaseException] = []

    def _failed(self, exc: BaseException) -> None:
        self._errors.append(exc)

    def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        self._producer.send(topic, key=key, value=value).add_errback(self._failed)

    def flush(self) -> None:
        self._producer.flush()
        if self._errors:
            raise ReplayError(
                f"{len(self._errors)} messages failed; first: {self._errors[0]!r}"
            ) from self._errors[0]

    def close(self) -> None:
        self._producer.close()


@dataclass
class ReplayStats:
    """What a replay sent: counts per catalogue topic, event-time span, wall time, rate."""

    events: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None
    seconds: float = 0.0
    slept_s: float = 0.0

    @property
    def per_s(self) -> float:
        """Events per second of wall time."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, disable=not enabled, mininterval=0.5)


def replay_log(
    logdir: Path | str,
    settings: Settings,
    *,
    speed: float | None = None,
    start_ms: int | None = None,
    frames: Literal["auto", "embedding", "jpeg"] = "auto",
    speech: Literal["auto", "text", "audio"] = "auto",
    attach_text_embeddings: bool = False,
    progress: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    sink: Sink | None = None,
    prepare_topics: Callable[[Settings], object] | None = None,
) -> ReplayStats:
    """Publish every event of `logdir` to Kafka in event-time order; return what was sent.

    Args:
        speed: event-time seconds per clock second (1 = real time); None = as fast as possible.
        start_ms: resume from this event time (inclusive).
        frames, speech, attach_text_embeddings: see `reader.iter_encoded`.
        progress: show a tqdm progress bar on stderr.
        clock, sleep: injected time (tests pass a fake clock).
        sink: where messages go (default: a `KafkaSink` on `settings`).
        prepare_topics: called with `settings` before sending (the CLI passes the streams
            layer's `ensure_topics`, so topics exist with the configured partition counts).
    """
    bundle = read_log(logdir, skip=("like.csv",))
    total = count_events(bundle, start_ms, frames=frames, speech=speech)
    if prepare_topics is not None:
        prepare_topics(settings)
    out = sink if sink is not None else KafkaSink(settings)
    names = {
        t: settings.topic(t)
        for t in (
            "live.frames",
            "live.audio",
            "live.asr",
            "live.watch",
            "live.comments",
            "live.gifts",
        )
    }
    stats = ReplayStats(per_topic=dict.fromkeys(names, 0))
    pacer = Pacer(speed, clock, sleep)
    started = clock()
    bar = _progress(total, progress)
    try:
        events: Iterator[tuple[str, bytes, bytes, int]] = iter_encoded(
            bundle,
            start_ms,
            frames=frames,
            speech=speech,
            attach_text_embeddings=attach_text_embeddings,
        )
        stats = _pump(events, out, names, pacer, stats, bar)
        out.flush()
    finally:
        bar.close()
        if sink is None:
            out.close()
    stats.seconds = clock() - started
    stats.slept_s = pacer.slept_s
    return stats


def _pump(
    events: Iterable[tuple[str, bytes, bytes, int]],
    out: Sink,
    names: dict[str, str],
    pacer: Pacer,
    stats: ReplayStats,
    bar: Any,
) -> ReplayStats:
    counts = stats.per_topic
    send = out.send
    paced = pacer.speed is not None
    n = 0
    ts = None
    for topic, key, value, ts in events:
        if paced:
            pacer.wait_until(ts)
        if stats.first_ts_ms is None:
            stats.first_ts_ms = ts
        send(names[topic], key, value)
        counts[topic] += 1
        n += 1
        if not n & 1023:
            bar.update(1024)
    bar.update(n & 1023)
    stats.events = n
    stats.last_ts_ms = ts
    return stats
