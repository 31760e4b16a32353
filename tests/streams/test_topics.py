"""Topic provisioning: plan, idempotent create, drift report, co-partitioning refusal."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from mmbee.settings import Settings
from mmbee.streams.topics import (
    CoPartitioningError,
    ObservedTopic,
    check_topics,
    copartition_problems,
    diff_topics,
    ensure_topics,
    observe_topics,
    plan_topics,
    verify_copartitioning,
)


def test_plan_follows_profile() -> None:
    dev = {p.name: p for p in plan_topics(Settings(profile="dev"))}
    prod = {
        p.name: p
        for p in plan_topics(
            Settings(profile="production", bootstrap_servers="kafka-0.example:9092")
        )
    }
    assert dev["mmbee.live.gifts"].replication == 1
    assert prod["mmbee.live.gifts"].replication == 3
    assert prod["mmbee.live.gifts"].configs["min.insync.replicas"] == "2"
    assert dev["mmbee.dlq"].partitions == 1
    assert dev["mmbee.live.watch"].configs["cleanup.policy"] == "delete"


def test_diff_reports_each_kind_of_drift() -> None:
    plans = plan_topics(Settings(partitions=4))
    observed = {
        p.name: ObservedTopic(p.name, p.partitions, p.replication, dict(p.configs)) for p in plans
    }
    assert diff_topics(plans, observed) == []
    gifts = "mmbee.live.gifts"
    observed[gifts] = ObservedTopic(gifts, 2, 1, {**observed[gifts].configs, "retention.ms": "1"})
    del observed["mmbee.live.watch"]
    drift = diff_topics(plans, observed)
    assert "mmbee.live.watch: missing" in drift
    assert f"{gifts}: 2 partitions, expected 4" in drift
    assert any(d.startswith(f"{gifts}: retention.ms=1") for d in drift)


def test_copartition_problems_names_the_group() -> None:
    groups = {"user_id": ["w", "r"], "author_id": ["g", "f"]}
    assert copartition_problems({"w": 4, "r": 4, "g": 8, "f": 8}, groups) == []
    problems = copartition_problems({"w": 4, "r": 3, "g": 8, "f": 8}, groups)
    assert len(problems) == 1 and "user_id" in problems[0] and "r=3" in problems[0]


@pytest.mark.broker
def test_create_check_and_refuse_on_broker(broker_settings: Settings) -> None:
    assert ensure_topics(broker_settings)
    assert ensure_topics(broker_settings) == []
    assert check_topics(broker_settings) == []
    verify_copartitioning(broker_settings)

    watch = broker_settings.topic("live.watch")
    admin = KafkaAdminClient(bootstrap_servers=broker_settings.bootstrap_list())
    try:
        admin.delete_topics([watch])
        # Kafka deletes a topic asynchronously: re-creating it at once can find the old one
        # still there (TopicAlreadyExists) and metadata can name its old partition count
        deadline = time.monotonic() + 30
        while watch in admin.list_topics():
            assert time.monotonic() < deadline, f"{watch} was not deleted within 30 s"
            time.sleep(0.1)
        while True:
            try:
                admin.create_topics([NewTopic(watch, broker_settings.partitions - 1, 1)])
                break
            except TopicAlreadyExistsError:
                assert time.monotonic() < deadline, f"{watch} could not be re-created in 30 s"
                time.sleep(0.1)
        want = broker_settings.partitions - 1
        while (got := observe_topics(broker_settings, [watch]).get(watch)) is None or (
            got.partitions != want
        ):
            assert time.monotonic() < deadline, f"{watch} metadata still says {got}"
            time.sleep(0.1)
    finally:
        admin.close()
    assert any(watch in d and "partitions" in d for d in check_topics(broker_settings))
    with pytest.raises(CoPartitioningError, match="keyed by user_id"):
        verify_copartitioning(broker_settings)
