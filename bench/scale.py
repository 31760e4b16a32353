"""Scale-out benchmark: replay throughput with 1 and 2 workers on one broker, failover time, RSS.

Run:   OMP_NUM_THREADS=1 .venv/bin/python bench/scale.py [--streamers 100] [--runs 3] [--quick]
       [--brokers kafka,noida]

Every figure below is measured once per broker, in the same run and on the same log: Apache
Kafka (`make kafka`; its noida-db workarounds off) and noida-db, one after the other, each on a
fresh data directory; the JSON has one object per broker, with the broker's CPU cores and RSS.

One broker, one simulated log (preset `tiny` widened to `--streamers` streamers, one
day: frames with 1280-d embeddings, comments and ASR text with cached 384-d embeddings, gifts),
every figure from the same run:

* Throughput. For each run, a 1-worker and a 2-worker deployment (alternating, fresh topics and
  consumer group each, 8 partitions, components segments + graph, RocksDB store). The workers
  start on empty topics and are SIGSTOPped once the group is stable (every worker ready, the
  partitions spread); the log is then replayed into the topics with mmbee's replayer and the
  workers SIGCONTed: they read a backlog with a settled group, and the replayer does not compete
  with them for the CPU. The replay starts `FETCH_SETTLE_S` after the SIGSTOP, once the fetch
  each worker had in flight has been answered empty (see `pause`). Rate = consumed messages
  (content topics + gifts) / (latest batch - earliest batch over all workers), from the workers'
  own metrics (monotonic clock; same method as bench/ingest.py). `scale_ratio` = median
  2-worker rate / median 1-worker rate. The CPU time each worker used is read from /proc, so
  `events_per_worker_cpu_s` shows whether a worker does the same work per CPU second alone or
  beside another (the design scales) even when the box has no free core to give it.
* Failover. Two workers read the backlog with the default session timeout (6 s); once a fifth
  of it is through, the worker that owns the gift graph is SIGKILLed. `failover_seconds` is the
  time from the kill until the survivor has read every one of the dead worker's content
  partitions that still had work from the offset the dead worker had committed (its
  `/mmbee/status/` read offsets, polled every 0.1 s). `takeover_seconds`: until the survivor
  reports those partitions assigned and itself ready (tables recovered).
  `all_committed_seconds`: until the group's committed offset moved on each of them (admin API;
  the segment agent commits an event only once a table write covers it).
  On noida-db the dead member is removed by the survivors' watchdog after `session_timeout_s`
  (mmbee/streams/watchdog.py); on Kafka the broker does it after the same time.
* RSS of each worker (VmRSS at the end of a run, VmHWM peak), and of the survivor after it
  took every partition (for the Kubernetes resource requests).

The last line printed is one JSON object with one_worker_per_s, two_workers_per_s, scale_ratio,
failover_seconds and the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mmbee.settings import Settings  # noqa: E402
from mmbee.simulator.config import preset  # noqa: E402
from mmbee.simulator.logs import write_log  # noqa: E402
from mmbee.simulator.reader import iter_encoded, read_log  # noqa: E402
from mmbee.simulator.replay import publish  # noqa: E402
from mmbee.simulator.world import generate_world  # noqa: E402
from mmbee.streams.broker import free_port, make_broker, on_broker  # noqa: E402
from mmbee.streams.deployment import provision  # noqa: E402

CONSUMED = ("live.frames", "live.comments", "live.asr", "live.gifts")
CONTENT = ("live.frames", "live.comments", "live.asr")
AGENTS = ("segments", "graph_gifts")
FAUST_FETCH_MAX_WAIT_S = 1.5  # faust's aiokafka driver: fetch_max_wait_ms=1500
FETCH_SETTLE_S = FAUST_FETCH_MAX_WAIT_S + 1.0


# --- data -------------------------------------------------------------------------------------


def hashed_text_embeddings(texts: list[str]) -> np.ndarray:
    """Deterministic 384-d vectors per text: the text featurizer is not what is measured."""
    out = np.empty((len(texts), 384), np.float32)
    for i, t in enumerate(texts):
        out[i] = np.random.default_rng(zlib.crc32(t.encode())).normal(0, 0.1, 384)
    return out


def make_log(root: Path, streamers: int, seed: int) -> list[tuple[str, bytes, bytes, int]]:
    """Simulate the world and return its replay messages, encoded once, in event-time order."""
    cfg = preset("tiny", n_streamers=streamers, n_users=400)
    cfg = replace(cfg, calibration=replace(cfg.calibration, base_gift_rate=0.01))
    write_log(
        generate_world(cfg, seed), root, preset_name="tiny", text_embedder=hashed_text_embeddings
    )
    return list(iter_encoded(read_log(root), attach_text_embeddings=True))


# --- worker processes -------------------------------------------------------------------------


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMBEE_")}
    for key, value in settings.model_dump(mode="json").items():
        if value is not None:
            env["MMBEE_" + key.upper()] = (
                json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
            )
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class Worker:
    """`python -m mmbee worker` with its status page polled over HTTP."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmbee", "worker"],
            env=_env(settings), cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.settings.web_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)

    def status(self) -> dict[str, Any]:
        try:
            return self.get("/mmbee/status/")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return {}

    def metrics(self) -> dict[str, Any]:
        try:
            return self.get("/mmbee/metrics/")["agents"]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return {}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def rss_mib(self) -> tuple[float, float]:
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
        return round(fields["VmRSS"], 1), round(fields["VmHWM"], 1)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def box_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wait_for(
    cond: Any, what: str, workers: list[Worker], timeout_s: float, step: float = 0.25
) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        dead = [w for w in workers if not w.alive()]
        if dead:
            raise RuntimeError(f"worker exited while waiting for {what}: see {dead[0].log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out ({timeout_s} s) waiting for {what}")
        time.sleep(step)


def stable(workers: list[Worker], partitions: int) -> bool:
    """Every worker ready and every content partition assigned to exactly one of them."""
    seen: list[str] = []
    for w in workers:
        s = w.status()
        if not s or not s["worker"]["ready"]:
            return False
        seen += [
            tp for tp in s["partitions"]["assigned"] if tp.split(":")[0].endswith("live.frames")
        ]
    return len(seen) == len(set(seen)) == partitions and all(
        any(tp.split(":")[0].endswith("live.frames") for tp in w.status()["partitions"]["assigned"])
        for w in workers
    )


def pause(workers: list[Worker]) -> None:
    """SIGSTOP the workers, then wait until no fetch of theirs is pending at the broker.

    Apache Kafka holds an idle consumer's fetch for up to fetch.max.wait.ms and answers it as
    soon as data lands. A fetch sent just before the SIGSTOP is therefore answered by the first
    produce request of the replay, with the first record batches only (the replayer fills a
    512 KiB batch per topic partition, so those are ~75 frames, 20 minutes of event time, of
    partitions 0 and 7) and high watermarks of 0 for the comment and ASR partitions, which had
    nothing yet. On SIGCONT the segment agent reads that stale answer, takes the empty sources for
    quiet (read to their high watermark), releases the frames and closes their segments; the
    comments and ASR segments that then arrive are dead-lettered `late` (311 on the 30-streamer
    log, every run). Waiting past fetch.max.wait.ms lets the broker answer that fetch empty
    before the replay starts, so the first fetch after SIGCONT sees the whole backlog. noida-db
    answers every fetch at once, so it never showed the fault. A worker fed while it runs still
    has it (issue 21, item 4: per-partition watermarks with an idle timeout)."""
    for w in workers:
        w.signal(signal.SIGSTOP)
    time.sleep(FETCH_SETTLE_S)


def dead_letters(metrics: dict[str, Any]) -> dict[str, dict[str, int]]:
    """{agent: {reason: count}} of one worker's metrics, agents with none left out."""
    return {agent: dict(a["dlq"]) for agent, a in sorted(metrics.items()) if a.get("dlq")}


def settled_status(w: Worker, timeout_s: float = 30.0) -> dict[str, Any]:
    """The worker's status, retried while a loaded machine makes it time out."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = w.status()
        if s or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


def consumed(workers: list[Worker]) -> tuple[int, int]:
    """(messages the consuming agents finished, events held for alignment) over all workers."""
    done = held = 0
    for w in workers:
        m = w.metrics()
        for agent in AGENTS:
            done += m.get(agent, {}).get("counters", {}).get("processed", 0)
        held += m.get("segments", {}).get("gauges", {}).get("held", 0)
    return done, held


# --- phases -----------------------------------------------------------------------------------


def run_settings(base: Settings, name: str, workdir: Path, **extra: Any) -> Settings:
    return base.model_copy(
        update=dict(
            topic_prefix=f"{name}.", app_id=f"bench-{name}", data_dir=workdir / name, **extra
        )
    )


def throughput_run(
    base: Settings,
    name: str,
    n_workers: int,
    messages: list[Any],
    n_consumed: int,
    workdir: Path,
    broker_pid: int,
) -> dict[str, Any]:
    """One deployment of `n_workers` reading the whole log as a backlog (see the docstring)."""
    settings = run_settings(base, name, workdir, session_timeout_s=60.0)
    provision(settings)  # every topic before the workers subscribe (RUNBOOK section 12)
    workers = [
        Worker(settings.model_copy(update={"web_port": free_port(), "data_dir": workdir / f"{name}-{i}"}),
               workdir / f"{name}-{i}.log")
        for i in range(n_workers)
    ]  # fmt: skip
    try:
        wait_for(lambda: stable(workers, settings.partitions), "a stable group", workers, 120)
        pause(workers)
        stats = publish(messages, settings)
        cpu0 = [w.cpu_s() for w in workers]
        broker0, box0 = proc_cpu_s(broker_pid), box_jiffies()
        for w in workers:
            w.signal(signal.SIGCONT)
        t0 = time.monotonic()

        def done() -> bool:
            n, held = consumed(workers)
            return n >= n_consumed and held == 0

        wait_for(done, f"{n_workers} worker(s) to read the log", workers, 900)
        wall = time.monotonic() - t0
        broker_cpu = proc_cpu_s(broker_pid) - broker0
        box1 = box_jiffies()
        box_cores = (box1[0] - box0[0]) / max(1, box1[1] - box0[1]) * (os.cpu_count() or 1)
        spans = [w.metrics() for w in workers]
        first = min(
            a[g]["first_s"] for a in spans for g in ("segments",) if a.get(g, {}).get("first_s")
        )
        last = max(
            a[g]["last_s"] for a in spans for g in ("segments",) if a.get(g, {}).get("last_s")
        )
        per_worker = [
            sum(a.get(g, {}).get("counters", {}).get("processed", 0) for g in AGENTS) for a in spans
        ]
        cpu = [w.cpu_s() - c for w, c in zip(workers, cpu0, strict=True)]
        rss = [w.rss_mib() for w in workers]
        dlq = [dead_letters(a) for a in spans]
        return {
            "workers": n_workers,
            "rate": n_consumed / (last - first),
            "wall_rate": n_consumed / wall,
            "per_worker_messages": per_worker,
            "worker_cpu_s": [round(c, 2) for c in cpu],
            "events_per_worker_cpu_s": round(n_consumed / sum(cpu), 1),
            # where the machine's cores went while the workers read the backlog
            "cores_used_by_workers": round(sum(cpu) / wall, 2),
            "cores_used_by_broker": round(broker_cpu / wall, 2),
            "cores_busy_on_machine": round(box_cores, 2),
            "rss_mib": [r[0] for r in rss],
            "peak_rss_mib": [r[1] for r in rss],
            "replay_per_s": round(stats.per_s),
            "dlq": dlq,
        }
    finally:
        for w in workers:
            w.stop()


def failover_run(
    base: Settings, messages: list[Any], n_consumed: int, workdir: Path, name: str = "failover"
) -> dict[str, Any]:
    """Two workers on a backlog; SIGKILL the graph owner at 20 %; time until its partitions
    commit again on the survivor."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    settings = run_settings(base, name, workdir)
    provision(settings)  # every topic before the workers subscribe (RUNBOOK section 12)
    workers = [
        Worker(settings.model_copy(update={"web_port": free_port(), "data_dir": workdir / f"{name}-{i}"}),
               workdir / f"{name}-{i}.log")
        for i in range(2)
    ]  # fmt: skip
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_list())
    try:
        wait_for(lambda: stable(workers, settings.partitions), "a stable group", workers, 120)
        pause(workers)
        publish(messages, settings)
        for w in workers:
            w.signal(signal.SIGCONT)
        wait_for(
            lambda: consumed(workers)[0] >= n_consumed // 5, "a fifth of the log", workers, 600, 0.1
        )
        graph = f"{settings.topic_prefix}graph.gifts:0"
        assigned = [set(settled_status(w)["partitions"]["assigned"]) for w in workers]
        v = 0 if graph in assigned[0] else 1
        victim, survivor, lost = workers[v], workers[1 - v], assigned[v]
        content = {settings.topic(t) for t in CONTENT}

        def committed() -> dict[str, int]:
            offsets = admin.list_group_offsets(settings.app_id)[settings.app_id]
            return {f"{tp.topic}:{tp.partition}": om.offset for tp, om in offsets.items()}

        victim.signal(signal.SIGKILL)
        killed = time.monotonic()
        victim.proc.wait(10)
        before = committed()
        consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_list())
        lost_content = [tp for tp in lost if tp.split(":")[0] in content]
        ends = consumer.end_offsets(
            [TopicPartition(tp.rsplit(":", 1)[0], int(tp.rsplit(":", 1)[1])) for tp in lost_content]
        )
        consumer.close()
        pending = {
            tp for tp in lost_content
            if ends[TopicPartition(tp.rsplit(":", 1)[0], int(tp.rsplit(":", 1)[1]))] > before.get(tp, 0)
        }  # fmt: skip
        takeover = failover = all_committed = None
        moved: set[str] = set()
        deadline = killed + 120
        while time.monotonic() < deadline and (all_committed is None or failover is None):
            now = time.monotonic() - killed
            s = survivor.status()
            if (
                takeover is None
                and s
                and s["worker"]["ready"]
                and lost <= set(s["partitions"]["assigned"])
            ):
                takeover = now
            read = s.get("partitions", {}).get("read", {}) if s else {}
            # processing again: the survivor read each partition from where the dead worker's
            # commits left it (the redelivered, uncommitted events included)
            if failover is None and all(read.get(tp, -1) >= before.get(tp, 0) for tp in pending):
                failover = now
            if all_committed is None:
                offsets = committed()
                moved |= {tp for tp in pending if offsets.get(tp, -1) > before.get(tp, -1)}
                if moved == pending:
                    all_committed = now
            time.sleep(0.1)
        wait_for(lambda: consumed([survivor])[1] == 0, "the survivor to settle", [survivor], 600)
        rss, peak = survivor.rss_mib()
        survivor_metrics = survivor.metrics()
        return {
            "failover_seconds": None if failover is None else round(failover, 2),
            "takeover_seconds": None if takeover is None else round(takeover, 2),
            "all_committed_seconds": None if all_committed is None else round(all_committed, 2),
            "dead_worker_partitions": len(lost),
            "dead_worker_content_partitions_with_work": len(pending),
            "survivor_rss_mib": rss,
            "survivor_peak_rss_mib": peak,
            "session_timeout_s": settings.session_timeout_s,
            # events redelivered after the crash: dead-lettered as `duplicate`, or counted as
            # duplicates once issue 21 item 3 is in (both are reported)
            "survivor_dead_letters": dead_letters(survivor_metrics),
            "survivor_duplicates": {
                agent: n
                for agent, a in sorted(survivor_metrics.items())
                if (n := a.get("counters", {}).get("duplicates", 0))
            },
        }
    finally:
        admin.close()
        for w in workers:
            w.stop()


def measure(
    kind: str, args: argparse.Namespace, messages: list[Any], workdir: Path
) -> dict[str, Any]:
    """Every figure of the docstring on a fresh broker of `kind` ('kafka' or 'noida')."""
    n_consumed = sum(1 for m in messages if m[0] in CONSUMED)
    broker = make_broker(kind, workdir / f"broker-{kind}", free_port())  # type: ignore[arg-type]
    broker.start()
    result: dict[str, Any] = {"broker": kind}
    try:
        base = on_broker(Settings(
            partitions=8, components=("segments", "graph"), store="rocksdb://",
            log_level="WARNING", web_port=free_port(),
        ), broker)  # fmt: skip
        assert broker._proc is not None
        pid = broker._proc.pid
        runs: list[dict[str, Any]] = []
        for r in range(args.runs):
            for n in (1, 2):
                got = throughput_run(base, f"{kind}r{r}w{n}", n, messages, n_consumed, workdir, pid)
                runs.append(got)
                print(json.dumps({"broker": kind, "run": r, **got}), file=sys.stderr)
        one = [x["rate"] for x in runs if x["workers"] == 1]
        two = [x["rate"] for x in runs if x["workers"] == 2]
        result["one_worker_per_s"] = round(statistics.median(one))
        result["two_workers_per_s"] = round(statistics.median(two))
        result["scale_ratio"] = round(statistics.median(two) / statistics.median(one), 3)
        result["one_worker_wall_per_s"] = round(
            statistics.median(x["wall_rate"] for x in runs if x["workers"] == 1)
        )
        result["two_workers_wall_per_s"] = round(
            statistics.median(x["wall_rate"] for x in runs if x["workers"] == 2)
        )
        result["events_per_worker_cpu_s"] = {
            "one": statistics.median(x["events_per_worker_cpu_s"] for x in runs if x["workers"] == 1),
            "two": statistics.median(x["events_per_worker_cpu_s"] for x in runs if x["workers"] == 2),
        }  # fmt: skip
        for key in ("cores_used_by_workers", "cores_used_by_broker", "cores_busy_on_machine"):
            result[key] = {
                k: statistics.median(x[key] for x in runs if x["workers"] == n)
                for k, n in (("one", 1), ("two", 2))
            }
        result["worker_rss_mib"] = {
            "one": max(max(x["rss_mib"]) for x in runs if x["workers"] == 1),
            "two": max(max(x["rss_mib"]) for x in runs if x["workers"] == 2),
            "peak": max(max(x["peak_rss_mib"]) for x in runs),
        }
        usage = broker.usage()
        result["broker_rss_mib_after_throughput"] = usage.rss_mib
        result["broker_store_mib_after_throughput"] = round(usage.store_mib, 1)
        result["runs"] = [
            {k: v for k, v in x.items() if k != "dlq"} | {"rate": round(x["rate"])} for x in runs
        ]
        result["dead_letters"] = [x["dlq"] for x in runs]  # per run, per worker, per agent
        result["late_dead_letters"] = sum(
            reasons.get("late", 0) for x in runs for w in x["dlq"] for reasons in w.values()
        )
        fo = failover_run(base, messages, n_consumed, workdir, f"{kind}failover")
        result.update(fo)
        usage = broker.usage()
        result["broker_rss_mib_end"] = usage.rss_mib
        result["broker_cpu_s_total"] = usage.cpu_s
    finally:
        broker.stop()
        broker.discard_store()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streamers", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="30 streamers, one run")
    parser.add_argument(
        "--brokers", default="kafka,noida", help="comma-separated, in order: kafka, noida"
    )
    args = parser.parse_args()
    if args.quick:
        args.streamers, args.runs = 30, 1
    kinds = [k.strip() for k in args.brokers.split(",") if k.strip()]
    if not kinds or set(kinds) - {"kafka", "noida"}:
        parser.error("--brokers: kafka and/or noida")

    workdir = Path(tempfile.mkdtemp(prefix="mmbee-bench-scale-"))
    result: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "load_avg_1m": [round(os.getloadavg()[0], 2)],
    }
    try:
        messages = make_log(workdir / "log", args.streamers, args.seed)
        n_consumed = sum(1 for m in messages if m[0] in CONSUMED)
        result["log"] = {
            "streamers": args.streamers,
            "messages": len(messages),
            "consumed_messages": n_consumed,
            "by_topic": {t: sum(1 for m in messages if m[0] == t) for t in sorted({m[0] for m in messages})},
            "mean_consumed_bytes": round(
                sum(len(m[2]) for m in messages if m[0] in CONSUMED) / n_consumed
            ),
        }  # fmt: skip
        for kind in kinds:
            result[kind] = measure(kind, args, messages, workdir)
            result["load_avg_1m"].append(round(os.getloadavg()[0], 2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
