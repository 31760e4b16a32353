"""Issue 21, chaos (b): one of three Apache Kafka brokers is SIGKILLed mid-replay, with the
production profile (replication 3, min.insync.replicas 2, acks=all). No event the producer got
an acknowledgement for is lost, and the worker carries on to the state of an uninterrupted run.

One simulated log, two deployments on the same 3-node KRaft cluster (`KafkaCluster`):

* reference: its content (frames, comments, ASR) and gifts are replayed before one worker
  starts; the worker reads them with every broker up. Its segment buffers and gift graph are the
  uninterrupted state (the graph also equals the offline batch build of the log's gifts).
* chaos: the content is replayed as a backlog (acks=all, so acknowledged by 2 or 3 replicas),
  one worker starts reading it, and the gifts are then produced live, paced over a few seconds,
  one record at a time with a per-record acknowledgement callback. Once a seeded fraction of
  the gifts is acknowledged, the broker that leads the most `live.gifts` partitions is SIGKILLed
  (no controlled shutdown: its leaderships move only after the controller notices). Sends that
  fail are sent again (the event ids are stable, so a second copy is absorbed as a duplicate).

Checked after the kill: (1) every acknowledged gift, and every content event, is on its topic,
read back from the two survivors; (2) the worker never exited and reaches exactly the
reference's segment buffers (closed and open segments, watermark, applied offsets) and gift
graph digest, with every gift applied once (graph gift count = distinct gifts); (3) the dead
letters are the reference's (none expected).

Not covered: a broker kill while the worker is also the *only* replica holder (replication 3
keeps two); losing two brokers (min.insync.replicas 2 then refuses acks=all writes, by design);
an unclean leader election (off in Kafka 4.x by default); the worker's own changelog writes
are only checked through the final state, not record by record.

The seed, the kill point and the killed node are printed (`-s`), so a failure can be replayed:
MMBEE_CHAOS_SEED=<seed> pytest -m chaos tests/deploy/test_broker_failover.py.
"""

from __future__ import annotations

import json
import os
import random
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from streamkit import AckedProducer, Message, WorkerProcess, buffers

from mmbee.graph import build
from mmbee.schemas import DeadLetter, GiftEvent
from mmbee.settings import Settings
from mmbee.simulator.config import preset
from mmbee.simulator.logs import write_log
from mmbee.simulator.reader import iter_encoded, read_log
from mmbee.simulator.replay import publish
from mmbee.simulator.world import generate_world
from mmbee.streams.broker import KafkaCluster, free_port
from mmbee.streams.components.graph import state_digest
from mmbee.streams.deployment import provision

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.chaos]

CONTENT = ("live.frames", "live.comments", "live.asr")


def hashed_text_embeddings(texts: list[str]) -> np.ndarray:
    """Deterministic 384-d vectors per text (the featurizer is not under test)."""
    out = np.empty((len(texts), 384), np.float32)
    for i, t in enumerate(texts):
        out[i] = np.random.default_rng(zlib.crc32(t.encode())).normal(0, 0.1, 384)
    return out


def make_log(root: Path, seed: int) -> list[Message]:
    """A one-day world of 12 streamers with a few hundred gifts, encoded in event-time order."""
    cfg = preset("tiny", n_streamers=12)
    cfg = replace(cfg, calibration=replace(cfg.calibration, base_gift_rate=0.02, gifter_share=0.6))
    write_log(
        generate_world(cfg, seed), root, preset_name="tiny", text_embedder=hashed_text_embeddings
    )
    return list(iter_encoded(read_log(root), attach_text_embeddings=True))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KafkaCluster]:
    c = KafkaCluster(tmp_path / "cluster")
    c.start()
    try:
        yield c
    finally:  # no controlled shutdown: its data is thrown away, and with a node already dead
        for node in c.nodes:  # the survivors' shutdown waits on it
            node.kill()


def production(cluster: KafkaCluster, tmp: Path, name: str) -> Settings:
    return Settings(
        profile="production",
        bootstrap_servers=cluster.bootstrap,
        broker_kind="kafka",
        topic_prefix=f"{name}.",
        app_id=f"failover-{name}",
        data_dir=tmp / name,
        web_port=free_port(),
        partitions=4,
        components=("segments", "graph"),
        store="rocksdb://",
        rocksdb_memory_budget_mib=64,
        log_level="WARNING",
        commit_interval_s=0.5,
        stream_batch_wait_ms=10,
        graph_refresh_interval_s=0.2,
        graph_idle_rebuild_s=0.5,
        metrics_lag_interval_s=1.0,
        segment_align_wait_ms=60_000,  # as tests/streams/test_scaleout.py: no stall release
    )


def status(w: WorkerProcess) -> dict[str, Any]:
    try:
        return w.get("/mmbee/status/")
    except OSError:
        return {}


def graph(w: WorkerProcess) -> dict[str, Any]:
    try:
        return w.get("/mmbee/graph/")
    except OSError:
        return {}


def wait(cond: Any, what: str, w: WorkerProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert w.proc.poll() is None, f"worker exited while waiting for {what}:\n{w.tail()}"
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout_s} s) waiting for {what}\n{w.tail(3000)}")
        time.sleep(0.2)


def read_ids(settings: Settings, name: str) -> Counter[str]:
    """event_id -> copies on topic `name`, read from the beginning (the live brokers only)."""
    topic = settings.topic(name)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_list(), consumer_timeout_ms=3000,
        request_timeout_ms=10_000,
    )  # fmt: skip
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        ids: Counter[str] = Counter()
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for records in consumer.poll(timeout_ms=1000).values():
                ids.update(json.loads(r.value)["event_id"] for r in records)
        return ids
    finally:
        consumer.close()


def dead_letters(settings: Settings) -> list[tuple[str, str, str | None]]:
    topic = settings.topic("dlq")
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_list(), consumer_timeout_ms=2000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        letters = [DeadLetter.model_validate_json(m.value) for m in consumer]
    finally:
        consumer.close()
    return sorted((d.agent, d.reason, d.event_id) for d in letters)


def leader_counts(settings: Settings, name: str) -> Counter[int]:
    """node id -> partitions of topic `name` it leads."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_list())
    try:
        (described,) = admin.describe_topics([settings.topic(name)])
    finally:
        admin.close()
    return Counter(p["leader_id"] for p in described["partitions"])


def test_broker_killed_mid_replay_loses_no_acknowledged_event(
    cluster: KafkaCluster, tmp_path: Path
) -> None:
    seed = int(os.environ.get("MMBEE_CHAOS_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    kill_at = rng.uniform(0.25, 0.6)  # fraction of the gifts acknowledged before the kill
    messages = make_log(tmp_path / "log", seed=3)
    content = [m for m in messages if m[0] != "live.gifts"]
    gift_msgs = [m for m in messages if m[0] == "live.gifts"]
    gifts = [GiftEvent.model_validate_json(m[2]) for m in gift_msgs]
    content_ids = {
        t: {json.loads(m[2])["event_id"] for m in messages if m[0] == t} for t in CONTENT
    }  # fmt: skip
    n_content = sum(len(ids) for ids in content_ids.values())
    authors = sorted({json.loads(m[2])["author_id"] for m in messages if m[0] in CONTENT})
    t_start = time.monotonic()

    # --- reference: every broker up, one worker reads the whole log -------------------------
    ref = production(cluster, tmp_path, "ref")
    assert (ref.replication_factor, ref.min_insync_replicas, ref.producer_acks) == (3, 2, "all")
    provision(ref)
    publish(messages, ref)
    single = WorkerProcess(ref, tmp_path / "ref.log")
    try:

        def ref_done() -> bool:
            s, g = status(single), graph(single)
            return (
                s.get("agents", {}).get("segments", {}).get("processed", 0) >= n_content
                and s.get("components", {}).get("segment_buffer_held_events") == 0
                and g.get("gifts") == len(gifts)
                and g.get("rebuilt_at_gifts") == len(gifts)
            )

        wait(ref_done, "the reference worker to read the log", single, 120)
        expected = buffers(single, authors)
        expected_digest = graph(single)["digest"]
    finally:
        single.stop()
    assert expected_digest == state_digest(build(gifts, ref.graph_configs()[0]))
    ref_letters = dead_letters(ref)
    t_ref = time.monotonic() - t_start

    # --- chaos: content backlog, gifts live, one broker SIGKILLed mid-replay ---------------
    run = production(cluster, tmp_path, "chaos")
    provision(run)
    publish(content, run)  # raises unless every batch was acknowledged by the in-sync replicas
    worker = WorkerProcess(run, tmp_path / "chaos.log")
    producer = AckedProducer(run)
    try:
        wait(lambda: bool(status(worker).get("worker", {}).get("ready")), "ready", worker, 90)
        leaders = leader_counts(run, "live.gifts")
        victim_id = max(sorted(leaders), key=lambda n: (leaders[n], rng.random()))
        victim = next(n for n in cluster.nodes if n.node_id == victim_id)
        pace_s = 6.0 / len(gift_msgs)  # the gifts spread over ~6 s of wall time
        killed_after: int | None = None
        for i, m in enumerate(gift_msgs):
            producer.send(m)
            if killed_after is None and len(producer.acked) >= kill_at * len(gift_msgs):
                victim.kill()
                killed_after = len(producer.acked)
                print(
                    f"seed {seed}: SIGKILL node {victim_id} (leader of {leaders[victim_id]} of "
                    f"{sum(leaders.values())} live.gifts partitions) after {killed_after} of "
                    f"{len(gift_msgs)} gifts acknowledged, {i + 1} sent"
                )
            time.sleep(pace_s)
        producer.resend_failed()
        if killed_after is None:  # acks lagged the sends: kill now, while the worker reads
            victim.kill()
            killed_after = len(producer.acked)
            print(f"seed {seed}: SIGKILL node {victim_id} after every gift was sent")
        assert not victim.running
        acked = set(producer.acked)
        assert acked == {g.event_id for g in gifts}, "some gifts were never acknowledged"

        # (1) every acknowledged record is on its topic, read back from the two survivors
        on_topic = read_ids(run, "live.gifts")
        assert acked <= set(on_topic), sorted(acked - set(on_topic))[:5]
        for t in CONTENT:
            assert content_ids[t] <= set(read_ids(run, t)), t

        # (2) the worker carried on to the uninterrupted state, every gift applied once
        def same_state() -> bool:
            g = graph(worker)
            return (
                g.get("gifts") == len(gifts)
                and g.get("rebuilt_at_gifts") == len(gifts)
                and status(worker).get("components", {}).get("segment_buffer_held_events") == 0
                and buffers(worker, authors) == expected
            )

        try:
            wait(same_state, "the worker to reach the reference state", worker, 120)
        except AssertionError:
            got = buffers(worker, authors)
            diff = [a for a in authors if got.get(a) != expected[a]]
            raise AssertionError(
                f"seed {seed}: {len(diff)} of {len(authors)} buffers differ ({diff[:3]}); "
                f"graph {graph(worker)} of {len(gifts)} gifts; dead letters "
                f"{dead_letters(run)[:5]}\n{worker.tail(3000)}"
            ) from None
        assert graph(worker)["digest"] == expected_digest
        assert worker.proc.poll() is None
        # (3) nothing dead-lettered that the reference did not dead-letter
        assert dead_letters(run) == ref_letters
        duplicates = worker.get("/mmbee/metrics/")["agents"].get("graph", {}).get("counters", {})
    finally:
        producer.close()
        worker.stop()
    print(
        f"seed {seed}: {len(acked)} gifts acknowledged, {producer.failures} sends failed and "
        f"were resent, {sum(on_topic.values()) - len(on_topic)} extra copies on the topic, "
        f"{duplicates.get('duplicates', 0)} counted as duplicates by the graph; state equal to "
        f"the reference; reference {t_ref:.0f} s, total {time.monotonic() - t_start:.0f} s"
    )
