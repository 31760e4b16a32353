"""Serving in a real worker on the real embedded broker: a tiny simulated log replayed through
`segments`, `graph`, `joiner` and `serving`, two small trained checkpoints announced on
`model.versions`, score requests over Kafka and over HTTP (scores equal the offline
point-in-time features' scores), bad requests, unservable announcements, and a hot swap while
requests stream in. Last, without a broker: a forward pass that raises is an error response,
and a changed model file is not flipped back to the announced version.

One worker for the whole module (starting one costs ~10 s on the 2-core CI box); the tests run
in file order: Kafka, HTTP, bad requests and refused announcements under `v1`, then the swap
to `v2`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from joinkit import make_log, text_vectors
from streamkit import WorkerProcess
from test_worker import read_topic

from mmbee.jobs.train import BuildConfig, TrainJob, run_train
from mmbee.schemas import DeadLetter, GiftEvent, ScoreRequest, ScoreResponse, WatchEvent
from mmbee.schemas.serving import ModelVersion
from mmbee.scorer.features import FeatureConfig
from mmbee.scorer.gtr import load_checkpoint
from mmbee.scorer.train import TrainConfig
from mmbee.settings import Settings
from mmbee.simulator.reader import iter_events
from mmbee.simulator.replay import replay_log
from mmbee.streams.broker import KafkaBroker, NoidaBroker, free_port
from mmbee.streams.components.serving import SCORE_PATH
from mmbee.streams.topics import ensure_topics

FEATURES = FeatureConfig(history=20, segments=5, expansion_n=10)
MAX_CANDIDATES = 20
T_MS = 1_700_000_000_000
CONTENT = ("live.frames", "live.asr", "live.comments")


@dataclass
class Served:
    """The module's worker and what the tests need to know about its data."""

    settings: Settings
    worker: WorkerProcess
    log: Path
    users: list[str]  # viewers with history (their rows are on the worker)
    authors: list[str]  # streamers with content segments
    now_ms: int  # a request time after the whole log
    models: dict[str, Path]  # version -> checkpoint
    announced: list[str] = field(default_factory=list)

    def post(self, body: bytes) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.settings.web_port}{SCORE_PATH}"
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def serving(self) -> dict[str, Any]:
        try:
            return dict(self.worker.get("/mmbee/serving/"))
        except (OSError, ValueError):
            return {}

    def counters(self) -> dict[str, dict[str, float]]:
        try:
            snap = self.worker.get("/mmbee/metrics/")
        except (OSError, ValueError):
            return {}
        return {a: m.get("counters", {}) for a, m in snap.get("agents", {}).items()}

    def announce(self, version: str) -> ModelVersion:
        """Publish checkpoint `version` on `model.versions` (created now: the newest wins)."""
        path = self.models[version]
        mv = ModelVersion(
            model_name=self.settings.serving_model_name,
            version=version,
            path=str(path.resolve()),
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            created_at_ms=int(time.time() * 1000),
            source="train",
        )
        _send(
            self.settings, "model.versions", mv.model_name.encode(), mv.model_dump_json().encode()
        )
        self.announced.append(version)
        return mv

    def request(self, rid: str, user: str, authors: list[str]) -> ScoreRequest:
        return ScoreRequest(
            request_id=rid, user_id=user, candidate_author_ids=authors, ts_ms=self.now_ms
        )


def _send(settings: Settings, name: str, key: bytes | None, value: bytes) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_list(), linger_ms=0)
    try:
        producer.send(settings.topic(name), key=key, value=value).get(timeout=30)
    finally:
        producer.close()


def _wait(
    cond: Callable[[], bool],
    what: str,
    worker: WorkerProcess,
    timeout_s: float,
    state: Callable[[], Any] = lambda: None,
) -> float:
    t0 = time.monotonic()
    while not cond():
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited while waiting for {what}:\n{worker.tail()}")
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out waiting for {what}: {state()}\n{worker.tail(1500)}")
        time.sleep(0.1)
    return time.monotonic() - t0


def quiet(s: Served, seconds: float) -> Callable[[], bool]:
    """True once the graph agent has rebuilt its walk caches after the last gift and nothing
    it publishes moved for `seconds` (the user and streamer expansions are final)."""
    last: dict[str, Any] = {"c": None, "since": time.monotonic()}

    def check() -> bool:
        g = s.counters().get("graph", {})
        c = [g.get(k, 0) for k in ("applied", "rebuilds", "published")]
        if c != last["c"] or not c[1]:
            last["c"], last["since"] = c, time.monotonic()
        return time.monotonic() - last["since"] >= seconds

    return check


def _train(log: Path, out: Path, seed: int, cache: Path) -> Path:
    """A small sim_mfq_gie checkpoint (dim 16, the default two training stages) on the log; the
    first call builds the examples, the second reuses them. GIE's graph-membership features
    (off by default) are on, and MFQ's now path is on by default, so the parity checks below
    cover every input the model reads."""
    job = TrainJob(
        logdir=log,
        out=out,
        variant="sim_mfq_gie",
        build=BuildConfig(features=FEATURES),
        train=TrainConfig(progress=False, seed=seed, device="cpu"),
        test_days=0.25,
        cache_dir=cache,
        model_overrides={"dim": 16, "gie_membership": True},
    )  # fmt: skip
    path = Path(run_train(job, log=lambda _m: None)["checkpoint"])
    model, _ = load_checkpoint(path)
    assert model.config.gie_membership and getattr(model.content, "now", None) is not None
    return path


@pytest.fixture(scope="module")
def served(
    broker: KafkaBroker | NoidaBroker, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serving")
    log = make_log(root / "log", text_vectors(pytestconfig), n_users=150, n_streamers=12, days=1)
    models = {f"v{i + 1}": _train(log, root / f"m{i}", i, root / "cache") for i in range(2)}
    watches = gifts_comments = content = gifts = 0
    users: set[str] = set()
    authors: set[str] = set()
    end = 0
    for topic, ev in iter_events(log):
        end = max(end, ev.ts_ms)
        if topic in CONTENT:
            content += 1
            authors.add(ev.author_id)  # type: ignore[attr-defined]
        if isinstance(ev, WatchEvent):
            watches += 1
            users.add(ev.user_id)
        if isinstance(ev, GiftEvent) or topic == "live.comments":
            gifts_comments += 1
            gifts += isinstance(ev, GiftEvent)
    settings = Settings(
        bootstrap_servers=broker.bootstrap,
        broker_kind=broker.kind,
        topic_prefix="tserving.",
        app_id="tserving-app",
        data_dir=root / "worker",
        partitions=4,
        web_port=free_port(),
        components=("segments", "graph", "joiner", "serving"),
        store="rocksdb://",
        log_level="WARNING",
        commit_interval_s=0.5,
        stream_batch_wait_ms=10,
        segments_kept=FEATURES.segments,
        joiner_history=FEATURES.history,
        graph_top_n=FEATURES.expansion_n,
        graph_refresh_interval_s=0.2,
        graph_idle_rebuild_s=0.5,
        joiner_settle_s=0.0,
        serving_poll_s=0.1,
        serving_max_candidates=MAX_CANDIDATES,
    )
    ensure_topics(settings)
    worker = WorkerProcess(settings, root / "worker.log")
    try:
        replay_log(log, settings, attach_text_embeddings=True, progress=False)
        s = Served(settings, worker, log, sorted(users), sorted(authors), end + 1, models)

        def consumed() -> bool:
            c = s.counters()
            return (
                c.get("segments", {}).get("processed", 0) >= content
                and c.get("joiner", {}).get("applied", 0) >= watches + gifts_comments
                and c.get("graph", {}).get("applied", 0) >= gifts
            )

        expected = {"content": content, "watches": watches, "applied": watches + gifts_comments,
                    "gifts": gifts}  # fmt: skip
        _wait(consumed, "the replayed log", worker, 60, lambda: (expected, s.counters()))
        _wait(quiet(s, 1.5), "the graph's walk caches to settle", worker, 30)
        s.announce("v1")
        _wait(lambda: s.serving().get("version") == "v1", "the first model", worker, 60)
        yield s
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            worker.stop()


# --- a Kafka client -------------------------------------------------------------------------


class KafkaScorer:
    """Sends requests on `score.requests` and collects every `score.responses` message."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.responses: list[ScoreResponse] = []
        self.by_id: dict[str, ScoreResponse] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> KafkaScorer:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        s = self.settings
        self.producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_list(), linger_ms=0)
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_list(), fetch_max_wait_ms=5)
        await self.consumer.start()
        topic = s.topic("score.responses")
        parts = [TopicPartition(topic, p) for p in range(s.partitions)]
        self.consumer.assign(parts)
        await self.consumer.seek_to_end(*parts)
        for tp in parts:  # resolve the end offsets before anything is sent
            await self.consumer.position(tp)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=50)
            for records in batches.values():
                for rec in records:
                    resp = ScoreResponse.model_validate_json(rec.value)
                    self.responses.append(resp)
                    self.by_id[resp.request_id] = resp

    async def send(self, value: bytes, key: bytes | None) -> None:
        await self.producer.send_and_wait(self.settings.topic("score.requests"), value, key=key)

    async def ask(self, req: ScoreRequest) -> None:
        await self.send(req.model_dump_json().encode(), req.user_id.encode())

    async def wait_for(self, done: Callable[[], bool], timeout_s: float = 30.0) -> None:
        t0 = time.monotonic()
        while not done():
            assert time.monotonic() - t0 < timeout_s, f"{len(self.responses)} responses so far"
            await asyncio.sleep(0.02)

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.consumer.stop()
        await self.producer.stop()


def scores(resp: ScoreResponse | dict[str, Any]) -> list[float]:
    r = resp if isinstance(resp, ScoreResponse) else ScoreResponse.model_validate(resp)
    return [s.score for s in r.scores]


def requests_for(s: Served, tag: str, n: int, k: int = 8) -> list[ScoreRequest]:
    """`n` requests of different viewers, each with `k` streamers with content (rotated)."""
    out = []
    for i in range(n):
        user = s.users[(i * 7) % len(s.users)]
        cands = [s.authors[(i + j) % len(s.authors)] for j in range(min(k, len(s.authors)))]
        out.append(s.request(f"{tag}-{i}", user, cands))
    return out


def offline_scores(s: Served, version: str, reqs: list[ScoreRequest]) -> list[list[float]]:
    """Scores of `reqs` by checkpoint `version` from the offline feature state of the whole log
    (as `mmbee train` builds it: segments closed by the same buffer code, every impression
    snapshotted so the user's day-start inputs freeze as they do in the joiner)."""
    from mmbee.jobs.train import live_categories
    from mmbee.schemas import AsrSegment, CommentEvent, FrameEvent
    from mmbee.scorer.features import FeatureState, MemorySegmentStore
    from mmbee.scorer.predict import load_model, score_request
    from mmbee.simulator.reader import read_log
    from mmbee.state.segments import ContentItem, SegmentBuffer, SegmentConfig, update

    bundle = read_log(s.log)
    seg_cfg = SegmentConfig(
        segment_ms=s.settings.segment_ms,
        segments_kept=FEATURES.segments,
        allowed_lateness_ms=s.settings.allowed_lateness_ms,
        text_dim=s.settings.text_dim,
    )
    store = MemorySegmentStore(s.settings.frame_dim, s.settings.text_dim, "float16")
    state = FeatureState(FEATURES, store=store, live_categories=live_categories(bundle))
    buffers: dict[str, SegmentBuffer] = {}
    for _topic, ev in iter_events(bundle, attach_text_embeddings=True):
        if isinstance(ev, FrameEvent | CommentEvent | AsrSegment):
            item = ContentItem.from_event(ev, None)
            buf = buffers.get(item.author_id) or SegmentBuffer.empty(item.author_id)
            buffers[item.author_id], closed, _ = update(buf, item, seg_cfg)
            for seg in closed:
                state.apply(seg, at_ms=ev.ts_ms)
            if not isinstance(ev, CommentEvent):
                continue
        if isinstance(ev, WatchEvent) and ev.action == "enter":
            state.snapshot(ev.event_id, ev.user_id, ev.author_id, ev.live_id, ev.ts_ms)
        state.apply(ev)
    loaded = load_model(s.models[version], version)
    out = []
    for req in reqs:
        user = state.user_side(req.user_id, req.ts_ms)
        sides = [state.author_side(a, None, req.ts_ms) for a in req.candidate_author_ids]
        resp = score_request(loaded, req, user, sides, state.users.get(req.user_id), store)
        assert resp.error is None, resp.error
        out.append(scores(resp))
    return out


def check_scored(req: ScoreRequest, resp: ScoreResponse, version: str) -> None:
    assert resp.error is None, resp.error
    assert resp.request_id == req.request_id and resp.user_id == req.user_id
    assert [s.author_id for s in resp.scores] == req.candidate_author_ids
    assert all(np.isfinite(s.score) and 0.0 <= s.score <= 1.0 for s in resp.scores)
    assert resp.model_version == version
    assert resp.latency_ms > 0.0 and resp.ts_ms == req.ts_ms


# --- (a) Kafka ------------------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.models
@pytest.mark.slow
def test_requests_over_kafka_are_answered_by_the_swapped_in_model(served: Served) -> None:
    reqs = requests_for(served, "kafka", 12)

    async def run() -> dict[str, ScoreResponse]:
        async with KafkaScorer(served.settings) as client:
            for req in reqs:
                await client.ask(req)
            await client.wait_for(lambda: all(r.request_id in client.by_id for r in reqs))
            return client.by_id

    got = asyncio.run(run())
    for req in reqs:
        check_scored(req, got[req.request_id], "v1")
    # the worker's features are the offline point-in-time ones: the same model scoring the
    # same request from a FeatureState fed the whole log gives the same probabilities
    expected = offline_scores(served, "v1", reqs)
    for req, want in zip(reqs, expected, strict=True):
        assert np.allclose(scores(got[req.request_id]), want, rtol=1e-4, atol=0), req.user_id
    assert len({x for r in reqs for x in scores(got[r.request_id])}) > len(reqs)
    state = served.serving()
    assert state["version"] == "v1" and state["model"]["kind"] == "topic"
    assert state["content_cached"] >= len(served.authors)  # h_m of every streamer, up front
    c = served.counters()["serving"]
    assert c["scored"] >= len(reqs) and c.get("content_misses", 0) == 0


# --- (b) HTTP -------------------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.models
@pytest.mark.slow
def test_http_answers_equal_kafka_answers(served: Served) -> None:
    reqs = requests_for(served, "both", 4)

    async def run() -> dict[str, ScoreResponse]:
        async with KafkaScorer(served.settings) as client:
            for req in reqs:
                await client.ask(req)
            await client.wait_for(lambda: all(r.request_id in client.by_id for r in reqs))
            return client.by_id

    over_kafka = asyncio.run(run())
    for req in reqs:
        status, body = served.post(req.model_dump_json().encode())
        assert status == 200, body
        resp = ScoreResponse.model_validate(body)
        check_scored(req, resp, "v1")
        assert scores(resp) == scores(over_kafka[req.request_id])  # same features, same model
    assert served.counters()["serving"]["http"] >= len(reqs)


# --- (c) bad requests -----------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.models
@pytest.mark.slow
def test_bad_requests_get_an_error_never_silence(served: Served) -> None:
    s = served
    user, authors = s.users[0], s.authors[:3]
    too_many = [f"x{i}" for i in range(MAX_CANDIDATES + 1)]
    cases: dict[str, tuple[bytes, bytes | None, str]] = {
        # request id -> (value, key, expected part of the error)
        "bad-unknown-user": (
            s.request("bad-unknown-user", "nobody-here", authors).model_dump_json().encode(),
            b"nobody-here",
            "unknown user 'nobody-here'",
        ),
        "bad-unknown-author": (
            s.request("bad-unknown-author", user, [authors[0], "ghost"]).model_dump_json().encode(),
            user.encode(),
            "unknown streamers: 'ghost'",
        ),
        "bad-too-many": (
            s.request("bad-too-many", user, too_many).model_dump_json().encode(),
            user.encode(),
            f"too many candidates: {MAX_CANDIDATES + 1} > {MAX_CANDIDATES}",
        ),
        "bad-invalid": (  # valid JSON, invalid request: dead-lettered too
            json.dumps(
                {
                    "request_id": "bad-invalid",
                    "user_id": user,
                    "candidate_author_ids": [],
                    "ts_ms": s.now_ms,
                }
            ).encode(),
            user.encode(),
            "bad request (validation_error)",
        ),  # fmt: skip
    }
    garbage = b"\xff{not json"

    async def run() -> list[ScoreResponse]:
        async with KafkaScorer(s.settings) as client:
            for value, key, _ in cases.values():
                await client.send(value, key)
            await client.send(garbage, b"garbage-key")
            await client.wait_for(
                lambda: (
                    set(cases) <= set(client.by_id)
                    and any(r.user_id == "garbage-key" for r in client.responses)
                )
            )
            return client.responses

    responses = asyncio.run(run())
    by_id = {r.request_id: r for r in responses}
    for rid, (_, _, expected) in cases.items():
        resp = by_id[rid]
        assert resp.error is not None and expected in resp.error, (rid, resp.error)
        assert resp.scores == [] and resp.model_version == "v1"
    (junk,) = [r for r in responses if r.user_id == "garbage-key"]
    assert junk.error is not None and junk.error.startswith("bad request (decode_error)")
    assert junk.request_id == "" and junk.scores == []

    # the undecodable and the invalid request are dead-lettered with their reasons
    source = s.settings.topic("score.requests")

    def serving_letters() -> list[DeadLetter]:
        return [
            d
            for d in (DeadLetter.model_validate_json(v) for v in read_topic(s.settings, "dlq"))
            if d.agent == "serving" and d.source_topic == source
        ]

    deadline = time.monotonic() + 10
    while len(letters := serving_letters()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(d.reason for d in letters) == ["decode_error", "validation_error"]
    assert {d.original for d in letters} >= {garbage}

    # the same over HTTP: 400 with the reason
    for rid in ("bad-unknown-user", "bad-unknown-author", "bad-too-many", "bad-invalid"):
        status, body = s.post(cases[rid][0])
        assert status == 400 and cases[rid][2] in body["error"], (rid, status, body)
        assert body["request_id"] == rid
    status, body = s.post(garbage)
    assert status == 400 and body["error"].startswith("bad request (decode_error)")
    status, body = s.post(b"[1, 2]")
    assert status == 400 and body["error"].startswith("bad request")
    # and the worker still answers good requests
    req = requests_for(s, "after-bad", 1)[0]
    status, body = s.post(req.model_dump_json().encode())
    assert status == 200, body
    check_scored(req, ScoreResponse.model_validate(body), "v1")


# --- announcements that cannot be served ---------------------------------------------------


@pytest.mark.broker
@pytest.mark.models
@pytest.mark.slow
def test_unservable_announcements_are_refused_and_v1_keeps_serving(
    served: Served, tmp_path: Path
) -> None:
    s = served
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    half = tmp_path / "half.pt"
    half.write_bytes(s.models["v1"].read_bytes()[:5000])  # a half-copied file
    good = s.models["v2"]
    announcements = [  # (version, path, sha256)
        ("bad-garbage", garbage, hashlib.sha256(garbage.read_bytes()).hexdigest()),
        ("bad-half", half, hashlib.sha256(half.read_bytes()).hexdigest()),
        ("bad-sha", good, "0" * 64),  # a file that is not the announced one
        ("bad-missing", tmp_path / "nowhere.pt", "1" * 64),
    ]
    failures0 = s.counters()["serving"].get("load_failures", 0)
    for version, path, sha in announcements:
        mv = ModelVersion(
            model_name=s.settings.serving_model_name, version=version, path=str(path), sha256=sha,
            created_at_ms=int(time.time() * 1000), source="manual",
        )  # fmt: skip
        _send(s.settings, "model.versions", mv.model_name.encode(), mv.model_dump_json().encode())

        def refused(v: str = version) -> bool:
            return v in s.serving().get("failed", [])

        _wait(refused, version, s.worker, 20)
    state = s.serving()
    assert state["version"] == "v1" and state["swaps"] == 1 and not state["loading"]
    assert "bad-missing" in state["failed"] and "nowhere.pt" in state["last_failure"]
    assert s.counters()["serving"]["load_failures"] == failures0 + len(announcements)
    req = requests_for(s, "after-refusals", 1)[0]
    status, body = s.post(req.model_dump_json().encode())
    assert status == 200, body
    check_scored(req, ScoreResponse.model_validate(body), "v1")


# --- (d) hot swap under load ----------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.models
@pytest.mark.slow
def test_hot_swap_while_requests_stream_in(served: Served) -> None:
    s = served
    templates = requests_for(s, "tpl", 6)

    def copy(i: int, tag: str) -> ScoreRequest:
        t = templates[i % len(templates)]
        return t.model_copy(update={"request_id": f"{tag}-{i}"})

    async def run() -> tuple[list[ScoreRequest], dict[str, ScoreResponse], dict[str, Any]]:
        sent: list[ScoreRequest] = []
        async with KafkaScorer(s.settings) as client:

            async def burst(tag: str, n: int) -> list[ScoreRequest]:
                reqs = [copy(i, tag) for i in range(n)]
                for r in reqs:
                    await client.ask(r)
                await client.wait_for(lambda: all(r.request_id in client.by_id for r in reqs))
                return reqs

            before = await burst("ref1", len(templates))  # v1's scores of each template
            loop = asyncio.get_running_loop()
            swapped = loop.run_in_executor(None, _announce_and_wait, s, "v2")
            i = 0
            while not swapped.done() or i < 40:  # keep asking until well after the swap
                req = copy(i, "live")
                await client.ask(req)
                sent.append(req)
                i += 1
                await asyncio.sleep(0.005)
            swap_s = await swapped
            await client.wait_for(lambda: all(r.request_id in client.by_id for r in sent))
            after = await burst("ref2", len(templates))  # v2's scores of each template
            refs = {
                "v1": [scores(client.by_id[r.request_id]) for r in before],
                "v2": [scores(client.by_id[r.request_id]) for r in after],
                "versions": [client.by_id[r.request_id].model_version for r in before + after],
                "swap_s": swap_s,
            }
            return sent, client.by_id, refs

    sent, got, refs = asyncio.run(run())
    assert refs["versions"] == ["v1"] * len(templates) + ["v2"] * len(templates)
    assert not np.allclose(refs["v1"], refs["v2"], rtol=1e-3, atol=0), "the models score alike"
    seen: dict[str, int] = {"v1": 0, "v2": 0}
    last_version: dict[str, str] = {}
    for i, req in enumerate(sent):
        resp = got[req.request_id]
        check_scored(req, resp, resp.model_version)
        assert resp.model_version in ("v1", "v2")
        expected = refs[resp.model_version][i % len(templates)]
        # the whole of one model: never a mix of old weights and new content embeddings
        assert np.allclose(scores(resp), expected, rtol=1e-6, atol=0), (i, resp.model_version)
        seen[resp.model_version] += 1
        # one user's requests are answered in order (one partition): once v2, never v1 again
        prev = last_version.get(req.user_id)
        assert not (prev == "v2" and resp.model_version == "v1"), (i, req.user_id)
        last_version[req.user_id] = resp.model_version
    assert seen["v1"] > 0 and seen["v2"] > 0, seen
    state = s.serving()
    assert state["version"] == "v2" and state["swaps"] == 2 and "v2" not in state["failed"]


def _announce_and_wait(s: Served, version: str) -> float:
    time.sleep(0.3)  # requests are already flowing
    s.announce(version)
    return _wait(lambda: s.serving().get("version") == version, version, s.worker, 30)


# --- a model that does not fit the worker's data (no broker: the runtime in-process) -------


def in_process(tmp_path: Path, **settings: Any) -> tuple[Any, Any]:
    """(StreamContext, ServingRuntime) of `joiner` + `serving` built but not started (frame
    width 8, text width 4), its views marked caught up."""
    from mmbee.streams.app import build_app
    from mmbee.streams.components.serving import ServingRuntime
    from mmbee.streams.publish import MemoryPublisher

    s = Settings(store="memory://", data_dir=tmp_path / "w", frame_dim=8, text_dim=4, **settings)
    ctx = build_app(s, components=["joiner", "serving"], publisher=MemoryPublisher())
    runtime = ctx.runtimes["serving"]
    assert isinstance(runtime, ServingRuntime)
    runtime.views.reader.caught_up.set()
    return ctx, runtime


def small_checkpoint(path: Path, seed: int, visual_dim: int = 8) -> Path:
    """An untrained sim_mfq_gie checkpoint (mean-pool content encoder over `visual_dim`-wide
    frames and 4-wide texts)."""
    import torch

    from mmbee.scorer.gtr import GTRModel, config_for_variant, save_checkpoint

    torch.manual_seed(seed)
    cfg = config_for_variant(
        "sim_mfq_gie", content_encoder="mean-pool", dim=8, user_rows=64, author_rows=64,
        hidden=(16,), content_config={"visual_dim": visual_dim, "speech_dim": 4,
                                      "comment_dim": 4, "out_dim": 8},
    )  # fmt: skip
    save_checkpoint(path, GTRModel(cfg), {"build": {"features": dict(FEATURES.__dict__)}})
    return path


def test_a_scoring_failure_is_an_error_response_not_a_dead_agent(tmp_path: Path) -> None:
    """A checkpoint whose content encoder expects other feature widths than this worker's
    segments: the forward pass raises; the request gets `scoring failed` (HTTP 500), counted."""
    from mmbee.schemas import SegmentClosed
    from mmbee.scorer.predict import load_model
    from mmbee.streams.components.serving import SCORING_FAILED

    ctx, runtime = in_process(tmp_path, serving_reject_unknown_users=False)
    path = small_checkpoint(tmp_path / "wide.pt", 0, visual_dim=16)
    t0 = 1_700_000_000_000
    seg = SegmentClosed.model_validate(
        dict(author_id="a1", live_id="l1", start_ms=t0, end_ms=t0 + 30_000, n_frames=1,
             n_comments=0, n_asr=0, frame_mean=[1.0] * 8),
        context={"frame_dim": 8, "text_dim": 4},
    )  # fmt: skip
    req = ScoreRequest(
        request_id="r1", user_id="u1", candidate_author_ids=["a1"], ts_ms=t0 + 99_000
    )

    async def run() -> ScoreResponse:
        runtime.views.segments.put(seg)
        runtime.holder.swap(load_model(path, "wide"))
        return await runtime.score(req, 0, time.perf_counter())

    resp = asyncio.run(run())
    runtime.shutdown()
    assert resp.error is not None and resp.error.startswith(f"{SCORING_FAILED}: RuntimeError")
    assert resp.scores == [] and resp.model_version == "wide" and resp.request_id == "r1"
    c = ctx.metrics.snapshot()["agents"]["serving"]["counters"]
    assert c["failures"] == 1 and c["errors"] == 1


def test_a_changed_model_file_stays_served_until_the_next_announcement(tmp_path: Path) -> None:
    """Topic and file both configured: the announced version, then the changed file, and the
    poll does not flip back to the (already served) announced version; a newer announcement
    wins again."""
    import shutil

    watched = tmp_path / "served.pt"
    ctx, runtime = in_process(tmp_path, serving_model_path=watched)
    a = small_checkpoint(tmp_path / "a.pt", 0)
    b = small_checkpoint(tmp_path / "b.pt", 1)

    def announce(version: str, path: Path, at_ms: int) -> None:
        runtime.views.models.put(ModelVersion(
            model_name="gtr", version=version, path=str(path),
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(), created_at_ms=T_MS + at_ms,
        ))  # fmt: skip

    async def run() -> list[str | None]:
        seen = []
        announce("t1", a, 1)
        await runtime.poll_models()  # the topic first
        seen.append(runtime.holder.version)
        shutil.copy(b, watched)
        for _ in range(3):  # the file, then it stays
            await runtime.poll_models()
            seen.append(runtime.holder.version)
        announce("t2", a, 2)
        await runtime.poll_models()
        seen.append(runtime.holder.version)
        return seen

    seen = asyncio.run(run())
    runtime.shutdown()
    file_version = hashlib.sha1(b.read_bytes()).hexdigest()[:12]
    assert seen == ["t1", file_version, file_version, file_version, "t2"]
    assert runtime.holder.swaps == 3
