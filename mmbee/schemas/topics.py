"""The topic catalogue: each topic's value model, its key field and its cleanup policy.

Names here are suffixes; the streams layer prepends the configured prefix (default "mmbee.").
Partition counts are settings, not contract: topics that are joined or looked up together share
a key and a partition count (`co_partitioned_groups`); `partition_for` is where Kafka's default
partitioner puts a keyed record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from mmbee.schemas.events import (
    AsrSegment,
    AudioChunk,
    CommentEvent,
    DeadLetter,
    FrameEvent,
    GiftEvent,
    ScoreRequest,
    ScoreResponse,
    SegmentClosed,
    WatchEvent,
)
from mmbee.schemas.graph import AuthorExpansions, UserExpansions
from mmbee.schemas.scoring import TrainingExample
from mmbee.schemas.serving import AuthorActivity, AuthorTimeline, ModelVersion, UserActivity

__all__ = [
    "TopicSpec",
    "TOPICS",
    "topic_spec",
    "co_partitioned_groups",
    "partition_for",
    "export_json_schemas",
]

KeyField = Literal["author_id", "user_id", "model_name", "none"]


@dataclass(frozen=True)
class TopicSpec:
    """What travels on one topic.

    Attributes:
        name: topic name without prefix, e.g. "live.frames".
        model: the pydantic model of each value.
        key: which field of the value is the message key ("none": unkeyed).
        compacted: cleanup.policy=compact (latest value per key) instead of delete.
        retention_ms: retention for delete topics (None: broker default).
        max_message_bytes: largest value the topic must accept.
    """

    name: str
    model: type[BaseModel]
    key: KeyField
    compacted: bool = False
    retention_ms: int | None = 7 * 24 * 3600 * 1000
    max_message_bytes: int = 1024 * 1024


TOPICS: dict[str, TopicSpec] = {
    t.name: t
    for t in (
        TopicSpec("live.frames", FrameEvent, "author_id"),
        TopicSpec("live.audio", AudioChunk, "author_id", max_message_bytes=2 * 1024 * 1024),
        TopicSpec("live.asr", AsrSegment, "author_id"),
        TopicSpec("live.comments", CommentEvent, "author_id"),
        TopicSpec("live.gifts", GiftEvent, "author_id"),
        TopicSpec("live.watch", WatchEvent, "user_id"),
        TopicSpec("content.segments", SegmentClosed, "author_id"),
        TopicSpec("score.requests", ScoreRequest, "user_id", retention_ms=3600 * 1000),
        TopicSpec("score.responses", ScoreResponse, "user_id", retention_ms=3600 * 1000),
        TopicSpec("train.examples", TrainingExample, "user_id"),
        TopicSpec("graph.user_expansions", UserExpansions, "user_id", compacted=True),
        TopicSpec("graph.author_expansions", AuthorExpansions, "author_id", compacted=True),
        TopicSpec("user.activity", UserActivity, "user_id"),
        TopicSpec("author.activity", AuthorActivity, "author_id"),
        TopicSpec(
            "author.state", AuthorTimeline, "author_id", compacted=True, max_message_bytes=4 << 20
        ),
        TopicSpec("model.versions", ModelVersion, "model_name", compacted=True),
        TopicSpec(
            "dlq",
            DeadLetter,
            "none",
            retention_ms=30 * 24 * 3600 * 1000,
            max_message_bytes=2 * 1024 * 1024,
        ),
    )
}


def topic_spec(name: str) -> TopicSpec:
    """The spec of topic `name` (without prefix); KeyError lists the known names."""
    try:
        return TOPICS[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; known: {sorted(TOPICS)}") from None


def co_partitioned_groups() -> dict[str, list[str]]:
    """Topics grouped by key: every topic in a group must have the same partition count."""
    groups: dict[str, list[str]] = {}
    for spec in TOPICS.values():
        if spec.key != "none":
            groups.setdefault(spec.key, []).append(spec.name)
    return groups


def _murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`, seed 0x9747B28C), as
    an unsigned 32-bit int (kafka-python's and aiokafka's `murmur2` return the same)."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    n = len(data)
    h = (0x9747B28C ^ n) & mask
    tail = n & ~3
    for i in range(0, tail, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * m) & mask
        k = ((k ^ (k >> 24)) * m) & mask
        h = ((h * m) & mask) ^ k
    rest = n & 3
    if rest:
        h = ((h ^ int.from_bytes(data[tail:], "little")) * m) & mask
    h = ((h ^ (h >> 13)) * m) & mask
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (the Java client's, kafka-python's and
    aiokafka's) gives a record with this non-null key: positive murmur2 modulo `partitions`.

    Example:
        >>> partition_for(b"u1", 4) == partition_for(b"u1", 4) < 4
        True
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return (_murmur2(key) & 0x7FFFFFFF) % partitions


def export_json_schemas(directory: Path) -> list[Path]:
    """Write one JSON Schema file per topic (`<topic>.schema.json`) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in TOPICS.values():
        schema = spec.model.model_json_schema()
        schema["$id"] = f"mmbee:{spec.name}"
        schema["x-kafka-key"] = spec.key
        path = directory / f"{spec.name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
