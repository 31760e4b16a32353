"""Helpers of the streams tests (and of bench/chaos.py): small content events, settings -> worker
env, worker processes, segment buffers as a worker shows them, a producer that records acks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from mmbee.schemas import AsrSegment, CommentEvent, FrameEvent, encode_embedding
from mmbee.settings import Settings

T0 = 1_700_000_040_000  # a multiple of the segment lengths used here
FRAME_DIM = 8
TEXT_DIM = 4
CTX = {"frame_dim": FRAME_DIM, "text_dim": TEXT_DIM}
REPO = Path(__file__).resolve().parents[2]


def vec(dim: int, seed: int) -> list[float]:
    """A deterministic small embedding."""
    return np.random.default_rng(seed).normal(size=dim).round(3).astype(np.float32).tolist()


def frame(eid: str, ts: int, author: str = "a1", live: str = "l1", seed: int = 0) -> FrameEvent:
    return FrameEvent.model_validate(
        {
            "event_id": eid,
            "ts_ms": T0 + ts,
            "live_id": live,
            "author_id": author,
            "embedding": vec(FRAME_DIM, seed),
        },
        context=CTX,
    )


def comment(eid: str, ts: int, author: str = "a1", live: str = "l1", seed: int = 0) -> CommentEvent:
    return CommentEvent.model_validate(
        {
            "event_id": eid,
            "ts_ms": T0 + ts,
            "user_id": "u1",
            "author_id": author,
            "live_id": live,
            "text": f"comment {eid}",
            "text_embedding": encode_embedding(np.asarray(vec(TEXT_DIM, seed), np.float32)),
        },
        context=CTX,
    )


def asr(eid: str, ts: int, author: str = "a1", live: str = "l1", seed: int = 0) -> AsrSegment:
    return AsrSegment.model_validate(
        {
            "event_id": eid,
            "ts_ms": T0 + ts,
            "end_ms": T0 + ts + 400,
            "live_id": live,
            "author_id": author,
            "text": f"speech {eid}",
            "text_embedding": vec(TEXT_DIM, seed),
        },
        context=CTX,
    )


TOPIC_OF = {FrameEvent: "live.frames", CommentEvent: "live.comments", AsrSegment: "live.asr"}


def content_stream(n_authors: int, n_per_author: int, step_ms: int, seed: int = 0) -> list[Any]:
    """Interleaved frames/comments/ASR of several authors in event-time order (no lateness)."""
    rng = np.random.default_rng(seed)
    makers = (frame, comment, asr)
    out = []
    for i in range(n_per_author):
        for a in range(n_authors):
            kind = makers[int(rng.integers(0, 3))]
            out.append(kind(f"e{a}-{i}", i * step_ms, author=f"a{a}", seed=int(rng.integers(1e6))))
    return out


def read_topic(settings: Settings, name: str) -> list[bytes]:
    """Every value on topic `name` (all partitions, from the beginning) until it is quiet 1.5 s."""
    topic = settings.topic(name)
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_list(), consumer_timeout_ms=1500)
    try:
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        return [m.value for m in consumer]
    finally:
        consumer.close()


def settings_env(settings: Settings) -> dict[str, str]:
    """The MMBEE_* environment that reproduces `settings` in a worker process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMBEE_")}
    for key, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        env["MMBEE_" + key.upper()] = (
            json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
        )
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class WorkerProcess:
    """`python -m mmbee worker` (or `python *entry worker`) in a subprocess, with its web API on
    settings.web_port."""

    def __init__(
        self, settings: Settings, log_path: Path, entry: tuple[str, ...] = ("-m", "mmbee")
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop/kill)
        self.proc = subprocess.Popen(
            [sys.executable, *entry, "worker"],
            env=settings_env(settings),
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.settings.web_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)

    def counters(self, agent: str = "segments") -> dict[str, Any]:
        try:
            snap = self.get("/mmbee/metrics/")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return {}
        return snap["agents"].get(agent, {"counters": {}, "dlq": {}})

    def wait_for(self, done: Callable[[dict[str, Any]], bool], timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            last = self.counters()
            if last and done(last):
                return last
            time.sleep(0.2)
        raise AssertionError(
            f"worker did not get there in {timeout_s} s; last {last}\n{self.tail()}"
        )

    def tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def kill(self) -> None:
        """SIGKILL: no commit, no flush, no goodbye."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()


class Gets(Protocol):
    """A worker with a web API (`WorkerProcess` here, bench/scale.py's `Worker`)."""

    def get(self, path: str) -> Any: ...


def buffers(w: Gets, authors: list[str]) -> dict[str, Any]:
    """Each author's segment buffer as worker `w` shows it: closed and open segments, watermark,
    applied offsets."""
    out = {}
    for a in authors:
        view = w.get(f"/mmbee/segments/{a}/")
        out[a] = {k: view[k] for k in ("closed", "open", "watermark_ms", "applied")}
    return out


Message = tuple[str, bytes, bytes, int]
"""(catalogue topic, key, value, ts_ms): what the simulator's encoded log yields."""


class AckedProducer:
    """Sends records one by one with acks=all; remembers which the cluster acknowledged (by
    event id).

    A send that fails (the leader died with it in flight and the client's retries ran out) is
    sent again by `resend_failed`: a replayer that gave up would lose the event on purpose.
    For a broker kill, set `moved` (the partitions whose leader was killed) and `killed_at`
    (monotonic seconds): `first_moved_ack` is then when the first of them was acknowledged
    again (bench/chaos.py's stall figure)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap_list(), acks="all", linger_ms=2, retries=5,
            request_timeout_ms=15_000, max_block_ms=30_000,
        )  # fmt: skip
        self.acked: set[str] = set()
        self.killed_at: float | None = None
        self.moved: set[int] = set()
        self.first_moved_ack: float | None = None
        self.failed: list[Message] = []
        self.failures = 0
        self._lock = threading.Lock()

    def send(self, msg: Message) -> None:
        topic, key, value, _ = msg
        eid = json.loads(value)["event_id"]

        def ok(meta: Any) -> None:
            now = time.monotonic()
            with self._lock:
                self.acked.add(eid)
                if (
                    self.first_moved_ack is None
                    and self.killed_at is not None
                    and meta.partition in self.moved
                ):
                    self.first_moved_ack = now

        def bad(_: Exception) -> None:
            with self._lock:
                self.failed.append(msg)
                self.failures += 1

        future = self.producer.send(self.settings.topic(topic), key=key, value=value)
        future.add_callback(ok)
        future.add_errback(bad)

    def resend_failed(self, rounds: int = 5) -> None:
        """Flush, and send the failed records again, up to `rounds` times."""
        for _ in range(rounds):
            self.producer.flush(60)
            with self._lock:
                again, self.failed = self.failed, []
            if not again:
                return
            for m in again:
                self.send(m)
        self.producer.flush(60)

    def close(self) -> None:
        self.producer.close(10)
