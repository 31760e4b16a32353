"""The production profile on a real 3-node Apache Kafka KRaft cluster on loopback ports:
`mmbee topics create --profile production` makes every topic with replication 3 and
min.insync.replicas 2, `mmbee topics check` finds no drift, and a production worker (acks=all)
processes events, and keeps processing them with one of the three brokers killed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from streamkit import CTX, REPO, TOPIC_OF, WorkerProcess, content_stream, settings_env

from mmbee.settings import Settings
from mmbee.streams.broker import KafkaCluster, free_port
from mmbee.streams.deployment import plan_all_topics
from mmbee.streams.topics import observe_topics

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    c = KafkaCluster(tmp_path_factory.mktemp("cluster"))
    c.start()
    try:
        yield c
    finally:
        c.stop()


def production_settings(cluster: KafkaCluster, tmp_path: Path) -> Settings:
    return Settings(
        profile="production",
        bootstrap_servers=cluster.bootstrap,
        broker_kind="kafka",
        topic_prefix="prod.",
        app_id="prod-app",
        data_dir=tmp_path / "worker",
        partitions=4,
        web_port=free_port(),
        components=("segments",),
        segment_ms=1_000,
        allowed_lateness_ms=0,
        frame_dim=CTX["frame_dim"],
        text_dim=CTX["text_dim"],
        log_level="INFO",
    )


def mmbee(settings: Settings, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmbee", *argv], env=settings_env(settings), cwd=REPO,
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def produce(settings: Settings, events: list) -> None:
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap_list(), acks="all", linger_ms=5, retries=10
    )
    for e in events:
        producer.send(settings.topic(TOPIC_OF[type(e)]), key=e.author_id.encode(),
                      value=e.model_dump_json().encode())  # fmt: skip
    producer.flush(60)
    producer.close()


def test_production_profile_on_three_brokers(cluster: KafkaCluster, tmp_path: Path) -> None:
    settings = production_settings(cluster, tmp_path)
    assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)
    assert settings.producer_acks == "all" and settings.member_watchdog is False

    created = mmbee(settings, "topics", "create", "--profile", "production")
    assert created.returncode == 0, created.stdout + created.stderr
    plans = plan_all_topics(settings)
    names = [p.name for p in plans]
    assert {ln.removeprefix("created ") for ln in created.stdout.splitlines()} == set(names)

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_list())
    try:
        described = admin.describe_topics(names)
    finally:
        admin.close()
    assert len(described) == len(names)
    for topic in described:
        assert topic["partitions"], topic["topic"]
        for part in topic["partitions"]:
            assert sorted(part["replica_nodes"]) == [1, 2, 3], (topic["topic"], part)
            assert len(part["isr_nodes"]) == 3, (topic["topic"], part)
    observed = observe_topics(settings, names)
    assert {observed[n].configs.get("min.insync.replicas") for n in names} == {"2"}

    check = mmbee(settings, "topics", "check", "--profile", "production")
    assert check.returncode == 0 and "no drift" in check.stdout, check.stdout + check.stderr

    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        first = content_stream(n_authors=4, n_per_author=10, step_ms=300, seed=1)
        produce(settings, first)
        worker.wait_for(lambda a: a["counters"].get("processed", 0) >= len(first), 180)

        # one broker of three down: min.insync.replicas 2 still holds, nothing stops
        cluster.nodes[2].kill()
        later = 10 * 300
        second = [  # new ids, later event time
            e.model_copy(update={"event_id": "b-" + e.event_id, "ts_ms": e.ts_ms + later}
                         | ({"end_ms": e.end_ms + later} if hasattr(e, "end_ms") else {}))
            for e in content_stream(n_authors=4, n_per_author=10, step_ms=300, seed=2)
        ]  # fmt: skip
        produce(settings, second)
        total = len(first) + len(second)
        worker.wait_for(lambda a: a["counters"].get("processed", 0) >= total, 180)
        assert worker.proc.poll() is None
    finally:
        worker.stop()
