"""Topic provisioning: create every catalogue topic with explicit partitions and configs.

Idempotent: existing topics are left alone and reported. Uses kafka-python's admin client,
which works against the embedded broker and Apache Kafka alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mmbee.schemas.topics import TOPICS, TopicSpec
from mmbee.settings import Settings

__all__ = ["TopicPlan", "plan_topics", "ensure_topics"]


@dataclass(frozen=True)
class TopicPlan:
    """A topic as it should exist on the cluster."""

    name: str
    partitions: int
    replication: int
    configs: dict[str, str]


def plan_topics(settings: Settings, specs: Iterable[TopicSpec] | None = None) -> list[TopicPlan]:
    """What every topic should look like under `settings` (full names, partitions, configs)."""
    plans = []
    for spec in specs if specs is not None else TOPICS.values():
        configs = {
            "cleanup.policy": "compact" if spec.compacted else "delete",
            "max.message.bytes": str(spec.max_message_bytes),
            "min.insync.replicas": str(settings.min_insync_replicas),
        }
        if not spec.compacted and spec.retention_ms is not None:
            configs["retention.ms"] = str(spec.retention_ms)
        plans.append(
            TopicPlan(
                name=settings.topic(spec.name),
                partitions=1 if spec.key == "none" else settings.partitions,
                replication=int(settings.replication_factor or 1),
                configs=configs,
            )
        )
    return plans


def ensure_topics(settings: Settings, plans: list[TopicPlan] | None = None) -> list[str]:
    """Create the planned topics that do not exist yet; return the names created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    plans = plans if plans is not None else plan_topics(settings)
    admin = KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_list(), **settings.kafka_client_kwargs()
    )
    try:
        existing = set(admin.list_topics())
        missing = [p for p in plans if p.name not in existing]
        created: list[str] = []
        for plan in missing:
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            name=plan.name,
                            num_partitions=plan.partitions,
                            replication_factor=plan.replication,
                            topic_configs=plan.configs,
                        )
                    ]
                )
                created.append(plan.name)
            except TopicAlreadyExistsError:
                continue
        return created
    finally:
        admin.close()
