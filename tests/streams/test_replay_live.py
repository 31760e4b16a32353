"""A log replayed at full speed into a worker that is already running (issue 21, item 4).

The worker has read every topic to its end and waits in a long-poll fetch when the replay
starts. The fetch the replay's first records answer carries the high watermarks of that
moment: the topics the replay has not reached yet look read to the end ("quiet") while the
replay is filling them. Event-time alignment must not take that for idleness (docs/streams.md,
"Event-time alignment"): nothing on time is dead-lettered as `late`, and the worker joins the
examples the offline build makes from the same log.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from joinkit import compare, make_log, text_vectors  # noqa: E402

from mmbee.jobs.probes import landed_examples, wait_consumed  # noqa: E402
from mmbee.jobs.stack import WorkerProcess  # noqa: E402
from mmbee.jobs.train import BuildConfig, build_examples  # noqa: E402
from mmbee.schemas.scoring import TrainingExample  # noqa: E402
from mmbee.settings import Settings  # noqa: E402
from mmbee.simulator.replay import replay_log  # noqa: E402
from mmbee.streams.codec import EventCodec  # noqa: E402
from mmbee.streams.topics import ensure_topics  # noqa: E402

pytestmark = [pytest.mark.broker, pytest.mark.models, pytest.mark.slow]


def test_full_speed_replay_into_a_running_worker_is_not_late(
    broker_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    log = make_log(
        tmp_path / "log", text_vectors(request.config), n_users=200, n_streamers=16, days=1
    )
    settings = broker_settings.model_copy(
        update=dict(
            components=("segments", "graph", "joiner"),
            store="rocksdb://",
            log_level="WARNING",
            commit_interval_s=1.0,
            graph_refresh_interval_s=0.5,
            graph_idle_rebuild_s=1.0,
            # a replay into a running worker: a source read to its end holds others back for
            # 2 s (the default, 0, serves live freshness; docs/streams.md, event-time alignment)
            align_idle_ms=2_000,
        )
    )
    ensure_topics(settings)
    build = BuildConfig()  # the worker's defaults: H 50, L 10, N 20, 1 h label window
    built = build_examples(log, build, progress=False)
    offline = len(built.table)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        worker.wait_ready(120)
        time.sleep(2.0)  # every fetch of the idle worker is now a long poll waiting for data
        t0 = time.monotonic()
        stats = replay_log(log, settings, speed=None, attach_text_embeddings=True, progress=False)
        replay_s = time.monotonic() - t0
        per = stats.per_topic
        expected = {
            "segments": sum(per.get(n, 0) for n in ("live.frames", "live.asr", "live.comments")),
            "graph_gifts": per.get("live.gifts", 0),
            "joiner_forward": per.get("live.comments", 0) + per.get("live.gifts", 0),
            "joiner_read_watch": per.get("live.watch", 0),
            "joiner_settled": per.get("live.watch", 0)
            + per.get("live.comments", 0)
            + per.get("live.gifts", 0),
        }
        consumed_s = wait_consumed(worker, expected, 240, [])
        joined = landed_examples(settings, worker, timeout_s=30.0)
        report = compare(examples(settings), built, build)
        dead = worker.dead_letters()
        late = sum(reasons.get("late", 0) for reasons in dead.values())
        print(
            f"replayed {stats.events} events {dict(per)} in {replay_s:.1f} s into the running "
            "worker, "
            f"consumed after {consumed_s:.1f} s; late dead letters {late}, dead letters {dead}; "
            f"joined {joined} of {offline} offline examples ({joined / max(offline, 1):.4f}); "
            f"against the offline build: {report}"
        )
        assert late == 0, dead
        assert joined >= 0.99 * offline > 0, (joined, offline)
        assert report["extra"] == 0 and report.get("missing_not_tail", 0) == 0, report
    finally:
        worker.stop()


def examples(settings: Settings) -> list[TrainingExample]:
    """Every training example on `train.examples`."""
    from kafka import KafkaConsumer, TopicPartition

    topic = settings.topic("train.examples")
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_list(), consumer_timeout_ms=3000)
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        codec, out = EventCodec(), []
        for m in consumer:
            ex = codec.decode(TrainingExample, m.value)
            assert isinstance(ex, TrainingExample), ex
            out.append(ex)
        return out
    finally:
        consumer.close()
