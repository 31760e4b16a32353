"""`mmbee demo` (`make demo`): the whole system on one machine, end to end, with a report.

1. **Simulate** a small world (`demo` preset, sizes below) with real all-MiniLM-L6-v2 text
   embeddings and its ground truth.
2. **Stream**: start the embedded broker and one worker (`segments`, `graph`, `joiner`,
   `serving`), replay the whole log into Kafka as fast as the broker takes it, and wait until
   the worker has consumed everything: rolling segment buffers, the gifting graph and its walk
   caches, and point-in-time training examples joined on `train.examples`.
3. **Train** the GTR model (`sim_mfq_gie` by default) on the first days and evaluate it on the
   last one against the popularity baseline and the simulator's oracles (`mmbee train`'s job on
   the same log; `tests/streams/test_joiner.py` proves its examples equal the worker's).
4. **Serve**: announce the checkpoint on `model.versions`; the worker hot-swaps it. Score
   requests over Kafka (`score.requests` -> `score.responses`) and over HTTP measure the round
   trip and the worker's own latency; **freshness** probes publish new content for a streamer
   and time how long until its score changes.
5. **Report**: `report.md`, `report.png` and `report.json` in the output directory, and
   `page.png`: a screenshot of the worker's live page (`/` on its web port, whose address the
   demo prints as soon as the worker runs; open it in a browser while the demo serves), taken
   in headless Chromium after the serving measurements (so the browser's CPU does not enter
   them); without Chromium the report says how to get it.

Only measured numbers go into the report. Example:
    >>> report = run_demo(DemoConfig(out=Path("runs/demo")))  # doctest: +SKIP
    >>> report["quality"]["test"]["auc"] > report["quality"]["popularity"]["auc"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmbee.jobs.stack import (
    LocalStack,
    ScoreClient,
    WorkerProcess,
    counters_of,
    dead_letters_of,
)
from mmbee.jobs.train import TrainJob, run_train
from mmbee.schemas.events import CommentEvent, FrameEvent, ScoreRequest, WatchEvent
from mmbee.schemas.types import encode_embedding
from mmbee.scorer.train import TrainConfig
from mmbee.settings import Settings, load_settings
from mmbee.streams.broker import process_usage
from mmbee.streams.rollout import announce

__all__ = ["DemoConfig", "run_demo", "percentiles", "markdown_report", "partition_of"]

COMPONENTS = ("segments", "graph", "joiner", "serving")


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Attributes:
        out: output directory (emptied first); the report is `out/report.md`.
        preset, n_users, n_streamers, days, seed: the simulated world.
        variant, content_encoder: the GTR model trained (Table 2 name).
        train: training settings (1 epoch, negatives subsampled, as `mmbee train`).
        partitions: partitions of every topic.
        requests: score requests over Kafka and again over HTTP.
        candidates: candidate streamers per request (at most the streamers with content).
        freshness_probes: content-change probes.
        background_rate: content events/s for other streamers while the probes run.
        cold_candidates: never-seen streamer ids added to the candidate pool (scored cold:
            `serving_reject_unknown_authors` off), to reach `candidates` in a small world.
        timeout_s: how long each wait may take before the demo gives up.
        threads: torch threads for training.
        keep_broker_data: keep the embedded broker's store (`out/stack/broker`) after the run.
            It holds every record the run produced (the demo's about 5 GiB: noida-db writes
            each record byte as a decimal number), so by default it is deleted once the broker
            has stopped; its log, the worker logs and state stay.
    """

    out: Path = Path("runs/demo")
    preset: str = "demo"
    n_users: int = 600
    n_streamers: int = 80
    days: int = 3
    seed: int = 0
    variant: str = "sim_mfq_gie"
    content_encoder: str = "mfq"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(progress=False))
    partitions: int = 4
    requests: int = 200
    candidates: int = 200
    freshness_probes: int = 20
    background_rate: float = 0.0
    cold_candidates: int = 0
    timeout_s: float = 480.0
    threads: int = 2
    keep_broker_data: bool = False


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


# --- the log -------------------------------------------------------------------------------


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


# --- stages ---------------------------------------------------------------------------------


def _settings(config: DemoConfig) -> Settings:
    return load_settings(
        profile="dev",
        topic_prefix="mmbee.demo.",
        app_id="mmbee-demo",
        partitions=config.partitions,
        log_level="WARNING",
        commit_interval_s=1.0,
        graph_refresh_interval_s=0.5,
        graph_idle_rebuild_s=1.0,
        serving_poll_s=0.2,
        serving_threads=1,
        model_dir=config.out / "models",
        serving_reject_unknown_authors=config.cold_candidates == 0,
    )


def _wait_consumed(
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
        return enough and time.monotonic() - stable_since >= 2.0 and _joiner_drained(worker)

    worker.wait_until(done, "consuming the replay", timeout_s)
    return time.monotonic() - t0


def _joiner_drained(worker: WorkerProcess) -> bool:
    """Every joiner partition holds nothing back, its sources are all read to the end (its
    frontier is infinite) and every decided example was emitted: every decidable example is
    out. (Emission waits for the streamer side, which the `authors` agent writes. With a CPU
    burner beside the demo, 5,958 decided examples still waited when the other conditions had
    held for 2 s, 2026-12-05; the demo test then counted too few.)"""
    try:
        parts = worker.get("/mmbee/joiner/")["partitions"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(parts) and all(
        p["held"] == 0
        and p["unemitted"] == 0
        and p["frontier"] is not None
        and p["frontier"] == float("inf")
        for p in parts.values()
    )


def _landed_examples(settings: Settings, worker: WorkerProcess, timeout_s: float) -> int:
    """The examples on `train.examples` once all the joiner emitted have landed there (its
    producer sends them in the background: read at once after the joiner had drained, the topic
    lacked 1,151 of them in one run, 2026-12-05), or what is there after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        emitted = int(worker.get("/mmbee/joiner/")["emitted"])
        landed = _read_examples(settings)
        if landed >= emitted or time.monotonic() >= deadline:
            return landed
        time.sleep(0.2)


def _read_examples(settings: Settings) -> int:
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


async def _kafka_round_trips(settings: Settings, reqs: Sequence[ScoreRequest]
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


def _http_round_trips(worker: WorkerProcess, reqs: Sequence[ScoreRequest]
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
        probed = partition_of(skip.encode(), settings.partitions)
        self.authors = [
            a for a in facts.content_authors
            if a != skip and partition_of(a.encode(), settings.partitions) != probed
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


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record (`partition_for`)."""
    from mmbee.schemas.topics import partition_for

    return partition_for(key, partitions)


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


# --- the job --------------------------------------------------------------------------------


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; returns the report (also written as `out/report.{md,json,png}`)."""
    import torch

    from mmbee.simulator.replay import replay_log
    from mmbee.simulator.simulate import simulate

    t_start = time.monotonic()
    out = Path(config.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(config.seed)
    report: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v
                                         for k, v in asdict(config).items()}}  # fmt: skip
    stages: dict[str, float] = {}

    log(f"[1/5] simulating {config.n_users} users x {config.n_streamers} streamers x "
        f"{config.days} days (seed {config.seed})")  # fmt: skip
    t = time.monotonic()
    logdir = out / "log"
    manifest = simulate(logdir, preset_name=config.preset, seed=config.seed, days=config.days,
                        n_users=config.n_users, n_streamers=config.n_streamers,
                        text_embeddings=True)  # fmt: skip
    facts = log_facts(logdir)
    stages["simulate_s"] = time.monotonic() - t
    report["world"] = manifest.get("counts", {})

    settings = _settings(config)
    with LocalStack(out / "stack", settings) as stack:
        settings = stack.settings
        log(
            f"[2/5] broker on {settings.bootstrap_servers}; replaying the log, then a worker "
            f"({', '.join(COMPONENTS)})"
        )
        # The log goes in first and the worker reads it as a backlog, as a backfill should
        # (deploy/RUNBOOK.md section 7): replayed at full speed into a running worker, a topic
        # it had read to the end looked quiet while the replay was still filling it, and its
        # later events were dead-lettered as late: up to 7,022 of the joiner's events in a run,
        # and one bench/serve run lost 21% of its examples (2026-12-05).
        t = time.monotonic()
        stats = replay_log(logdir, settings, speed=None, attach_text_embeddings=True,
                           progress=False)  # fmt: skip
        replay_s = time.monotonic() - t

        t = time.monotonic()
        worker = stack.start_worker(COMPONENTS)
        worker.wait_ready(config.timeout_s)
        stages["worker_start_s"] = time.monotonic() - t
        log(f"      the worker's live page: {worker.base_url}/ (until the report is written)")
        content = sum(
            stats.per_topic.get(n, 0) for n in ("live.frames", "live.asr", "live.comments")
        )
        expected = {
            "segments": content,
            "graph_gifts": stats.per_topic.get("live.gifts", 0),
            "joiner_forward": stats.per_topic.get("live.comments", 0)
            + stats.per_topic.get("live.gifts", 0),
            "joiner_read_watch": stats.per_topic.get("live.watch", 0),
            "joiner_settled": stats.per_topic.get("live.watch", 0)
            + stats.per_topic.get("live.comments", 0)
            + stats.per_topic.get("live.gifts", 0),
        }
        log(f"      replayed {stats.events:,} events in {replay_s:.1f} s, then started the "
            "worker; waiting until it has read the backlog")  # fmt: skip
        samples: list[Any] = []
        consumed_s = _wait_consumed(worker, expected, config.timeout_s, samples)
        streamed = _landed_examples(settings, worker, timeout_s=30.0)
        stages["stream_s"] = replay_s + stages["worker_start_s"] + consumed_s
        report["stream"] = {
            "events": stats.events,
            "per_topic": stats.per_topic,
            "replay_s": replay_s,
            "replay_events_per_s": stats.events / replay_s,
            "consumed_s": consumed_s,
            "end_to_end_events_per_s": stats.events / consumed_s,
            "joined_examples": streamed,
            "dead_letters": worker.dead_letters(),
        }
        report["stream_samples"] = [
            (t, sum(n for k, n in v.items() if k not in ("joiner_examples", "joiner_settled")))
            for t, v in samples
        ]

        log("[3/5] training and evaluating on the time split")
        t = time.monotonic()
        torch.set_num_threads(config.threads)
        trained = run_train(
            TrainJob(logdir=logdir, out=out / "model", variant=config.variant,
                     content_encoder=config.content_encoder, train=config.train,
                     threads=config.threads),
            log=lambda m: log("      " + m),
        )  # fmt: skip
        stages["train_s"] = time.monotonic() - t
        quality = {k: trained[k] for k in ("test", "popularity", "observable_oracle", "oracle")
                   if k in trained}  # fmt: skip
        report["quality"] = quality
        report["training"] = {
            "variant": trained["variant"],
            "examples_offline": int(trained["build"].get("examples", 0)),
            "train_samples_per_s": trained["train_samples_per_s"],
            "train_seconds": trained["train_seconds"],
        }

        log("[4/5] serving: hot swap, requests over Kafka and HTTP, freshness probes")
        t = time.monotonic()
        ckpt = Path(trained["checkpoint"])
        mv = announce(settings, ckpt, "demo-1", source="train",
                      metrics={f"test_{k}": v for k, v in quality["test"].items()})  # fmt: skip
        swap_s = worker.wait_until(
            lambda: _served_version(worker) == mv.version, "the model swap", config.timeout_s
        )
        ts = facts.end_ms + 1
        cold = config.cold_candidates
        kreqs = requests_for(facts, config.requests, config.candidates, ts, rng, "kafka", cold)
        hreqs = requests_for(facts, config.requests, config.candidates, ts, rng, "http", cold)
        marks = [_Reading.take(stack, worker)]
        h_rtt, h_server, h_err = _http_round_trips(worker, hreqs)
        marks.append(_Reading.take(stack, worker))
        log(f"      HTTP: {len(h_rtt)} answered, {len(h_err)} errors")
        k_rtt, k_server, k_err = asyncio.run(_kafka_round_trips(settings, kreqs))
        marks.append(_Reading.take(stack, worker))
        log(f"      Kafka: {len(k_rtt)} answered, {len(k_err)} errors")
        # the page as the log left it (the freshness probes below move one streamer's event
        # time minutes past the log's end, where no other stream is live any more)
        report["page"] = page_screenshot(worker, out / "page.png", config.timeout_s)
        log(f"      live page {worker.base_url}/: "
            + (f"screenshot {out / 'page.png'}" if "path" in report["page"]
               else report["page"]["missing"]))  # fmt: skip
        fresh_start = _Reading.take(stack, worker)  # the freshness phase starts after it
        fresh, missed, bg_rate = freshness(settings, worker, facts, config.freshness_probes, rng,
                                           background_rate=config.background_rate)  # fmt: skip
        marks.append(_Reading.take(stack, worker))
        end = stack.broker.usage()
        stages["serve_s"] = time.monotonic() - t
        report["serving"] = {
            "model_version": mv.version,
            "swap_s": swap_s,
            "candidates": len(kreqs[0].candidate_author_ids) if kreqs else 0,
            "cold_in_pool": cold,
            "content_streamers": len(facts.content_authors),
            "kafka_rtt_ms": percentiles(k_rtt),
            "kafka_server_ms": percentiles(k_server),
            "http_rtt_ms": percentiles(h_rtt),
            "http_server_ms": percentiles(h_server),
            "errors": sorted(set(k_err + h_err))[:10],
            "error_count": len(k_err) + len(h_err),
            "freshness_ms": percentiles(fresh),
            "freshness_missed": missed,
            "freshness_background_events_per_s": bg_rate,
            # what the cores did in each phase: noida-db rewrites its whole store after writes
            "cpu_cores": {
                phase: a.cores_until(b)
                for phase, a, b in zip(
                    PHASES, [marks[0], marks[1], fresh_start], marks[1:], strict=True
                )
            },
            "broker_store_mib": round(end.store_mib, 1),
            "broker_rss_mib": end.rss_mib,
            "worker_serving": _page(worker, "/mmbee/serving/", config.timeout_s),
            "worker_counters": worker.counters().get("serving", {}),
        }
        report["latency_samples"] = {"kafka_rtt": k_rtt, "http_rtt": h_rtt, "server": k_server + h_server,
                                     "freshness": fresh}  # fmt: skip

    if not config.keep_broker_data:
        freed = stack.broker.discard_store()
        log(f"      deleted the broker's store ({freed:,.0f} MiB; --keep-broker-data keeps it)")
    stages["total_s"] = time.monotonic() - t_start
    report["stages"] = stages
    log("[5/5] writing the report")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    _plot(report, out / "report.png")
    (out / "report.md").write_text(markdown_report(report))
    return report


PHASES = ("http", "kafka", "freshness")
"""The serving phases of the demo, in order, with a CPU reading between each."""


@dataclass(frozen=True)
class _Reading:
    """CPU seconds used so far by the broker, the worker and this process (the clients and
    the load generator), at a monotonic time."""

    t: float
    broker_s: float | None
    worker_s: float | None
    client_s: float

    @classmethod
    def take(cls, stack: LocalStack, worker: WorkerProcess) -> _Reading:
        broker_s = stack.broker.usage().cpu_s
        worker_s = process_usage(worker.proc.pid)[0]
        return cls(time.monotonic(), broker_s, worker_s, time.process_time())

    def cores_until(self, later: _Reading) -> dict[str, float | None]:
        """CPU seconds per second of each process from this reading to `later`."""
        dt = later.t - self.t

        def rate(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None or dt <= 0 else round((b - a) / dt, 2)

        return {"broker": rate(self.broker_s, later.broker_s),
                "worker": rate(self.worker_s, later.worker_s),
                "client": rate(self.client_s, later.client_s)}  # fmt: skip


def _page(worker: WorkerProcess, path: str, timeout_s: float) -> dict[str, Any]:
    """A JSON page of a worker that may be busy catching up (after the freshness load its web
    server can take longer than one GET's timeout to answer): retried until `timeout_s`, then
    reported as unavailable instead of ending the demo."""
    deadline, error = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        try:
            return dict(worker.get(path, timeout_s=15.0))
        except (OSError, ValueError) as exc:  # TimeoutError is an OSError
            error = f"{type(exc).__name__}: {exc}"
            time.sleep(1.0)
    return {"unavailable": error or "no answer"}


def page_screenshot(worker: WorkerProcess, path: Path, timeout_s: float) -> dict[str, Any]:
    """A screenshot of the worker's live page in headless Chromium, once the page has drawn its
    data: `{"path", "url", "console_errors"}`, or `{"missing": why, "url"}` (without Chromium:
    how to get it)."""
    from mmbee.streams.page.browser import (
        HOW_TO_GET_CHROMIUM,
        BrowserError,
        HeadlessPage,
        find_chromium,
    )

    url = worker.base_url + "/"
    if find_chromium() is None:
        return {"missing": HOW_TO_GET_CHROMIUM, "url": url}
    try:
        with HeadlessPage(url, width=1440, height=1000, timeout_s=min(60.0, timeout_s)) as page:
            page.wait_for("Number(document.body.dataset.loaded || 0) >= 1", timeout_s=timeout_s)
            page.screenshot(path)
            errors = list(page.errors)
    except (BrowserError, OSError) as exc:  # TimeoutError is an OSError
        return {"missing": f"no screenshot: {type(exc).__name__}: {exc}", "url": url}
    return {"path": path.name, "url": url, "console_errors": errors}


def _served_version(worker: WorkerProcess) -> str | None:
    try:
        v = worker.get("/mmbee/serving/").get("version")
    except (OSError, ValueError):
        return None
    return v if isinstance(v, str) else None


# --- the report ------------------------------------------------------------------------------


def _row(name: str, p: dict[str, float]) -> str:
    return (
        f"| {name} | {p['n']} | {p['p50']:.1f} | {p['p90']:.1f} | {p['p99']:.1f} | {p['max']:.1f} |"
    )


def markdown_report(report: dict[str, Any]) -> str:
    """The report as markdown (every number measured in this run)."""
    c, s, q, v, st = (report[k] for k in ("config", "stream", "quality", "serving", "stages"))
    w = report.get("world", {})
    lines = [
        "# mmbee demo report",
        "",
        f"World: {c['n_users']} users, {c['n_streamers']} streamers, {c['days']} days "
        f"(preset `{c['preset']}`, seed {c['seed']}): {w.get('clicks', '?')} watches, "
        f"{w.get('gifts', '?')} gifts, {w.get('comments', '?')} comments, "
        f"{w.get('frames', '?')} frames, {w.get('speech', '?')} speech segments.",
        f"One worker ({', '.join(COMPONENTS)}) on the embedded broker, {c['partitions']} "
        f"partitions per topic. Total wall time {st['total_s']:.0f} s "
        f"(simulate {st['simulate_s']:.0f}, stream {st['stream_s']:.0f}, train "
        f"{st['train_s']:.0f}, serve {st['serve_s']:.0f}).",
        "",
        "## Stream",
        "",
        "| figure | value |",
        "|---|---|",
        f"| events replayed into Kafka | {s['events']:,} |",
        f"| replay rate (producer) | {s['replay_events_per_s']:,.0f} events/s |",
        f"| worker ready -> the whole log consumed (a backlog) | {s['consumed_s']:.1f} s "
        f"({s['end_to_end_events_per_s']:,.0f} events/s end to end) |",
        f"| training examples joined by the worker (`train.examples`) | {s['joined_examples']:,} |",
        f"| examples of the offline build of the same log | "
        f"{report['training']['examples_offline']:,} |",
        f"| dead letters | {json.dumps(s['dead_letters']) if s['dead_letters'] else 'none'} |",
        "",
        "## Quality on the last day (time split)",
        "",
        f"Model `{report['training']['variant']}` trained on the earlier days "
        f"({report['training']['train_samples_per_s']:,.0f} samples/s on CPU, "
        f"{report['training']['train_seconds']:.0f} s). The oracle scores with the simulator's "
        "true gift probability; the observable oracle with the part of it that the logged "
        "data can reveal (no hidden per-user propensity).",
        "",
        "| scorer | AUC | UAUC | GAUC | Recall@10 | NDCG@10 |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("test", "popularity", "observable_oracle", "oracle"):
        m = q.get(name)
        if m is None:
            continue
        label = report["training"]["variant"] if name == "test" else name
        lines.append(
            f"| {label} | {m['auc']:.4f} | {m['uauc']:.4f} | {m['gauc']:.4f} | "
            f"{m.get('recall@10', float('nan')):.4f} | {m.get('ndcg@10', float('nan')):.4f} |"
        )
    if "test" in q and "popularity" in q:
        margins = {k: q["test"][k] - q["popularity"][k] for k in ("auc", "uauc", "gauc")}
        lines += [
            "",
            "Against popularity: "
            + ", ".join(f"{k.upper()} {v:+.4f}" for k, v in margins.items())
            + (
                " (the model beats it on all three)."
                if all(v > 0 for v in margins.values())
                else " (the model does NOT beat it on every metric)."
            ),
        ]
    lines += [
        "",
        "## Serving",
        "",
        f"Checkpoint announced on `model.versions` as `{v['model_version']}`; the worker "
        f"loaded it and swapped it in {v['swap_s']:.1f} s after the announcement. Requests of "
        f"last-day viewers, {v['candidates']} candidate streamers each, one at a time.",
        "",
        "| latency (ms) | n | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|---|",
        _row("Kafka request -> response (client)", v["kafka_rtt_ms"]),
        _row("worker scoring time (Kafka requests)", v["kafka_server_ms"]),
        _row("HTTP POST /mmbee/score/ (client)", v["http_rtt_ms"]),
        _row("worker scoring time (HTTP requests)", v["http_server_ms"]),
        _row("freshness: content event -> changed score", v["freshness_ms"]),
        "",
        f"Error responses: {v['error_count']}"
        + (f" ({'; '.join(v['errors'])})" if v["errors"] else "")
        + f". Freshness probes that timed out (10 s): {v['freshness_missed']}.",
        "",
        _cores_line(v),
        "",
        "![report](report.png)",
        "",
        "## The live page",
        "",
    ]
    page = report.get("page", {})
    if "path" in page:
        lines += [
            f"The worker's page ({page['url']} while it ran), after the serving measurements:",
            "",
            f"![live page]({page['path']})",
            "",
        ]
    else:
        lines += [f"No screenshot of the worker's page: {page.get('missing', 'not taken')}.", ""]
    return "\n".join(lines)


def _cores_line(v: dict[str, Any]) -> str:
    """Where the CPU went in each serving phase (the broker shares the machine)."""

    def pair(phase: str) -> str:
        cores = (v.get("cpu_cores") or {}).get(phase) or {}
        b, w, c = (
            "n/a" if cores.get(k) is None else f"{cores[k]:.2f}"
            for k in ("broker", "worker", "client")
        )
        return f"{b} / {w} / {c}"

    return (
        "CPU cores used by the embedded broker / the worker / the demo's clients: HTTP requests "
        f"{pair('http')}, Kafka requests {pair('kafka')}, freshness probes "
        f"{pair('freshness')}; the broker's store file was "
        f"{v.get('broker_store_mib', float('nan')):,.0f} MiB at the end (noida-db rewrites all "
        "of it after writes: deploy/RUNBOOK.md section 11)."
    )


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    samples = report.get("stream_samples", [])
    if samples:
        xs, ys = zip(*samples, strict=True)
        axes[0].plot(xs, ys)
    axes[0].set(title="worker: events processed once it was ready", xlabel="s",
                ylabel="events processed (all agents)")  # fmt: skip
    lat = report["latency_samples"]
    for name in ("kafka_rtt", "http_rtt", "server", "freshness"):
        vals = np.sort(np.asarray(lat[name], dtype=float))
        if len(vals):
            axes[1].plot(vals, np.arange(1, len(vals) + 1) / len(vals), label=name)
    axes[1].set(xscale="log", title="latency CDF", xlabel="ms", ylabel="fraction")
    axes[1].legend()
    q = report["quality"]
    names = [n for n in ("test", "popularity", "observable_oracle", "oracle") if n in q]
    x = np.arange(3)
    for i, n in enumerate(names):
        axes[2].bar(x + i * 0.2, [q[n][m] for m in ("auc", "uauc", "gauc")], 0.2, label=n)
    axes[2].set_xticks(x + 0.3, ["AUC", "UAUC", "GAUC"])
    axes[2].set(ylim=(0.5, 1.0), title="last-day quality")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
