"""A redelivered gift, through the broker: counted by every agent that reads gifts, never
dead-lettered, and it changes no state (issue 21: "duplicates are metrics, not dead letters")."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from streamkit import WorkerProcess, read_topic

from mmbee.schemas import GiftEvent
from mmbee.schemas.serving import AuthorTimeline
from mmbee.settings import Settings
from mmbee.streams.topics import ensure_topics

pytestmark = pytest.mark.broker

GIFT_READERS = ("graph", "joiner", "authors")
"""The agents that apply gifts (and remember their ids): the graph, the user-side joiner (the
gift re-keyed onto `user.activity`) and the streamer timelines."""
GIFT = GiftEvent(
    event_id="g-dup-1", ts_ms=1_700_000_000_000, user_id="u1", author_id="a1", live_id="l1",
    gift_value=2.0,
)  # fmt: skip


def _send(settings: Settings, raw: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_list(), linger_ms=0)
    producer.send(settings.topic("live.gifts"), key=GIFT.author_id.encode(), value=raw)
    producer.flush()
    producer.close()


def _end_offsets(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Total end offset (records ever written) of each topic."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_list())
    try:
        out = {}
        for t in topics:
            parts = [TopicPartition(t, p) for p in sorted(consumer.partitions_for_topic(t) or [])]
            out[t] = sum(consumer.end_offsets(parts).values()) if parts else 0
        return out
    finally:
        consumer.close()


def _changelogs(settings: Settings) -> list[str]:
    """The worker's table changelogs: every state write lands there."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_list())
    try:
        names = consumer.topics()
    finally:
        consumer.close()
    return sorted(t for t in names if t.startswith(settings.app_id) and "changelog" in t)


def _timelines(settings: Settings) -> list[AuthorTimeline]:
    """The streamer timelines published on `author.state` up to its end now (its progress
    marks, sent every few ms, left out: `read_topic` would wait for the topic to go quiet)."""
    topic = settings.topic("author.state")
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_list())
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends, values = consumer.end_offsets(parts), []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline, "author.state was not read to its end"
            for tp, records in consumer.poll(timeout_ms=200).items():
                values += [r.value for r in records if r.offset < ends[tp]]
    finally:
        consumer.close()
    got = map(AuthorTimeline.model_validate_json, values)
    return [m for m in got if m.kind == "timeline"]


def _handled(agents: dict[str, Any], name: str) -> int:
    """Gifts an agent finished with: applied, counted as duplicates, or dead-lettered."""
    a = agents.get(name, {"counters": {}, "dlq": {}})
    c = a["counters"]
    return c.get("applied", 0) + c.get("duplicates", 0) + sum(a["dlq"].values())


def _wait(worker: WorkerProcess, done: Callable[[dict[str, Any]], bool], what: str) -> dict:
    deadline = time.monotonic() + 90
    agents: dict[str, Any] = {}
    while time.monotonic() < deadline:
        assert worker.proc.poll() is None, worker.tail()
        try:
            agents = worker.get("/mmbee/metrics/")["agents"]
        except OSError:
            agents = {}
        if agents and done(agents):
            return agents
        time.sleep(0.2)
    raise AssertionError(f"no {what} in 90 s: {agents}\n{worker.tail()}")


def _joiner_state(worker: WorkerProcess) -> dict[str, Any]:
    """The joiner's per-partition state without its `duplicate` count (which must move)."""
    parts = worker.get("/mmbee/joiner/")["partitions"]
    return {
        p: {**v, "counts": {k: n for k, n in v["counts"].items() if k != "duplicate"}}
        for p, v in parts.items()
    }


def _metrics_text(worker: WorkerProcess) -> str:
    url = f"http://127.0.0.1:{worker.settings.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_a_redelivered_gift_is_counted_not_dead_lettered(
    broker_settings: Settings, workers: Callable[..., WorkerProcess]
) -> None:
    settings = broker_settings.model_copy(
        update=dict(
            components=("graph", "joiner"),
            store="rocksdb://",
            log_level="WARNING",
            commit_interval_s=0.5,
            stream_batch_wait_ms=10,
            joiner_settle_s=0.0,
            joiner_align_wait_ms=500,  # one gift and no other traffic: the valve releases it
            graph_refresh_interval_s=0.2,
            graph_idle_rebuild_s=0.5,
        )
    )
    ensure_topics(settings)
    worker = workers(settings)
    raw = GIFT.model_dump_json().encode()

    _send(settings, raw)
    agents = _wait(worker, lambda a: all(_handled(a, n) >= 1 for n in GIFT_READERS), "applied gift")
    assert all(agents[n]["counters"].get("applied") == 1 for n in GIFT_READERS), agents
    time.sleep(1.5)  # the table writes of the gift reach their changelogs
    topics = _changelogs(settings)
    before_offsets = _end_offsets(settings, topics)
    assert len(topics) >= 3 and all(before_offsets.values()), before_offsets  # the gift's rows
    timelines = _timelines(settings)
    assert [(m.author_id, m.gift_ts) for m in timelines] == [("a1", [GIFT.ts_ms])]
    graph_before = worker.get("/mmbee/graph/")
    joiner_before = _joiner_state(worker)
    dlq_before = len(read_topic(settings, "dlq"))

    _send(settings, raw)  # the exact same message again: at-least-once redelivery
    agents = _wait(
        worker, lambda a: all(_handled(a, n) >= 2 for n in GIFT_READERS), "handled duplicate"
    )
    time.sleep(1.5)  # anything the duplicate wrote (rows, timelines, dead letters) is out
    for name in GIFT_READERS:
        a = agents[name]
        assert a["counters"].get("duplicates") == 1, (name, a)
        assert a["counters"].get("applied") == 1, (name, a)
        assert a["dlq"] == {}, (name, a)
    assert worker.get("/mmbee/graph/") == graph_before
    assert _joiner_state(worker) == joiner_before
    assert _end_offsets(settings, topics) == before_offsets  # no state write at all
    assert _timelines(settings) == timelines  # nor a republished timeline
    text = _metrics_text(worker)
    for name in GIFT_READERS:
        assert f'mmbee_duplicates_total{{agent="{name}"}} 1' in text, text
    worker.stop()
    assert len(read_topic(settings, "dlq")) == dlq_before == 0
