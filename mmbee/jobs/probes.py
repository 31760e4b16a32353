"""What the demo and the serving benchmarks measure a running worker with.

The log's facts, score requests over Kafka and HTTP, the freshness probes with their background
load, CPU readings, and the waits for a worker to consume a replay and land its examples. `mmbee
demo` (mmbee.jobs.demo), bench/serve.py, bench/page.py and tests/streams/test_replay_live.py use
them; they take a running `WorkerProcess` and the deployment's `Settings`, nothing else.

Example:
    >>> percentiles([1.0, 2.0, 3.0])["p50"]
    2.0
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmbee.jobs.stack import LocalStack, ScoreClient, WorkerProcess, counters_of, dead_letters_of
from mmbee.schemas.events import CommentEvent, FrameEvent, ScoreRequest, WatchEvent
from mmbee.schemas.topics import partition_for
from mmbee.schemas.types import encode_embedding
from mmbee.settings import Settings
from mmbee.streams.broker import process_usage

__all__ = [
    "Background",
    "LogFacts",
    "Reading",
    "freshness",
    "http_round_trips",
    "joiner_drained",
    "kafka_round_trips",
    "landed_examples",
    "log_facts",
    "percentiles",
    "read_examples",
    "requests_for",
    "served_version",
    "wait_consumed",
]


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99 and max of `values` (NaN when empty).

    Example:
        >>> percentiles([1.0, 2.0, 3.0])["p50"]
        2.0
    """
    if not values:
        return {"n": 0, "p50": float("nan"), "p90": float("nan"), "p99": float("nan"),
                "max": float("nan")}  # fmt: skip
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"n": len(a), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(a.max())}  # fmt: skip


@dataclass(frozen=True)
class LogFacts:
    """What the demo needs to know about its log: the end, who watched what on the last day,
    the streamers with content, and event counts per topic."""

    end_ms: int
    test_watches: list[tuple[str, str]]
    content_authors: list[str]
    live_of: dict[str, str]


def log_facts(logdir: Path, test_days: float = 1.0) -> LogFacts:
    """Read a log through the simulator's reader (the ids the stream sees)."""
    from mmbee.simulator.reader import iter_events

    watches: list[tuple[str, str, int]] = []
    authors: dict[str, str] = {}
    end = 0
    for topic, ev in iter_events(logdir):
        end = max(end, ev.ts_ms)
        if isinstance(ev, WatchEvent):
            watches.append((ev.user_id, ev.author_id, ev.ts_ms))
        elif topic == "live.frames":
            authors[ev.author_id] = ev.live_id  # type: ignore[attr-defined]
    cut = end - int(test_days * 86_400_000)
    test = [(u, a) for u, a, ts in watches if ts >= cut and a in authors]
    return LogFacts(end, test, sorted(authors), authors)


def wait_consumed(
    worker: WorkerProcess, expected: dict[str, int], timeout_s: float, samples: list[Any]
) -> float:
    """Wait until the worker's agents have processed the replayed events, the joiner has
    emitted no example for 2 s (progress marks keep flowing, so only these counters count) and
    it is drained;
    appends (seconds, counters) samples; returns the seconds waited."""
    t0 = time.monotonic()
    last: dict[str, float] = {}
    stable_since = time.monotonic()

    def done() -> bool:
        nonlocal last, stable_since
        agents = worker.agents()  # one snapshot: counters and dead letters agree
        c = counters_of(agents)
        now = {a: float(c.get(a, {}).get("processed", 0)) for a in expected}
        now["joiner_read_watch"] = float(c.get("joiner", {}).get("read_watch", 0))
        now["joiner_examples"] = float(c.get("joiner", {}).get("examples", 0))
        # every watch and forwarded gift/comment event applied (or dead-lettered) by the joiner:
        # its frontier can pass while forwarded events are still on `user.activity`
        rejected = sum(dead_letters_of(agents).get("joiner", {}).values())
        now["joiner_settled"] = float(c.get("joiner", {}).get("applied", 0)) + rejected
        samples.append((time.monotonic() - t0, now))
        if now != last:
            last, stable_since = now, time.monotonic()
        enough = all(now.get(a, 0) >= n for a, n in expected.items())
        return enough and time.monotonic() - stable_since >= 2.0 and joiner_drained(worker)

    worker.wait_until(done, "consuming the replay", timeout_s)
    return time.monotonic() - t0


def joiner_drained(worker: WorkerProcess, partitions: int | None = None) -> bool:
    """Every joiner partition holds nothing back, its sources are all read to the end (its
    frontier is infinite) and every decided example was emitted: every decidable example is
    out. (Emission waits for the streamer side, which the `authors` agent writes. With a CPU
    burner beside the demo, 5,958 decided examples still waited when the other conditions had
    held for 2 s, 2026-12-05; the demo test then counted too few.)

    With `partitions`, the worker must also list every user partition 0..partitions-1: it lists
    a partition only once it read an event of it. (`unemitted` counts the examples being
    published too: before, the chaos reference saw every partition drained with 0, 653 and
    1,558 of 1,806 examples counted as emitted, 2026-12-07.)"""
    try:
        parts = worker.get("/mmbee/joiner/")["partitions"]
    except (OSError, ValueError, KeyError):
        return False
    if partitions is not None and set(parts) != {str(p) for p in range(partitions)}:
        return False
    return bool(parts) and all(
        p["held"] == 0
        and p["unemitted"] == 0
        and p["frontier"] is not None
        and p["frontier"] == float("inf")
        for p in parts.values()
    )


def landed_examples(settings: Settings, worker: WorkerProcess, timeout_s: float) -> int:
    """The examples on `train.examples` once all the joiner emitted have landed there (its
    producer sends them in the background: read at once after the joiner had drained, the topic
    lacked 1,151 of them in one run, 2026-12-05), or what is there after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        emitted = int(worker.get("/mmbee/joiner/")["emitted"])
        landed = read_examples(settings)
        if landed >= emitted or time.monotonic() >= deadline:
            return landed
        time.sleep(0.2)


def read_examples(settings: Settings) -> int:
    """How many joined training examples are on `train.examples`."""
    from kafka import KafkaConsumer, TopicPartition

    topic = settings.topic("train.examples")
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_list(), enable_auto_commit=False,
        **settings.kafka_client_kwargs(),
    )  # fmt: skip
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        end = consumer.end_offsets(parts)
        begin = consumer.beginning_offsets(parts)
        return int(sum(end[tp] - begin[tp] for tp in parts))
    finally:
        consumer.close()


def requests_for(facts: LogFacts, n: int, candidates: int, ts_ms: int,
                 rng: np.random.Generator, tag: str, cold: int = 0) -> list[ScoreRequest]:  # fmt: skip
    """`n` requests of last-day viewers: the streamer they watched among `candidates` streamers
    with content (sampled), and `cold` ids of streamers the worker has never seen (scored cold
    when `serving_reject_unknown_authors` is off) when there are too few with content."""
    pool = np.asarray(facts.content_authors + [f"cold{i}" for i in range(cold)])
    picks = rng.choice(len(facts.test_watches), size=min(n, len(facts.test_watches)), replace=False)
    out = []
    for i, j in enumerate(picks):
        user, watched = facts.test_watches[int(j)]
        others = pool[pool != watched]
        k = min(candidates - 1, len(others))
        cands = [watched, *rng.choice(others, size=k, replace=False).tolist()]
        out.append(ScoreRequest(request_id=f"{tag}-{i}", user_id=user,
                                candidate_author_ids=cands, ts_ms=ts_ms))  # fmt: skip
    return out


async def kafka_round_trips(settings: Settings, reqs: Sequence[ScoreRequest]
                             ) -> tuple[list[float], list[float], list[str]]:  # fmt: skip
    rtt, server, errors = [], [], []
    async with ScoreClient(settings) as client:
        for req in reqs:
            try:
                resp, ms = await client.score(req, timeout_s=30.0)
            except TimeoutError:
                errors.append("no response within 30 s")
                continue
            if resp.error is not None:
                errors.append(resp.error)
                continue
            rtt.append(ms)
            server.append(resp.latency_ms)
    return rtt, server, errors


def http_round_trips(worker: WorkerProcess, reqs: Sequence[ScoreRequest]
                      ) -> tuple[list[float], list[float], list[str]]:  # fmt: skip
    rtt, server, errors = [], [], []
    for req in reqs:
        t0 = time.perf_counter()
        status, body = worker.post("/mmbee/score/", req.model_dump_json().encode())
        ms = (time.perf_counter() - t0) * 1000.0
        if status != 200:
            errors.append(f"{status}: {body.get('error') if isinstance(body, dict) else body}")
            continue
        rtt.append(ms)
        server.append(float(body["latency_ms"]))
    return rtt, server, errors


def _score(worker: WorkerProcess, user: str, author: str, ts_ms: int, rid: str) -> float | None:
    req = ScoreRequest(request_id=rid, user_id=user, candidate_author_ids=[author], ts_ms=ts_ms)
    try:
        status, body = worker.post("/mmbee/score/", req.model_dump_json().encode())
    except OSError:  # an overloaded worker answers late: the probe keeps polling
        return None
    if status != 200:
        return None
    return float(body["scores"][0]["score"])


class Background:
    """Content events for other streamers at `rate` events/s from a thread (load while the
    freshness probes run): frames, and comments from 1,000 viewers, from the streamers whose
    content partition is not the probed streamer's. Their event time starts at `start_ms` and
    moves on with the wall clock, as live streams' do, so each of them closes a segment every
    `segment_ms` of wall time.

    Why not the probed streamer's partition: each probe moves the probed streamer's event time
    one segment plus the lateness ahead (that is what closes its segment within a second
    instead of 30 s). Background streams that shared its partition would either hold its events
    at the alignment frontier (`align.py`) until they caught up, or, made to jump with it (as
    this class did until 2026-12-05), close all of their segments at every probe: ~87 segment
    closes per probe, some 70x the rate at which 87 live streams close 30 s segments, measuring
    bursts of closes rather than load. The worker still consumes every background event, on the
    same event loop and agents."""

    def __init__(
        self, settings: Settings, facts: LogFacts, rate: float, skip: str, start_ms: int, seed: int
    ) -> None:
        import threading

        self.settings, self.rate = settings, rate
        probed = partition_for(skip.encode(), settings.partitions)
        self.authors = [
            a for a in facts.content_authors
            if a != skip and partition_for(a.encode(), settings.partitions) != probed
        ]  # fmt: skip
        if rate > 0 and not self.authors:
            raise ValueError("no streamer outside the probed streamer's partition to load")
        self.live_of = facts.live_of
        self.start_ms = start_ms
        # comments come from a crowd, as in a live room (one user sending every comment would
        # measure that user's ever-growing joiner row, not freshness)
        self.viewers = 1000
        self.sent = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._rng = np.random.default_rng(seed)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from kafka import KafkaProducer

        s = self.settings
        producer = KafkaProducer(
            bootstrap_servers=s.bootstrap_list(), acks=1, linger_ms=2,
            max_request_size=4 * 1024 * 1024, **s.kafka_client_kwargs(),
        )  # fmt: skip
        vecs = self._rng.standard_normal((64, s.frame_dim)).astype(np.float32)
        wires = [encode_embedding(v) for v in vecs]
        t0 = time.perf_counter()
        try:
            while not self._stop.is_set():
                elapsed = time.perf_counter() - t0
                due, ts = int(elapsed * self.rate), self.start_ms + int(elapsed * 1000)
                while self.sent < due:
                    a = self.authors[self.sent % len(self.authors)]
                    live, i = self.live_of[a], self.sent
                    if i % 2:
                        user = f"demo-bg-u{(i // 2) % self.viewers}"
                        ev: Any = CommentEvent(event_id=f"demo-bg-{i}", ts_ms=ts, user_id=user,
                                               author_id=a, live_id=live, text="so good")  # fmt: skip
                        topic = "live.comments"
                    else:
                        ev = FrameEvent(event_id=f"demo-bg-{i}", ts_ms=ts, live_id=live,
                                        author_id=a, embedding=wires[i % len(wires)])  # fmt: skip
                        topic = "live.frames"
                    producer.send(
                        s.topic(topic), key=a.encode(), value=ev.model_dump_json().encode()
                    )
                    self.sent += 1
                time.sleep(0.005)
            producer.flush()
        finally:
            self.seconds = time.perf_counter() - t0
            producer.close()

    def __enter__(self) -> Background:
        if self.rate > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)


@contextlib.contextmanager
def producer_closing(producer: Any) -> Iterator[Any]:
    """Close a kafka-python producer on exit."""
    try:
        yield producer
    finally:
        producer.close()


def freshness(settings: Settings, worker: WorkerProcess, facts: LogFacts, probes: int,
              rng: np.random.Generator, timeout_s: float = 10.0,
              background_rate: float = 0.0) -> tuple[list[float], int, float]:  # fmt: skip
    """Content event -> changed score, in ms, per probe; and how many probes timed out.

    Each probe publishes a frame and a comment for one streamer at an event time one segment
    (plus the allowed lateness) after the previous probe's: that closes the segment holding the
    previous probe's content, the serving worker re-encodes the streamer's buffer, and the
    streamer's score for a viewer changes. The clock starts before the send and stops at the
    first HTTP answer with a different score (polled every 20 ms). A first, unmeasured probe
    is the warm-up: it only opens a segment, and waits until the worker has embedded a text
    (MiniLM loads on the first one, once per worker). Then, with `background_rate` > 0, content
    events for other streamers (`Background`: those outside the probed streamer's partition,
    their event time flowing with the wall clock) come at that rate while the measured probes
    run; returns also the achieved rate.
    """
    step = settings.segment_ms + settings.allowed_lateness_ms + 1
    t = (facts.end_ms // settings.segment_ms + 2) * settings.segment_ms
    author = facts.content_authors[int(rng.integers(len(facts.content_authors)))]
    user = facts.test_watches[0][0]
    live = facts.live_of[author]
    from kafka import KafkaProducer

    out, missed = [], 0
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap_list(), acks=1, linger_ms=0,
        max_request_size=4 * 1024 * 1024, **settings.kafka_client_kwargs(),
    )  # fmt: skip
    bg = Background(settings, facts, background_rate, author, t, int(rng.integers(1 << 31)))
    with producer_closing(producer):
        t += step  # warm-up before the load starts: opens a segment, loads the text model
        _probe(settings, producer, worker, author, user, live, t, 0, rng, timeout_s)
        with bg:
            for i in range(1, probes + 1):
                t += step
                got = _probe(settings, producer, worker, author, user, live, t, i, rng, timeout_s)
                if got is None:
                    missed += 1
                else:
                    out.append(got)
    rate = bg.sent / bg.seconds if bg.seconds > 0 else 0.0
    return out, missed, rate


def _probe(settings: Settings, producer: Any, worker: WorkerProcess, author: str, user: str,
           live: str, t: int, i: int, rng: np.random.Generator,
           timeout_s: float) -> float | None:  # fmt: skip
    """One freshness probe at event time `t`: ms until the score changed (None: timed out)."""
    before = _score(worker, user, author, t + 1, f"fresh-{i}-before")
    frame = FrameEvent(
        event_id=f"demo-fresh-frame-{i}", ts_ms=t, live_id=live, author_id=author,
        embedding=encode_embedding(rng.standard_normal(settings.frame_dim).astype(np.float32)),
    )  # fmt: skip
    comment = CommentEvent(
        event_id=f"demo-fresh-comment-{i}", ts_ms=t, user_id=user, author_id=author,
        live_id=live, text="what a moment, thank you all",
    )  # fmt: skip
    t0 = time.perf_counter()
    for topic, ev in (("live.frames", frame), ("live.comments", comment)):
        producer.send(
            settings.topic(topic), key=author.encode(), value=ev.model_dump_json().encode()
        )
    producer.flush()
    if i == 0:  # warm-up: the first text without an embedding loads MiniLM (once per worker)
        deadline = time.perf_counter() + 60.0
        while time.perf_counter() < deadline:
            if worker.counters().get("segments", {}).get("featurized_texts", 0) >= 1:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        return 0.0
    while True:
        now = _score(worker, user, author, t + 1, f"fresh-{i}")
        elapsed = time.perf_counter() - t0
        if now is not None and before is not None and now != before:
            return elapsed * 1000.0
        if elapsed > timeout_s:
            return None
        time.sleep(0.02)  # each poll is a score request: 20 ms keeps the probing load ~5%


@dataclass(frozen=True)
class Reading:
    """CPU seconds used so far by the broker, the worker and this process (the clients and
    the load generator), at a monotonic time."""

    t: float
    broker_s: float | None
    worker_s: float | None
    client_s: float

    @classmethod
    def take(cls, stack: LocalStack, worker: WorkerProcess) -> Reading:
        broker_s = stack.broker.usage().cpu_s
        worker_s = process_usage(worker.proc.pid)[0]
        return cls(time.monotonic(), broker_s, worker_s, time.process_time())

    def cores_until(self, later: Reading) -> dict[str, float | None]:
        """CPU seconds per second of each process from this reading to `later`."""
        dt = later.t - self.t

        def rate(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None or dt <= 0 else round((b - a) / dt, 2)

        return {"broker": rate(self.broker_s, later.broker_s),
                "worker": rate(self.worker_s, later.worker_s),
                "client": rate(self.client_s, later.client_s)}  # fmt: skip


def served_version(worker: WorkerProcess) -> str | None:
    try:
        v = worker.get("/mmbee/serving/").get("version")
    except (OSError, ValueError):
        return None
    return v if isinstance(v, str) else None
