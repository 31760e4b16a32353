"""Topic provisioning: create every catalogue topic with explicit partitions and configs,
report drift, and refuse to run when co-partitioned topics disagree.

Idempotent: existing topics are left alone and reported. Uses kafka-python's admin client,
which works against the embedded broker and Apache Kafka alike. The comparisons
(`diff_topics`, `copartition_problems`) are pure functions; the admin calls are thin wrappers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mmbee.schemas.topics import TOPICS, TopicSpec, co_partitioned_groups
from mmbee.settings import Settings

if TYPE_CHECKING:
    from kafka import KafkaAdminClient

__all__ = [
    "TopicPlan",
    "ObservedTopic",
    "CoPartitioningError",
    "plan_topics",
    "ensure_topics",
    "observe_topics",
    "diff_topics",
    "copartition_problems",
    "verify_copartitioning",
    "check_topics",
]

# Configs whose drift matters operationally; others (broker defaults) are not compared.
_COMPARED_CONFIGS = ("cleanup.policy", "retention.ms", "max.message.bytes", "min.insync.replicas")


class CoPartitioningError(RuntimeError):
    """Topics that are joined or looked up together do not have the same partition count."""


@dataclass(frozen=True)
class ObservedTopic:
    """A topic as it exists on the cluster."""

    name: str
    partitions: int
    replication: int
    configs: dict[str, str]


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


def _admin(settings: Settings) -> KafkaAdminClient:
    from kafka import KafkaAdminClient

    return KafkaAdminClient(
        bootstrap_servers=settings.bootstrap_list(), **settings.kafka_client_kwargs()
    )


def observe_topics(settings: Settings, names: list[str]) -> dict[str, ObservedTopic]:
    """Partitions, replication and the compared configs of the named topics that exist."""
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = _admin(settings)
    try:
        existing = sorted(set(names) & set(admin.list_topics()))
        if not existing:
            return {}
        described = admin.describe_topics(existing)
        resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in existing]
        configs_resp = admin.describe_configs(resources)
        configs = _parse_configs(configs_resp)
        observed = {}
        for t in described:
            parts = t["partitions"]
            name = t.get("topic", t.get("name"))
            observed[name] = ObservedTopic(
                name=name,
                partitions=len(parts),
                replication=min(
                    (len(p.get("replicas", p.get("replica_nodes", []))) for p in parts), default=0
                ),
                configs=configs.get(name, {}),
            )
        return observed
    finally:
        admin.close()


def _parse_configs(resp: object) -> dict[str, dict[str, str]]:
    """Topic -> {config: value} from kafka-python's describe_configs answer (dict form)."""
    out: dict[str, dict[str, str]] = {}
    items = resp if isinstance(resp, list) else [resp]
    for item in items:
        if isinstance(item, dict):
            for topic, cfg in item.get("topic", {}).items():
                out[topic] = {
                    k: str(v.get("value")) for k, v in cfg.items() if k in _COMPARED_CONFIGS
                }
    return out


def diff_topics(plans: list[TopicPlan], observed: dict[str, ObservedTopic]) -> list[str]:
    """Human-readable drift between the plan and the cluster; empty when they agree.

    Missing topics, partition counts, replication factors and the compared configs
    (cleanup.policy, retention.ms, max.message.bytes, min.insync.replicas) are checked.
    """
    problems = []
    for plan in plans:
        seen = observed.get(plan.name)
        if seen is None:
            problems.append(f"{plan.name}: missing")
            continue
        if seen.partitions != plan.partitions:
            problems.append(
                f"{plan.name}: {seen.partitions} partitions, expected {plan.partitions}"
            )
        if seen.replication != plan.replication:
            problems.append(
                f"{plan.name}: replication {seen.replication}, expected {plan.replication}"
            )
        for key in _COMPARED_CONFIGS:
            want = plan.configs.get(key)
            have = seen.configs.get(key)
            if want is not None and have is not None and want != have:
                problems.append(f"{plan.name}: {key}={have}, expected {want}")
    return problems


def copartition_problems(partitions: dict[str, int], groups: dict[str, list[str]]) -> list[str]:
    """Groups of co-partitioned topics (same key) whose partition counts differ.

    Args:
        partitions: full topic name -> partition count, as observed.
        groups: key field -> full topic names that must share a partition count.
    """
    problems = []
    for key, topics in sorted(groups.items()):
        counts = {t: partitions[t] for t in topics if t in partitions}
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{t}={n}" for t, n in sorted(counts.items()))
            problems.append(
                f"topics keyed by {key} must have the same partition count "
                f"(their records are looked up/joined by key): {listing}"
            )
    return problems


def verify_copartitioning(settings: Settings) -> None:
    """Refuse to run (raise CoPartitioningError) when co-partitioned topics disagree."""
    groups = {
        key: [settings.topic(n) for n in names] for key, names in co_partitioned_groups().items()
    }
    names = [t for topics in groups.values() for t in topics]
    observed = observe_topics(settings, names)
    problems = copartition_problems({n: o.partitions for n, o in observed.items()}, groups)
    if problems:
        raise CoPartitioningError(
            "refusing to start: "
            + "; ".join(problems)
            + ". Fix with `mmbee topics check` and recreate or repartition the topics."
        )


def check_topics(settings: Settings) -> list[str]:
    """Drift between the catalogue plan under `settings` and the cluster (`mmbee topics check`)."""
    plans = plan_topics(settings)
    return diff_topics(plans, observe_topics(settings, [p.name for p in plans]))
