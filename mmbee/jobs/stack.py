"""A whole mmbee deployment on one machine: the embedded broker and worker processes.

`LocalStack` starts the broker that `settings.broker_kind` names on 127.0.0.1 with a fresh data
directory (noida-db by default, the demo's zero-Java broker; Apache Kafka for 'kafka', as
`bench/serve.py` runs it), provisions every topic, and runs `python -m mmbee worker` subprocesses configured
through their `MMBEE_*` environment, exactly as a user would start them by hand. The demo and
`bench/serve.py` drive it; `ScoreClient` sends `ScoreRequest`s over Kafka and matches the
responses by request id.

Example:
    >>> with LocalStack(Path("runs/stack"), load_settings()) as stack:  # doctest: +SKIP
    ...     w = stack.start_worker(("segments", "graph", "joiner", "serving"))
    ...     w.wait_ready()
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from mmbee.schemas.events import ScoreRequest, ScoreResponse
from mmbee.settings import Settings
from mmbee.streams.broker import free_port, make_broker, on_broker
from mmbee.streams.deployment import provision
from mmbee.streams.runtime.compat import install_fetch_wait
from mmbee.streams.topics import ensure_topics

__all__ = [
    "worker_env",
    "counters_of",
    "dead_letters_of",
    "WorkerProcess",
    "LocalStack",
    "ScoreClient",
]


def worker_env(settings: Settings) -> dict[str, str]:
    """The process environment (without other `MMBEE_*` variables) that reproduces `settings`
    in a worker process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMBEE_")}
    for key, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        if isinstance(value, dict) and not value:
            continue
        env["MMBEE_" + key.upper()] = (
            json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
        )
    if settings.sasl_password is not None:
        env["MMBEE_SASL_PASSWORD"] = settings.sasl_password.get_secret_value()
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def counters_of(agents: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per agent, its counters, from `WorkerProcess.agents()`."""
    return {a: m.get("counters", {}) for a, m in agents.items()}


def dead_letters_of(agents: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per agent with any, its dead letters by reason, from `WorkerProcess.agents()`."""
    return {a: m["dlq"] for a, m in agents.items() if m.get("dlq")}


class WorkerProcess:
    """`python -m mmbee worker` in a subprocess; its web API on `settings.web_port`.

    Args:
        settings: the worker's settings (passed as environment).
        log_path: where its stdout/stderr go.
    """

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmbee", "worker"],
            env=worker_env(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def get(self, path: str, timeout_s: float = 5.0) -> Any:
        """GET a JSON page of the worker."""
        with urllib.request.urlopen(self.base_url + path, timeout=timeout_s) as resp:
            return json.load(resp)

    def post(self, path: str, body: bytes, timeout_s: float = 10.0) -> tuple[int, Any]:
        """POST a JSON body; (HTTP status, decoded JSON answer)."""
        req = urllib.request.Request(
            self.base_url + path, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def agents(self) -> dict[str, dict[str, Any]]:
        """Per agent, its metrics snapshot: `counters`, `dlq`, ... (empty while the web API is
        not up)."""
        try:
            return dict(self.get("/mmbee/metrics/").get("agents", {}))
        except (OSError, ValueError):
            return {}

    def counters(self) -> dict[str, dict[str, float]]:
        """Per agent, its counters (empty while the web API is not up)."""
        return counters_of(self.agents())

    def dead_letters(self) -> dict[str, dict[str, int]]:
        """Per agent, dead letters by reason."""
        return dead_letters_of(self.agents())

    def alive(self) -> None:
        """Raise with the log tail when the process has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")

    def wait_until(self, done: Callable[[], bool], what: str, timeout_s: float) -> float:
        """Poll `done` every 0.1 s; returns the seconds waited (raises on timeout or exit)."""
        t0 = time.monotonic()
        while not done():
            self.alive()
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"worker: {what} not within {timeout_s} s\n{self.tail()}")
            time.sleep(0.1)
        return time.monotonic() - t0

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/mmbee/health/ready/", timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, ValueError):
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Wait until the readiness probe answers 200 (partitions assigned, tables recovered)."""
        return self.wait_until(self.ready, "readiness", timeout_s)

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        self._log.close()


class LocalStack:
    """The broker, the topics, and worker processes under one root directory.

    Args:
        root: broker data in `root/broker`, worker state in `root/worker-N`, logs beside.
        settings: the base settings; `broker_kind` picks the broker (noida-db or Apache Kafka);
            bootstrap, ports and data dirs are filled in here.
    """

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = Path(root)
        self.broker = make_broker(settings.broker_kind, self.root / "broker", free_port())
        self.settings = on_broker(settings, self.broker)
        self.workers: list[WorkerProcess] = []

    def start(self) -> LocalStack:
        """Start the broker and create every topic."""
        self.broker.start()
        if self.broker.kind == "kafka":
            # the internal topics and changelogs too: on Kafka a topic Faust creates at start-up
            # can miss the consumer's first metadata and then waits minutes (RUNBOOK section 12)
            provision(self.settings)
        else:
            ensure_topics(self.settings)
        return self

    def start_worker(self, components: Sequence[str], **overrides: Any) -> WorkerProcess:
        """Start one more worker running `components`."""
        n = len(self.workers)
        settings = self.settings.model_copy(
            update={
                "components": tuple(components),
                "web_port": free_port(),
                "data_dir": self.root / f"worker-{n}",
                **overrides,
            }
        )
        w = WorkerProcess(settings, self.root / f"worker-{n}.log")
        self.workers.append(w)
        return w

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.broker.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ScoreClient:
    """Sends `ScoreRequest`s on `score.requests` and awaits their `ScoreResponse` on
    `score.responses` (matched by request id); measures the round trip.

    Args:
        settings: bootstrap and topic prefix.
        clock: seconds (perf_counter) for the round-trip times.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.perf_counter):
        self.settings = settings
        self.clock = clock
        self._waiting: dict[str, asyncio.Future[ScoreResponse]] = {}
        self._producer: Any = None
        self._consumer: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ScoreClient:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        s = self.settings
        if s.profile == "dev" and s.broker_kind == "noida":
            # noida-db answers empty fetches at once: without the worker's client-side pause this
            # consumer polls in a tight loop and takes a core from the worker and the broker it
            # measures (mmbee/streams/runtime/compat.py); Apache Kafka holds them itself
            install_fetch_wait(s.embedded_fetch_wait_ms)
        kw = {"bootstrap_servers": s.bootstrap_list(), **s.kafka_client_kwargs()}
        self._producer = AIOKafkaProducer(linger_ms=0, **kw)
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(fetch_max_wait_ms=5, **kw)
        await self._consumer.start()
        topic = s.topic("score.responses")
        parts = [TopicPartition(topic, p) for p in range(s.partitions)]
        self._consumer.assign(parts)
        await self._consumer.seek_to_end(*parts)
        for tp in parts:  # resolve the end offsets now, before any request is sent
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=50)
            for records in batches.values():
                for rec in records:
                    try:
                        resp = ScoreResponse.model_validate_json(rec.value)
                    except ValueError:
                        continue
                    fut = self._waiting.pop(resp.request_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(resp)

    async def score(
        self, req: ScoreRequest, timeout_s: float = 30.0
    ) -> tuple[ScoreResponse, float]:
        """Send one request; (its response, round trip in ms)."""
        fut: asyncio.Future[ScoreResponse] = asyncio.get_running_loop().create_future()
        self._waiting[req.request_id] = fut
        t0 = self.clock()
        await self._producer.send_and_wait(
            self.settings.topic("score.requests"),
            req.model_dump_json().encode(),
            key=req.user_id.encode(),
        )
        resp = await asyncio.wait_for(fut, timeout_s)
        return resp, (self.clock() - t0) * 1000.0

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 (shutting down)
                pass
        await self._consumer.stop()
        await self._producer.stop()
