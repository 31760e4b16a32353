"""Provisioning and start-up checks against the real embedded broker: `mmbee topics create`
makes every topic (changelogs compacted) and is idempotent, `mmbee topics check` reports drift,
and a worker refuses to start with a clear message when co-partitioned topics disagree, when a
changelog's partitions differ from its table's, or (production) when topics are missing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from streamkit import REPO, WorkerProcess, settings_env

from mmbee.settings import Settings
from mmbee.streams.deployment import check_deployment, plan_all_topics, provision
from mmbee.streams.topics import ensure_topics, observe_topics

pytestmark = pytest.mark.broker


def mmbee(
    settings: Settings, *argv: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m mmbee ARGV` with the environment of `settings`."""
    return subprocess.run(
        [sys.executable, "-m", "mmbee", *argv],
        env=settings_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def recreate(settings: Settings, name: str, partitions: int) -> None:
    """Delete topic `name` and create it with `partitions`. Apache Kafka deletes a topic
    asynchronously: until it is gone, creating it again is refused with TopicAlreadyExists
    (seen under load, 2026-12-07), so the create is retried until the deletion completed."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_list())
    try:
        if name in admin.list_topics():
            admin.delete_topics([name])
        deadline = time.monotonic() + 60
        while True:
            try:
                admin.create_topics([NewTopic(name, partitions, 1)])
                return
            except TopicAlreadyExistsError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        admin.close()


def production(base: Settings) -> Settings:
    """Production profile on the one-node embedded broker (replication 1 is all it can hold)."""
    return Settings(
        **{**base.model_dump(exclude={"profile", "producer_acks", "standby_replicas"}),
           "profile": "production", "replication_factor": 1, "min_insync_replicas": 1,
           "components": ("segments", "graph")},
    )  # fmt: skip


def test_topics_create_makes_every_topic_and_is_idempotent(broker_settings: Settings) -> None:
    settings = production(broker_settings)
    first = mmbee(settings, "topics", "create", "--profile", "production")
    assert first.returncode == 0, first.stderr
    plans = plan_all_topics(settings)
    created = {line.removeprefix("created ") for line in first.stdout.splitlines()}
    assert created == {p.name for p in plans}
    changelogs = [p for p in plans if p.name.endswith("-changelog")]
    assert {p.name.split("-", 1)[1] for p in changelogs} == {
        "segment_buffers-changelog", "segments-changelog", "graph_users-changelog",
    }  # fmt: skip
    observed = observe_topics(settings, [p.name for p in plans])
    for p in plans:
        seen = observed[p.name]
        assert seen.partitions == p.partitions, p.name
        assert seen.configs.get("cleanup.policy") == p.configs["cleanup.policy"], p.name
    assert all(observed[p.name].configs["cleanup.policy"] == "compact" for p in changelogs)
    assert (
        observed[f"{settings.topic_prefix}graph.user_expansions"].configs["cleanup.policy"]
        == "compact"
    )
    assert observed[f"{settings.app_id}-graph_users-changelog"].partitions == 1

    again = mmbee(settings, "topics", "create", "--profile", "production")
    assert again.returncode == 0 and again.stdout.strip() == "all topics already exist"
    check = mmbee(settings, "topics", "check", "--profile", "production")
    assert check.returncode == 0 and "no drift" in check.stdout, check.stdout + check.stderr

    # drift: a changelog recreated with the wrong partition count and cleanup policy
    changelog = f"{settings.app_id}-segments-changelog"
    recreate(settings, changelog, settings.partitions - 2)
    drift = mmbee(settings, "topics", "check", "--profile", "production")
    assert drift.returncode == 1
    assert (
        f"{changelog}: {settings.partitions - 2} partitions, expected {settings.partitions}"
        in drift.stdout
    )
    assert f"{changelog}: cleanup.policy" in drift.stdout and "expected compact" in drift.stdout


def test_faust_creates_changelogs_compacted_when_not_provisioned(broker_settings: Settings) -> None:
    """dev without `topics create`: the worker creates the catalogue, Faust its changelogs;
    they come out compacted with the table's partition count (production pre-creates them)."""
    settings = broker_settings.model_copy(
        update={"components": ("segments",), "log_level": "WARNING"}
    )
    worker = WorkerProcess(settings, settings.data_dir.parent / "w.log")
    try:
        name = f"{settings.app_id}-segment_buffers-changelog"
        import time

        deadline = time.monotonic() + 60
        while name not in observe_topics(settings, [name]):
            assert worker.proc.poll() is None, worker.tail()
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.3)
        seen = observe_topics(settings, [name])[name]
        assert seen.configs.get("cleanup.policy") == "compact"
        assert seen.partitions == settings.partitions
    finally:
        worker.stop()


def test_worker_refuses_when_copartitioned_topics_disagree(broker_settings: Settings) -> None:
    settings = broker_settings.model_copy(update={"components": ("segments",)})
    ensure_topics(settings)
    comments = settings.topic("live.comments")
    recreate(settings, comments, settings.partitions + 1)
    got = mmbee(settings, "worker")
    assert got.returncode == 2, got.stdout + got.stderr
    assert (
        "refusing to start: topics keyed by author_id must have the same partition count"
        in got.stderr
    )
    assert f"{comments}={settings.partitions + 1}" in got.stderr
    assert "Traceback" not in got.stderr


def test_worker_refuses_when_a_changelog_disagrees_with_its_table(
    broker_settings: Settings,
) -> None:
    settings = broker_settings.model_copy(update={"components": ("segments",)})
    provision(settings)
    changelog = f"{settings.app_id}-segment_buffers-changelog"
    recreate(settings, changelog, settings.partitions * 2)
    got = mmbee(settings, "worker")
    assert got.returncode == 2, got.stdout + got.stderr
    assert f"table changelog {changelog} has {settings.partitions * 2} partitions" in got.stderr
    assert "Traceback" not in got.stderr


def test_production_worker_refuses_without_provisioned_topics(broker_settings: Settings) -> None:
    settings = production(broker_settings)
    got = mmbee(settings, "worker")
    assert got.returncode == 2, got.stdout + got.stderr
    assert "missing topics" in got.stderr
    assert "mmbee topics create --profile production" in got.stderr
    provision(settings)
    assert check_deployment(settings) == []


def test_provision_reports_drift_in_the_catalogue_too(
    broker_settings: Settings, tmp_path: Path
) -> None:
    settings = broker_settings.model_copy(update={"components": ("graph",)})
    assert provision(settings)
    assert provision(settings) == []
    recreate(settings, settings.topic("live.watch"), settings.partitions - 1)
    drift = check_deployment(settings)
    assert any("live.watch" in d and "partitions" in d for d in drift)
