"""Online refresh in a real worker on the real embedded broker: a two-day simulated log is
replayed a day at a time through `segments`, `graph`, `joiner`, `serving` and `refresh`. With
nothing served, the refresh trains its bootstrap variant from the joined examples of day one and
publishes it on `model.versions`; serving swaps it in. Day two brings new examples: the refresh
fine-tunes the announced version (its parent) and serving swaps to that. Every published version
names an earlier one as parent (the first none), carries its hold-out figures, and points at a
checkpoint that exists; the served model answers a request over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from joinkit import make_log, text_vectors
from streamkit import WorkerProcess
from test_worker import read_topic

from mmbee.schemas import ScoreRequest, ScoreResponse, WatchEvent
from mmbee.schemas.serving import ModelVersion
from mmbee.settings import Settings
from mmbee.simulator.logs import MANIFEST
from mmbee.simulator.reader import iter_events
from mmbee.streams.broker import KafkaBroker, NoidaBroker, free_port
from mmbee.streams.components.serving import SCORE_PATH
from mmbee.streams.topics import ensure_topics

pytestmark = [pytest.mark.broker, pytest.mark.models, pytest.mark.slow]

DAY_MS = 86_400_000


def _wait(cond: Callable[[], bool], what: str, worker: WorkerProcess, timeout_s: float,
          state: Callable[[], Any] = lambda: None) -> None:  # fmt: skip
    t0 = time.monotonic()
    while not cond():
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited while waiting for {what}:\n{worker.tail()}")
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out waiting for {what}: {state()}\n{worker.tail(1500)}")
        time.sleep(0.2)


def _get(worker: WorkerProcess, path: str) -> dict[str, Any]:
    try:
        return dict(worker.get(path))
    except (OSError, ValueError):
        return {}


def test_refresh_bootstraps_then_fine_tunes_the_served_model(
    broker: KafkaBroker | NoidaBroker, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    from mmbee.simulator.replay import replay_log

    log = make_log(
        tmp_path / "log", text_vectors(pytestconfig), n_users=200, n_streamers=12, days=2, seed=1
    )
    start_ms = int(json.loads((log / MANIFEST).read_text())["start_ms"])
    settings = Settings(
        bootstrap_servers=broker.bootstrap,
        broker_kind=broker.kind,
        topic_prefix="trefresh.",
        app_id="trefresh-app",
        data_dir=tmp_path / "worker",
        model_dir=tmp_path / "models",
        partitions=4,
        web_port=free_port(),
        components=("segments", "graph", "joiner", "serving", "refresh"),
        store="rocksdb://",
        log_level="WARNING",
        commit_interval_s=0.5,
        stream_batch_wait_ms=10,
        segments_kept=5,
        joiner_history=20,
        graph_top_n=10,
        graph_refresh_interval_s=0.2,
        graph_idle_rebuild_s=0.5,
        joiner_settle_s=0.0,
        serving_poll_s=0.1,
        refresh_interval_s=0.5,
        refresh_min_examples=300,
        refresh_bootstrap_variant="sim_mfq_gie",
    )
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")

    def served() -> str:
        return str(_get(worker, "/mmbee/serving/").get("version") or "")

    def published() -> list[ModelVersion]:
        return [ModelVersion.model_validate_json(v) for v in read_topic(settings, "model.versions")]

    try:
        day_one = replay_log(
            log, settings, end_ms=start_ms + DAY_MS, attach_text_embeddings=True, progress=False
        )
        assert day_one.events > 0
        _wait(lambda: served().startswith("refresh-"), "a bootstrapped model to be served",
              worker, 180, lambda: _get(worker, "/mmbee/refresh/"))  # fmt: skip
        first = served()
        replay_log(log, settings, start_ms=start_ms + DAY_MS, attach_text_embeddings=True,
                   progress=False)  # fmt: skip

        def fine_tuned() -> bool:
            versions = {mv.version: mv for mv in published()}
            now = versions.get(served())
            return now is not None and now.version != first and now.parent_version is not None

        _wait(fine_tuned, "a fine-tuned model to be served", worker, 180,
              lambda: (served(), _get(worker, "/mmbee/refresh/")))  # fmt: skip

        versions = published()
        assert versions[0].parent_version is None and versions[0].source == "refresh"
        seen: set[str] = set()
        for mv in versions:
            assert mv.source == "refresh" and mv.model_name == settings.serving_model_name
            assert mv.parent_version is None or mv.parent_version in seen, (mv, seen)
            assert Path(mv.path).is_file() and Path(mv.path).parent == settings.model_dir.resolve()
            assert mv.examples is not None and mv.examples >= settings.refresh_min_examples
            assert mv.metrics["train_samples_per_s"] > 0
            if mv.parent_version is not None and "auc" in mv.metrics:
                assert "auc_before" in mv.metrics  # the parent scored on the same hold-out
            seen.add(mv.version)
        assert len({mv.version for mv in versions}) == len(versions)
        state = _get(worker, "/mmbee/refresh/")
        assert state["refreshes"] == len(versions) and state["failed"] == []
        assert state["last"]["version"] == versions[-1].version

        # the refreshed model answers over HTTP under its version
        watches = [ev for _, ev in iter_events(log, end_ms=start_ms + DAY_MS)
                   if isinstance(ev, WatchEvent)][:50]  # fmt: skip
        user, authors = watches[0].user_id, sorted({w.author_id for w in watches})[:2]
        req = ScoreRequest(request_id="r1", user_id=user, candidate_author_ids=authors,
                           ts_ms=start_ms + 2 * DAY_MS)  # fmt: skip
        http = urllib.request.Request(
            f"http://127.0.0.1:{settings.web_port}{SCORE_PATH}",
            data=req.model_dump_json().encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(http, timeout=10) as resp:
                answer = ScoreResponse.model_validate_json(resp.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{req}: HTTP {exc.code} {exc.read()!r}") from None
        assert answer.error is None and answer.model_version == served()
        assert len(answer.scores) == len(authors) and all(0 <= s.score <= 1 for s in answer.scores)
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            worker.stop()
