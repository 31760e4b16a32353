"""Running mmbee on a cluster: every topic a deployment needs, and the start-up checks.

The catalogue (`mmbee.schemas.topics`) names the topics clients write and read. A worker also
needs Faust's *internal* topics: one compacted changelog per table (`<app_id>-<table>-changelog`)
and the internal topics agents declare (`graph.gifts`). They are found by building the app for
the settings (no broker needed) and reading its tables and agents, so a table added by a new
component is provisioned without touching this module.

* `plan_all_topics(settings)`: catalogue + internal topics, with partitions, replication and
  configs (changelogs: `cleanup.policy=compact`, `min.insync.replicas`, 4 MiB messages).
* `provision(settings)`: create what is missing (`mmbee topics create`; idempotent).
* `check_deployment(settings)`: drift of every planned topic (`mmbee topics check`).
* `verify_worker_topics(ctx)`: at worker start, after the catalogue co-partitioning check:
  refuse when a changelog or internal topic has a partition count other than its table's or
  agent's (a table is co-partitioned with the topics its agent reads), and, in production,
  when any planned topic is missing (run `mmbee topics create --profile production`).
Example:
    >>> from mmbee.settings import Settings
    >>> plans = plan_all_topics(Settings(store="memory://"))  # doctest: +SKIP
    >>> [p.name for p in plans if p.name.endswith("-changelog")]  # doctest: +SKIP
    ['mmbee-segment_buffers-changelog', 'mmbee-segments-changelog', 'mmbee-graph_users-changelog']
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from mmbee.settings import Settings
from mmbee.streams.app import build_app
from mmbee.streams.runtime.component import Component
from mmbee.streams.runtime.context import Register, StreamContext
from mmbee.streams.topics import (
    CoPartitioningError,
    TopicPlan,
    diff_topics,
    ensure_topics,
    observe_topics,
    plan_topics,
)

__all__ = [
    "CHANGELOG_MAX_MESSAGE_BYTES",
    "INTERNAL_RETENTION_MS",
    "MissingTopicsError",
    "internal_topic_plans",
    "plan_all_topics",
    "provision",
    "check_deployment",
    "internal_partition_problems",
    "verify_worker_topics",
]

log = logging.getLogger("mmbee.streams.deployment")

_MIB = 1024 * 1024
CHANGELOG_MAX_MESSAGE_BYTES = 4 * _MIB
"""Largest changelog record (equal to the worker producer's max request size)."""
INTERNAL_RETENTION_MS = 7 * 24 * 3600 * 1000
"""Retention of internal non-compacted topics (the catalogue's default for delete topics)."""


class MissingTopicsError(RuntimeError):
    """A production worker found planned topics missing on the cluster."""


def _internal_topics(
    settings: Settings, components: Sequence[str | Component | Register] | None
) -> Any:
    """(changelog topics of tables, internal agent topics) of the app these settings build."""
    ctx = build_app(settings.model_copy(update={"store": "memory://"}), components)
    try:
        changelogs = [t.changelog_topic for t in ctx.app.tables.values()]
        internal = [
            a.channel
            for a in ctx.app.agents.values()
            if getattr(a.channel, "internal", False) and hasattr(a.channel, "topics")
        ]
        return changelogs, internal
    finally:
        ctx.shutdown()


def internal_topic_plans(
    settings: Settings, components: Sequence[str | Component | Register] | None = None
) -> list[TopicPlan]:
    """Plans of the changelog topics (compacted) and internal agent topics (delete policy) of
    the app built for `settings` with `components` (None: `settings.components`, else all)."""
    changelogs, internal = _internal_topics(settings, components)
    replication = int(settings.replication_factor or 1)
    min_isr = str(settings.min_insync_replicas)
    plans: dict[str, TopicPlan] = {}
    for topic in changelogs:
        name = topic.get_topic_name()
        plans[name] = TopicPlan(
            name=name,
            partitions=int(topic.partitions or settings.partitions),
            replication=replication,
            configs={
                "cleanup.policy": "compact",
                "max.message.bytes": str(CHANGELOG_MAX_MESSAGE_BYTES),
                "min.insync.replicas": min_isr,
            },
        )
    for topic in internal:
        for name in topic.topics:
            plans.setdefault(
                name,
                TopicPlan(
                    name=name,
                    partitions=int(topic.partitions or settings.partitions),
                    replication=replication,
                    configs={
                        "cleanup.policy": "delete",
                        "retention.ms": str(INTERNAL_RETENTION_MS),
                        "max.message.bytes": str(CHANGELOG_MAX_MESSAGE_BYTES),
                        "min.insync.replicas": min_isr,
                    },
                ),
            )
    return list(plans.values())


def plan_all_topics(
    settings: Settings, components: Sequence[str | Component | Register] | None = None
) -> list[TopicPlan]:
    """Every topic a deployment of `settings` needs: the catalogue, then the internal ones."""
    return plan_topics(settings) + internal_topic_plans(settings, components)


def provision(
    settings: Settings, components: Sequence[str | Component | Register] | None = None
) -> list[str]:
    """Create every planned topic that is missing (`mmbee topics create`); returns the names
    created. Idempotent: existing topics are left as they are (`check_deployment` reports
    their drift)."""
    return ensure_topics(settings, plan_all_topics(settings, components))


def check_deployment(
    settings: Settings, components: Sequence[str | Component | Register] | None = None
) -> list[str]:
    """Drift between the plan and the cluster for every topic (`mmbee topics check`)."""
    plans = plan_all_topics(settings, components)
    observed = observe_topics(settings, [p.name for p in plans])
    problems = diff_topics(plans, observed)
    for plan in plans:
        seen = observed.get(plan.name)
        # a broker that reports only overridden configs (the embedded one) omits a default
        # cleanup.policy: a topic that must be compacted and does not say so is not
        if (
            seen is not None
            and plan.configs.get("cleanup.policy") == "compact"
            and "cleanup.policy" not in seen.configs
        ):
            problems.append(
                f"{plan.name}: cleanup.policy not set (broker default), expected compact"
            )
    return problems


def internal_partition_problems(plans: Sequence[TopicPlan], observed: dict[str, int]) -> list[str]:
    """Internal topics whose existing partition count is not the planned one.

    Args:
        plans: internal topic plans (`internal_topic_plans`).
        observed: topic name -> partition count, for the topics that exist.
    """
    problems = []
    for plan in plans:
        have = observed.get(plan.name)
        if have is not None and have != plan.partitions:
            what = "table changelog" if plan.name.endswith("-changelog") else "internal topic"
            problems.append(
                f"{what} {plan.name} has {have} partitions but its table/agent uses "
                f"{plan.partitions} (a table is co-partitioned with the topics its agent reads)"
            )
    return problems


def verify_worker_topics(ctx: StreamContext) -> None:
    """Start-up check of a worker's internal topics (see the module docstring); raises
    CoPartitioningError or MissingTopicsError with what to do."""
    settings = ctx.settings
    changelogs = [t.changelog_topic for t in ctx.app.tables.values()]
    internal = [
        a.channel
        for a in ctx.app.agents.values()
        if getattr(a.channel, "internal", False) and hasattr(a.channel, "topics")
    ]
    plans = [
        TopicPlan(t.get_topic_name(), int(t.partitions or settings.partitions), 1, {})
        for t in changelogs
    ] + [
        TopicPlan(name, int(t.partitions or settings.partitions), 1, {})
        for t in internal
        for name in t.topics
    ]
    names = [p.name for p in plans]
    if settings.profile == "production":
        names += [p.name for p in plan_topics(settings)]
    observed = observe_topics(settings, names)
    problems = internal_partition_problems(plans, {n: o.partitions for n, o in observed.items()})
    if problems:
        raise CoPartitioningError(
            "refusing to start: "
            + "; ".join(problems)
            + ". Recreate the topic with the right count (its table is rebuilt from the source "
            "topics only by a replay) or run with the matching MMBEE_PARTITIONS."
        )
    if settings.profile == "production":
        missing = sorted(set(names) - set(observed))
        if missing:
            raise MissingTopicsError(
                "refusing to start: missing topics "
                + ", ".join(missing)
                + ". Provision them first: `mmbee topics create --profile production`."
            )
