"""Chaos benchmark: seeded worker and broker kills against an uninterrupted run of the same log.

Run:   OMP_NUM_THREADS=1 .venv/bin/python bench/chaos.py [--rounds 6] [--seed 1] [--quick]

Everything runs on one 3-node Apache Kafka KRaft cluster on loopback (`KafkaCluster`, `make
kafka`) with the production profile: replication 3, min.insync.replicas 2, acks=all. One
simulated log (preset `tiny` with `--streamers` streamers, one day: frames, comments, ASR text
with cached 384-d embeddings, gifts) is replayed into fresh topics (own prefix and consumer
group) for the reference and for each round. Workers are `mmbee worker` processes with the
components segments + graph, 4 partitions, RocksDB store.

* Reference: the log is replayed, then one worker reads it with nothing killed. Its segment
  buffers (`/mmbee/segments/{author}/`) and gift graph (`/mmbee/graph/`) are the expected state;
  the graph digest must equal the offline batch build of the log's gifts.
* Rounds cycle through three kinds; the round's seed (`--seed` + round) draws the kill point:
  - `restart`: the log is replayed, one worker reads it and is SIGKILLed once a drawn fraction
    (0.2-0.7) of the content events is processed; a new worker process starts at once on the
    same data directory.
  - `takeover`: two workers share the partitions; the one that owns the one-partition gift graph
    is SIGKILLed at the drawn fraction; the survivor takes over (Kafka expires the dead member
    after the session timeout).
  - `broker`: the content is replayed as a backlog, one worker reads it, and the gifts are sent
    live (paced over ~8 s, one record at a time, a callback per acknowledgement). Once a drawn
    fraction of the gifts is acknowledged, the node that leads the most `live.gifts` partitions
    is SIGKILLed. Sends that fail are sent again (stable event ids: a second copy is absorbed as
    a duplicate). After the round the node is restarted and every partition's ISR is back to 3
    before the next round.
  Each round ends when its worker reaches the reference state (or after `--round-timeout-s`); it
  is then compared with the reference.

Figures on the last line (one JSON object, exactly these keys):

* `kills`: SIGKILLs done, worker and broker kills together (one per round).
* `broker_kills`: the broker SIGKILLs among them.
* `events_lost`: summed over rounds, events the reference applied that the round's final state
  lacks. Content: per (author, live, segment start, modality) cell of the segment buffers
  (closed segments' n_frames / n_comments / n_asr, open segments' counts), max(0, reference -
  round); a segment missing from the round counts whole. Gifts: max(0, reference graph gifts -
  round graph gifts) (`num_gifts`, one per applied gift).
* `events_double_counted`: the same cells and gift count, max(0, round - reference): events
  applied more than once (a redelivered event that was not absorbed).
  A round whose graph digest or buffers differ from the reference although both counts are 0
  (a loss and a double count cancelling in one cell, or a different value) is reported on
  stderr as `state_equal: false` and makes the exit status 1.
* `acked_events_lost`: broker rounds: events the producer got an acknowledgement for (every
  gift sent live; every content event, replayed with acks=all before the kill) that are not on
  their topic when read back from the surviving brokers after the kill.
* `recovery_seconds_p50`, `recovery_seconds_max`: worker kills only. Recovery = from the SIGKILL
  until the worker that now holds the dead worker's partitions (the survivor, or the restarted
  process) reports ready with every one of them assigned, and has read each of those content
  partitions that still had work from the offset the group had committed for it at the kill
  (its `/mmbee/status/` read offsets, polled every 0.1 s): processing again. None when no
  worker kill ran. For broker kills, stderr gives `produce_stall_s` instead: SIGKILL to the
  first acknowledgement of a gift sent to a `live.gifts` partition the killed node led (its new
  leader taking acks=all writes); None when no such gift was sent after the kill.

Each round's details (seed, kill point, victim, dead letters, duplicate counters, Faust agent
crashes found in the workers' logs) go to stderr as one JSON line; a round that did not reach the
reference state, or had an agent crash, makes the exit status 1. The machine is shared: recovery times include waiting for the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "streams"))  # streamkit: one AckedProducer and buffers

from scale import Worker, make_log  # noqa: E402
from streamkit import AckedProducer, Message, buffers  # noqa: E402

from mmbee.graph import build  # noqa: E402
from mmbee.schemas import GiftEvent  # noqa: E402
from mmbee.schemas.topics import partition_for  # noqa: E402
from mmbee.settings import Settings  # noqa: E402
from mmbee.simulator.replay import publish  # noqa: E402
from mmbee.streams.broker import KafkaBroker, KafkaCluster, free_port  # noqa: E402
from mmbee.streams.components.graph import state_digest  # noqa: E402
from mmbee.streams.deployment import provision  # noqa: E402

CONTENT = ("live.frames", "live.comments", "live.asr")
KINDS = ("restart", "takeover", "broker")


def log(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), file=sys.stderr, flush=True)


# --- settings, state ------------------------------------------------------------------------


def production(cluster: KafkaCluster, workdir: Path, name: str) -> Settings:
    return Settings(
        profile="production", bootstrap_servers=cluster.bootstrap, broker_kind="kafka",
        topic_prefix=f"{name}.", app_id=f"chaos-{name}", data_dir=workdir / name,
        web_port=free_port(), partitions=4, components=("segments", "graph"),
        store="rocksdb://", rocksdb_memory_budget_mib=64, log_level="WARNING",
        commit_interval_s=0.5, stream_batch_wait_ms=10, graph_refresh_interval_s=0.2,
        graph_idle_rebuild_s=0.5, metrics_lag_interval_s=1.0,
        # no stall release of held events: on a loaded 2-core box a stall of seconds happens, and
        # what it releases early is then late in one run and not in the other (test_scaleout.py)
        segment_align_wait_ms=60_000,
    )  # fmt: skip


def status(w: Worker) -> dict[str, Any]:
    return w.status()


def graph(w: Worker) -> dict[str, Any]:
    try:
        return w.get("/mmbee/graph/")
    except OSError:
        return {}


def cells(bufs: dict[str, Any]) -> Counter[tuple[str, str, int, str]]:
    """(author, live, segment start, modality) -> events applied, over closed and open segments."""
    out: Counter[tuple[str, str, int, str]] = Counter()
    for author, b in bufs.items():
        for seg in b["closed"]:
            for mod in ("frames", "comments", "asr"):
                out[(author, seg["live_id"], seg["start_ms"], mod)] += seg[f"n_{mod}"]
        for seg in b["open"]:
            for mod, n in zip(("frames", "comments", "asr"), seg["counts"], strict=True):
                out[(author, seg["live_id"], seg["start_ms"], mod)] += n
    return out


def held(w: Worker) -> int | None:
    return status(w).get("components", {}).get("segment_buffer_held_events")


def metrics(w: Worker) -> dict[str, Any]:
    return w.metrics()


def dead_letter_counts(w: Worker) -> dict[str, dict[str, int]]:
    return {a: dict(m["dlq"]) for a, m in sorted(metrics(w).items()) if m.get("dlq")}


def duplicate_counts(w: Worker) -> dict[str, int]:
    return {
        a: n
        for a, m in sorted(metrics(w).items())
        if (n := m.get("counters", {}).get("duplicates"))
    }


def agent_crashes(workers: list[Worker]) -> list[str]:
    """'<log file>: <agent>: <exception type>' for every Faust agent crash in the workers' logs
    (a crashed agent stops consuming while its worker process stays up)."""
    out = []
    for w in workers:
        for line in w.log_path.read_text(errors="replace").splitlines():
            if "Crashed reason=" in line:
                agent = line.split("Agent*: ", 1)[-1].split("]", 1)[0]
                reason = line.split("Crashed reason=", 1)[1][:40]
                out.append(f"{w.log_path.name}: {agent}: {reason}")
    return out


def wait(cond: Any, what: str, workers: list[Worker], timeout_s: float, step: float = 0.2) -> bool:
    """Poll `cond` until true (True) or `timeout_s` (False); raise if a worker exited."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        dead = [w for w in workers if not w.alive()]
        if dead:
            raise RuntimeError(f"worker exited while waiting for {what}: see {dead[0].log_path}")
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


class Log:
    """The replayed log and the facts the rounds compare against."""

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.gift_msgs = [m for m in messages if m[0] == "live.gifts"]
        self.gifts = [GiftEvent.model_validate_json(m[2]) for m in self.gift_msgs]
        self.content_ids = {
            t: {json.loads(m[2])["event_id"] for m in messages if m[0] == t} for t in CONTENT
        }
        self.n_content = sum(len(v) for v in self.content_ids.values())
        self.authors = sorted({json.loads(m[2])["author_id"] for m in messages if m[0] in CONTENT})


class Reference:
    def __init__(self, bufs: dict[str, Any], digest: str, gifts: int, dlq: dict[str, Any]) -> None:
        self.bufs, self.digest, self.gifts, self.dlq = bufs, digest, gifts, dlq
        self.cells = cells(bufs)


def finished(w: Worker, lg: Log, processed_floor: int = 0) -> bool:
    s, g = status(w), graph(w)
    return (
        s.get("agents", {}).get("segments", {}).get("processed", 0) >= processed_floor
        and s.get("components", {}).get("segment_buffer_held_events") == 0
        and g.get("gifts") == len(lg.gifts)
        and g.get("rebuilt_at_gifts") == len(lg.gifts)
    )


def compare(w: Worker, lg: Log, ref: Reference) -> dict[str, Any]:
    """Lost and double-counted events of `w`'s final state against the reference (docstring)."""
    bufs = buffers(w, lg.authors)
    got = cells(bufs)
    g = graph(w)
    keys = set(got) | set(ref.cells)
    lost = sum(max(0, ref.cells[k] - got[k]) for k in keys)
    double = sum(max(0, got[k] - ref.cells[k]) for k in keys)
    gifts = int(g.get("gifts", 0))
    diag: dict[str, Any] = {}
    if gifts != ref.gifts:  # where did the gifts stop: on the internal topic, or in the agent?
        settings = w.settings
        forwarded = topic_ids(settings, "graph.gifts")
        diag["gifts_not_forwarded"] = sorted({x.event_id for x in lg.gifts} - forwarded)[:10]
        diag["graph_topic_distinct_ids"] = len(forwarded)
        s = status(w).get("partitions", {})
        tp = f"{settings.topic_prefix}graph.gifts:0"
        diag["graph_partition"] = {
            "assigned": tp in s.get("assigned", []),
            "read": s.get("read", {}).get(tp),
            "lag": s.get("lag", {}).get(tp),
        }
    return diag | {
        "content_lost": lost,
        "content_double": double,
        "gifts_lost": max(0, ref.gifts - gifts),
        "gifts_double": max(0, gifts - ref.gifts),
        "state_equal": bufs == ref.bufs and g.get("digest") == ref.digest,
        "dead_letters": dead_letter_counts(w),
        "duplicates": duplicate_counts(w),
    }


# --- reference --------------------------------------------------------------------------------


def reference(cluster: KafkaCluster, lg: Log, workdir: Path) -> Reference:
    settings = production(cluster, workdir, "ref")
    provision(settings)
    publish(lg.messages, settings)
    w = Worker(settings, workdir / "ref.log")
    try:
        if not wait(lambda: finished(w, lg, lg.n_content), "the reference", [w], 600):
            raise RuntimeError(f"the reference worker did not finish: see {w.log_path}")
        ref = Reference(
            buffers(w, lg.authors), graph(w)["digest"], len(lg.gifts), dead_letter_counts(w)
        )
    finally:
        w.stop()
    batch = state_digest(build(lg.gifts, settings.graph_configs()[0]))
    if ref.digest != batch:
        raise RuntimeError("the uninterrupted worker's graph differs from the batch build")
    return ref


# --- worker kills -----------------------------------------------------------------------------


def spread(workers: list[Worker], settings: Settings) -> bool:
    """Every worker ready and holding a frames partition; every frames partition assigned."""
    frames = settings.topic("live.frames")
    held_parts: list[str] = []
    for w in workers:
        s = status(w)
        if not s or not s["worker"]["ready"]:
            return False
        mine = [tp for tp in s["partitions"]["assigned"] if tp.rsplit(":", 1)[0] == frames]
        if not mine:
            return False
        held_parts += mine
    return len(held_parts) == len(set(held_parts)) == settings.partitions


def processed(workers: list[Worker]) -> int:
    return sum(
        status(w).get("agents", {}).get("segments", {}).get("processed", 0)
        for w in workers
        if w.alive()
    )


def worker_round(
    cluster: KafkaCluster, lg: Log, ref: Reference, kind: str, name: str, seed: int,
    workdir: Path, timeout_s: float,
) -> dict[str, Any]:  # fmt: skip
    """One `restart` or `takeover` round (docstring)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    rng = random.Random(seed)
    frac = rng.uniform(0.2, 0.7)
    settings = production(cluster, workdir, name)
    provision(settings)
    publish(lg.messages, settings)
    n = 1 if kind == "restart" else 2
    workers = [
        Worker(settings.model_copy(update={"web_port": free_port(),
                                           "data_dir": workdir / f"{name}-{i}"}),
               workdir / f"{name}-{i}.log")
        for i in range(n)
    ]  # fmt: skip
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_list())
    out: dict[str, Any] = {"round": name, "kind": kind, "seed": seed, "kill_fraction": frac}
    try:
        if not wait(lambda: spread(workers, settings), "a stable group", workers, 180):
            raise RuntimeError(f"{name}: the group did not settle")
        out["kill_point_reached"] = wait(
            lambda: processed(workers) >= frac * lg.n_content, "the kill point", workers, 300, 0.05
        )
        if not out["kill_point_reached"]:  # a stalled group: say where each worker stood
            out["stalled"] = [
                {k: status(w).get("partitions", {}).get(k) for k in ("assigned", "read", "lag")}
                for w in workers
            ]
        graph_tp = f"{settings.topic_prefix}graph.gifts:0"
        assigned = [set(status(w)["partitions"]["assigned"]) for w in workers]
        v = next((i for i, a in enumerate(assigned) if graph_tp in a), 0)
        victim = workers[v]
        lost = assigned[v]
        out["killed_at_processed"] = processed(workers)
        victim.signal(signal.SIGKILL)
        killed = time.monotonic()
        victim.proc.wait(10)
        offsets = admin.list_group_offsets(settings.app_id)[settings.app_id]
        before = {f"{tp.topic}:{tp.partition}": om.offset for tp, om in offsets.items()}
        content = {settings.topic(t) for t in CONTENT}
        lost_content = [tp for tp in lost if tp.rsplit(":", 1)[0] in content]
        consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_list())
        tps = {tp: TopicPartition(tp.rsplit(":", 1)[0], int(tp.rsplit(":", 1)[1]))
               for tp in lost_content}  # fmt: skip
        ends = consumer.end_offsets(list(tps.values()))
        consumer.close()
        pending = {tp for tp in lost_content if ends[tps[tp]] > before.get(tp, 0)}
        if kind == "restart":
            heir = Worker(
                victim.settings.model_copy(update={"web_port": free_port()}),
                workdir / f"{name}-restarted.log",
            )
            workers.append(heir)
        else:
            heir = workers[1 - v]
        live = [w for w in workers if w.alive()]

        def recovered() -> bool:
            s = status(heir)
            if not s or not s["worker"]["ready"] or not lost <= set(s["partitions"]["assigned"]):
                return False
            read = s["partitions"].get("read", {})
            return all(read.get(tp, -1) >= before.get(tp, 0) for tp in pending)

        ok = wait(recovered, "recovery", live, 180, 0.1)
        out["recovery_seconds"] = round(time.monotonic() - killed, 2) if ok else None
        out["pending_partitions"] = len(pending)
        done = wait(lambda: finished(heir, lg), "the reference state", live, timeout_s)
        if done:  # the counters say done: give the buffers the time to match, then compare
            wait(lambda: buffers(heir, lg.authors) == ref.bufs, "equal buffers", live, 30)
        out["finished"] = done
        out |= compare(heir, lg, ref)
    finally:
        admin.close()
        for w in workers:
            w.stop()
    out["agent_crashes"] = agent_crashes(workers)
    return out


# --- broker kills -----------------------------------------------------------------------------


def topic_ids(settings: Settings, name: str) -> set[str]:
    """Event ids on topic `name`, read from the beginning from the live brokers."""
    from kafka import KafkaConsumer, TopicPartition

    topic = settings.topic(name)
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_list(), request_timeout_ms=10_000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        ids: set[str] = set()
        deadline = time.monotonic() + 120
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not read {topic} to its end")
            for records in consumer.poll(timeout_ms=1000).values():
                ids.update(json.loads(r.value)["event_id"] for r in records)
        return ids
    finally:
        consumer.close()


def describe(settings: Settings, topics: list[str] | None = None) -> list[dict[str, Any]]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_list())
    try:
        return list(admin.describe_topics(topics))
    finally:
        admin.close()


def full_isr(settings: Settings, size: int) -> bool:
    return all(len(p["isr_nodes"]) == size for t in describe(settings) for p in t["partitions"])


def broker_round(
    cluster: KafkaCluster, lg: Log, ref: Reference, name: str, seed: int, workdir: Path,
    timeout_s: float,
) -> dict[str, Any]:  # fmt: skip
    """One `broker` round (docstring); the killed node is restarted before returning."""
    rng = random.Random(seed)
    frac = rng.uniform(0.25, 0.6)
    settings = production(cluster, workdir, name)
    provision(settings)
    publish([m for m in lg.messages if m[0] != "live.gifts"], settings)  # acks=all, or raises
    w = Worker(settings, workdir / f"{name}.log")
    producer = AckedProducer(settings)
    out: dict[str, Any] = {"round": name, "kind": "broker", "seed": seed, "kill_fraction": frac}
    victim: KafkaBroker | None = None
    try:
        if not wait(lambda: bool(status(w).get("worker", {}).get("ready")), "ready", [w], 180):
            raise RuntimeError(f"{name}: the worker did not get ready")
        (gifts_topic,) = describe(settings, [settings.topic("live.gifts")])
        leaders = Counter(p["leader_id"] for p in gifts_topic["partitions"])
        victim_id = max(sorted(leaders), key=lambda n: (leaders[n], rng.random()))
        victim = next(n for n in cluster.nodes if n.node_id == victim_id)
        led = Counter(
            t["name"].removeprefix(settings.topic_prefix)
            for t in describe(settings) if t["name"].startswith(settings.topic_prefix)
            for p in t["partitions"] if p["leader_id"] == victim_id
        )  # fmt: skip
        out |= {"victim_node": victim_id, "victim_led": dict(sorted(led.items()))}
        pace_s = 8.0 / max(1, len(lg.gift_msgs))
        producer.moved = {p["partition_index"] for p in gifts_topic["partitions"]
                          if p["leader_id"] == victim_id}  # fmt: skip
        killed: float | None = None
        for i, m in enumerate(lg.gift_msgs):
            producer.send(m)
            if killed is None and len(producer.acked) >= frac * len(lg.gift_msgs):
                victim.kill()
                killed = producer.killed_at = time.monotonic()
                out |= {"killed_after_acked": len(producer.acked), "killed_after_sent": i + 1}
            time.sleep(pace_s)
        producer.resend_failed()
        if killed is None:  # the acks lagged the sends: kill now, while the worker reads
            victim.kill()
            killed = producer.killed_at = time.monotonic()
            out |= {
                "killed_after_acked": len(producer.acked),
                "killed_after_sent": len(lg.gift_msgs),
            }
        n_parts = len(gifts_topic["partitions"])
        out["gifts_sent_to_moved_partitions_after_kill"] = sum(
            1
            for m in lg.gift_msgs[out["killed_after_sent"] :]
            if partition_for(m[1], n_parts) in producer.moved
        )
        first = producer.first_moved_ack
        out["produce_stall_s"] = None if first is None else round(first - killed, 2)
        out["send_failures_resent"] = producer.failures
        acked = set(producer.acked)
        on_topic = topic_ids(settings, "live.gifts")
        missing = len(acked - on_topic)
        for t in CONTENT:
            missing += len(lg.content_ids[t] - topic_ids(settings, t))
        out["acked_events_lost"] = missing
        out["gifts_never_acked"] = len({g.event_id for g in lg.gifts} - acked)
        done = wait(lambda: finished(w, lg), "the reference state", [w], timeout_s)
        if done:
            wait(lambda: buffers(w, lg.authors) == ref.bufs, "equal buffers", [w], 30)
        out["finished"] = done
        out["worker_alive"] = w.alive()
        out |= compare(w, lg, ref)
    finally:
        producer.close()
        w.stop()
        out["agent_crashes"] = agent_crashes([w])
        if victim is not None and not victim.running:
            t0 = time.monotonic()
            victim.start()
            if not wait(lambda: full_isr(settings, len(cluster.nodes)), "full ISR", [], 180, 1.0):
                raise RuntimeError(f"node {victim.node_id} did not rejoin every ISR")
            out["node_back_s"] = round(time.monotonic() - t0, 1)
    return out


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="kill rounds (kinds cycle)")
    parser.add_argument("--streamers", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--round-timeout-s", type=float, default=300.0)
    parser.add_argument("--quick", action="store_true", help="12 streamers, 3 rounds")
    parser.add_argument("--kinds", default=",".join(KINDS), help="round kinds to cycle through")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args()
    if args.quick:
        args.streamers, args.rounds = 12, 3
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds: some of {','.join(KINDS)}")
    workdir = Path(tempfile.mkdtemp(prefix="mmbee-bench-chaos-"))
    cluster = KafkaCluster(workdir / "cluster")
    rounds: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        lg = Log(make_log(workdir / "log", args.streamers, args.seed))
        log({"log": {"streamers": args.streamers, "content": lg.n_content, "gifts": len(lg.gifts)},
             "seed": args.seed, "load_avg_1m": round(os.getloadavg()[0], 2)})  # fmt: skip
        cluster.start()
        ref = reference(cluster, lg, workdir)
        log({"reference": {"gifts": ref.gifts, "dead_letters": ref.dlq},
             "seconds": round(time.monotonic() - t0, 1)})  # fmt: skip
        for r in range(args.rounds):
            kind = kinds[r % len(kinds)]
            seed = args.seed * 1000 + r
            name = f"r{r}{kind}"
            if kind == "broker":
                got = broker_round(cluster, lg, ref, name, seed, workdir, args.round_timeout_s)
            else:
                got = worker_round(
                    cluster, lg, ref, kind, name, seed, workdir, args.round_timeout_s
                )
            got["load_avg_1m"] = round(os.getloadavg()[0], 2)
            got["seconds_since_start"] = round(time.monotonic() - t0, 1)
            rounds.append(got)
            log(got)
    finally:
        cluster.stop()
        if args.keep:
            log({"work_folder": str(workdir)})
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    recoveries = [x["recovery_seconds"] for x in rounds if x.get("recovery_seconds") is not None]
    worker_kills = [x for x in rounds if x["kind"] != "broker"]
    result = {
        "kills": len(rounds),
        "events_lost": sum(x["content_lost"] + x["gifts_lost"] for x in rounds),
        "events_double_counted": sum(x["content_double"] + x["gifts_double"] for x in rounds),
        "recovery_seconds_p50": round(statistics.median(recoveries), 2) if recoveries else None,
        "recovery_seconds_max": max(recoveries) if recoveries else None,
        "broker_kills": sum(1 for x in rounds if x["kind"] == "broker"),
        "acked_events_lost": sum(x.get("acked_events_lost", 0) for x in rounds),
    }
    bad = [x["round"] for x in rounds if not x["state_equal"] or not x["finished"]]
    bad += [x["round"] for x in rounds if x["agent_crashes"]]
    bad += [x["round"] for x in worker_kills if x.get("recovery_seconds") is None]
    if bad:
        log({"rounds_not_equal_to_reference_or_unrecovered": sorted(set(bad))})
    print(json.dumps(result))
    return 1 if bad else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
