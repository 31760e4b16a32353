"""Model rollout and rollback: announce a checkpoint on `model.versions`, list what was announced.

Every serving worker follows the compacted `model.versions` topic (key `model_name`) and swaps
to the newest announcement of its `serving_model_name` (by `created_at_ms`), checking the file's
sha256 first (docs/serving.md). A rollout is one announcement; a rollback is an announcement of
the previous checkpoint (under its old version, or a new one): the newest wins again.

`announce` loads the checkpoint the way serving will (`load_model`) before it publishes, so a
file that no worker could serve is refused here, with the reason, instead of being announced.

Example:
    $ mmbee models announce runs/train/model.pt --version v42   # doctest: +SKIP
    announced gtr v42 (sha256 3f1c..., runs/train/model.pt)
    $ mmbee models list                                          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from pathlib import Path

from mmbee.schemas.serving import ModelVersion
from mmbee.scorer.predict import load_model
from mmbee.settings import Settings

__all__ = ["model_version", "announce", "history"]


def model_version(
    checkpoint: Path,
    model_name: str,
    version: str | None,
    now_ms: int,
    *,
    source: str = "manual",
    parent_version: str | None = None,
    metrics: dict[str, float] | None = None,
) -> ModelVersion:
    """The announcement of `checkpoint` (its absolute path and sha256; version defaults to
    `sha-<first 12 hex digits>`; non-finite metrics are left out), after `load_model` showed
    it can be served.

    Raises:
        ModelLoadError: the file is missing or not a servable GTR checkpoint.
    """
    loaded = load_model(checkpoint)
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    return ModelVersion.model_validate(
        {
            "model_name": model_name,
            "version": version or f"sha-{sha[:12]}",
            "path": str(checkpoint.resolve()),
            "sha256": sha,
            "created_at_ms": now_ms,
            "source": source,
            "parent_version": parent_version,
            "examples": int(loaded.config.get("data", {}).get("train_examples", 0) or 0),
            "metrics": {k: v for k, v in (metrics or {}).items() if math.isfinite(v)},
        }
    )


def announce(
    settings: Settings,
    checkpoint: Path,
    version: str | None = None,
    *,
    source: str = "manual",
    parent_version: str | None = None,
    metrics: dict[str, float] | None = None,
    clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
) -> ModelVersion:
    """Publish `checkpoint` on `model.versions` under `settings.serving_model_name` and wait
    for the broker's acknowledgement; returns the announcement."""
    from kafka import KafkaProducer

    mv = model_version(checkpoint, settings.serving_model_name, version, clock_ms(),
                       source=source, parent_version=parent_version, metrics=metrics)  # fmt: skip
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap_list(),
        acks="all" if settings.profile == "production" else 1,
        linger_ms=0,
        **settings.kafka_client_kwargs(),
    )
    try:
        producer.send(
            settings.topic("model.versions"),
            key=mv.model_name.encode(),
            value=mv.model_dump_json().encode(),
        ).get(timeout=30)
    finally:
        producer.close()
    return mv


def history(settings: Settings, model_name: str | None = None) -> list[ModelVersion]:
    """Every announcement still on `model.versions` (compaction keeps at least the newest per
    model), oldest first, for `model_name` (None: every model); records that do not validate
    are skipped."""
    from kafka import KafkaConsumer, TopicPartition

    topic = settings.topic("model.versions")
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_list(),
        enable_auto_commit=False,
        **settings.kafka_client_kwargs(),
    )
    out: list[ModelVersion] = []
    try:
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        if not parts:
            return []
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: not read to its end within 30 s")
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    try:
                        mv = ModelVersion.model_validate_json(rec.value)
                    except ValueError:
                        continue
                    if model_name is None or mv.model_name == model_name:
                        out.append(mv)
    finally:
        consumer.close()
    return sorted(out, key=lambda m: m.created_at_ms)
