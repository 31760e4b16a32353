"""Ingest throughput of the segment-buffer agent, against its baselines, on one embedded broker.

Run:   OMP_NUM_THREADS=1 .venv/bin/python bench/ingest.py [--quick] [--skip-featurizers]

One broker, one data set, every figure from the same run (the box is shared and noisy):
  * raw_consume_per_s: aiokafka reading the content messages straight off the broker (the
    ceiling; no Faust). (kafka-python is not used here: it computes CRC32C in pure Python, which
    caps it near 1-2k of these ~4 KB messages per second on this machine.)
  * faust_trivial_per_s: a Faust worker whose agent iterates the same three topics and does
    nothing (Faust's own per-event floor).
  * ingest_per_s: a Faust worker running mmbee's `segments` component (decode + validate with
    the pydantic codec, event-time alignment, pooled fixed-point accumulation, table writes per
    closed segment, SegmentClosed output) on precomputed embeddings (1280-d frames, 384-d
    comments and ASR text), time from its first batch to its last applied event.
  * ingest_vs_faust = ingest_per_s / faust_trivial_per_s (target >= 0.7), with the worker
    kinds run alternately `--runs` times; medians are reported, and every run's figure.
  * faust_stock_trivial_per_s / ingest_vs_faust_stock: the same trivial agent with Faust's own
    per-message hand-off (`faust_inline_handoff=false`), i.e. unpatched Faust's floor. Both
    trivial and segments workers above run mmbee's inline hand-off (the default), which roughly
    halves Faust's per-message cost; this pair shows where that leaves mmbee against stock Faust.
    `ingest_vs_faust` stays the like-for-like figure.
  * rss_10k_streams_mib: resident memory of a segments worker once 10,000 live streams each
    hold L = 10 closed segments and an open one (target <= 2 GiB), with its peak.
  * broker_cpu_cores_trivial / broker_cpu_cores_segments: CPU seconds per second the embedded
    broker used while each worker kind consumed (medians), and broker_store_mib, the size of
    its store file: noida-db rewrites that whole file after writes (offset commits included),
    so the broker takes most of a core from the two it shares with the worker.
  * whisper_rtf_tiny / whisper_rtf_base / text_emb_per_s / frame_emb_per_s: from
    bench/featurizers.py `measure()` (the featurizer benchmark), merged in.

Workers are real `mmbee worker` processes (RocksDB store) polled over their /mmbee/metrics/ page.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mmbee.settings import Settings  # noqa: E402
from mmbee.streams.broker import NoidaBroker, free_port  # noqa: E402
from mmbee.streams.components.segments import SOURCES  # noqa: E402
from mmbee.streams.runtime.context import StreamContext  # noqa: E402
from mmbee.streams.topics import ensure_topics  # noqa: E402

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 30_000
KINDS = ("trivial", "segments", "trivial-stock")


# --- data -----------------------------------------------------------------------------------


def _pool(dim: int, n: int, rng: np.random.Generator) -> list[str]:
    vecs = (rng.normal(size=(n, dim)) * 0.1).astype("<f4")
    return [base64.b64encode(v.tobytes()).decode() for v in vecs]


def live_messages(
    n_authors: int, seconds: int, seed: int = 0
) -> list[tuple[int, str, bytes, bytes]]:
    """A replayed stretch of live content: per author and second one frame, ~1.5 comments, a
    4 s ASR segment every 5 s; (ts_ms, topic, key, value) in event-time order."""
    rng = np.random.default_rng(seed)
    frames, texts = _pool(1280, 64, rng), _pool(384, 64, rng)
    out: list[tuple[int, str, bytes, bytes]] = []
    for a in range(n_authors):
        author, live, key = f"a{a}", f"l{a}", f"a{a}".encode()
        for t in range(seconds):
            base = T0 + t * 1000
            ts = base + (a * 7) % 1000
            out.append((ts, "live.frames", key, json.dumps({
                "event_id": f"f{a}-{t}", "ts_ms": ts, "live_id": live, "author_id": author,
                "embedding": frames[int(rng.integers(64))]}).encode()))  # fmt: skip
            for c in range(int(rng.poisson(1.5))):
                ts_c = base + int(rng.integers(1000))
                out.append((ts_c, "live.comments", key, json.dumps({
                    "event_id": f"c{a}-{t}-{c}", "ts_ms": ts_c, "user_id": f"u{int(rng.integers(10_000))}",
                    "author_id": author, "live_id": live, "text": "what a great stream!",
                    "text_embedding": texts[int(rng.integers(64))]}).encode()))  # fmt: skip
            if t % 5 == 0:
                out.append((base, "live.asr", key, json.dumps({
                    "event_id": f"s{a}-{t}", "ts_ms": base, "end_ms": base + 4_000, "live_id": live,
                    "author_id": author, "text": "thanks everyone for the gifts today",
                    "language": "en", "text_embedding": texts[int(rng.integers(64))]}).encode()))  # fmt: skip
    out.sort(key=lambda m: m[0])
    return out


def buffered_streams_messages(
    n_authors: int, segments: int, segment_ms: int, lateness_ms: int, seed: int = 1
) -> list[tuple[int, str, bytes, bytes]]:
    """One event per stream per segment (modalities in turn), late enough in each segment to
    close the previous one: after `segments` rounds every stream holds segments - 1 closed."""
    rng = np.random.default_rng(seed)
    frames, texts = _pool(1280, 16, rng), _pool(384, 16, rng)
    out = []
    for k in range(segments):
        for a in range(n_authors):
            ts = T0 + k * segment_ms + lateness_ms + (a % 1000) * 10
            author, key = f"a{a}", f"a{a}".encode()
            kind = (a + k) % 3
            if kind == 0:
                obj = {"event_id": f"f{a}-{k}", "ts_ms": ts, "live_id": f"l{a}", "author_id": author,
                       "embedding": frames[(a + k) % 16]}  # fmt: skip
                topic = "live.frames"
            elif kind == 1:
                obj = {"event_id": f"c{a}-{k}", "ts_ms": ts, "user_id": "u1", "author_id": author,
                       "live_id": f"l{a}", "text": "hi", "text_embedding": texts[(a + k) % 16]}  # fmt: skip
                topic = "live.comments"
            else:
                obj = {"event_id": f"s{a}-{k}", "ts_ms": ts, "end_ms": ts, "live_id": f"l{a}",
                       "author_id": author, "text": "hello", "text_embedding": texts[(a + k) % 16]}  # fmt: skip
                topic = "live.asr"
            out.append((ts, topic, key, json.dumps(obj).encode()))
    out.sort(key=lambda m: m[0])
    return out


def produce(settings: Settings, messages: list[tuple[int, str, bytes, bytes]]) -> float:
    """Write the messages with aiokafka (kafka-python computes CRC32C in pure Python: ~1k 4 KB
    messages/s here); returns messages per second."""
    from aiokafka import AIOKafkaProducer

    async def run() -> float:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            linger_ms=20,
            max_batch_size=1024 * 1024,
            max_request_size=4 * 1024 * 1024,
        )
        await producer.start()
        try:
            t = time.perf_counter()
            pending = []
            for _, name, key, value in messages:
                pending.append(await producer.send(settings.topic(name), value=value, key=key))
                if len(pending) >= 5_000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            return len(messages) / (time.perf_counter() - t)
        finally:
            await producer.stop()

    return asyncio.run(run())


# --- measurements ---------------------------------------------------------------------------


def raw_consume(settings: Settings, n: int) -> float:
    """aiokafka reading every content partition from the start, no Faust: messages per second
    (from the first fetched batch to the n-th message)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> float:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = [
                TopicPartition(settings.topic(s), p)
                for s in SOURCES
                for p in range(settings.partitions)
            ]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            seen, t0 = 0, time.perf_counter()  # fetching is part of consuming
            while seen < n:
                batch = await consumer.getmany(timeout_ms=10_000, max_records=10_000)
                if not batch:
                    raise RuntimeError(f"read {seen} of {n}")
                seen += sum(len(v) for v in batch.values())
            return seen / (time.perf_counter() - t0)
        finally:
            await consumer.stop()

    return asyncio.run(run())


def register_trivial(ctx: StreamContext) -> None:
    """Bench-only component: a Faust agent over the content topics that does nothing."""

    async def trivial(stream: Any) -> None:
        async for _ in stream:
            ctx.metrics.observe("trivial", 1)

    ctx.app.agent(ctx.topic(*SOURCES), name="bench.trivial")(trivial)


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMBEE_")}
    for key, value in settings.model_dump(mode="json").items():
        if value is not None:
            env["MMBEE_" + key.upper()] = (
                json.dumps(value) if isinstance(value, list | tuple) else str(value)
            )
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _metrics(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/mmbee/metrics/", timeout=5) as r:
            return json.load(r)["agents"]
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return {}


def _rss_mib(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return round(fields["VmRSS"], 1), round(fields["VmHWM"], 1)


def run_worker(
    settings: Settings, kind: str, n: int, workdir: Path, broker: NoidaBroker,
    timeout_s: float = 600,
) -> dict[str, Any]:  # fmt: skip
    """Start a worker of `kind` (one of KINDS), wait until it has handled all `n`
    messages, read its rate (and RSS), stop it. `broker_cpu_cores`: the broker's CPU seconds
    per second from the worker's first batch to its last (noida-db rewrites its whole store
    after writes, offset commits included, and shares the cores with the worker)."""
    trivial = kind.startswith("trivial")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-trivial"] if trivial \
        else [sys.executable, "-m", "mmbee", "worker"]  # fmt: skip
    log = open(workdir / f"{settings.app_id}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=_env(settings), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    agent = "trivial" if trivial else "segments"
    deadline = time.monotonic() + timeout_s
    started: tuple[float, float | None] | None = None  # (wall, broker CPU s) at the first batch
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} worker exited: see {log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} worker did not finish in {timeout_s} s: see {log.name}")
            a = _metrics(settings.web_port).get(agent)
            c = (a or {}).get("counters", {})
            done = c.get("events", 0) >= n if trivial else (
                c.get("processed", 0) >= n and a["gauges"].get("held", 1) == 0)  # fmt: skip
            if a and done:
                break
            if started is None and c.get("events", 0) > 0:
                started = (time.monotonic(), broker.usage().cpu_s)
            time.sleep(0.25)
        rss, peak = _rss_mib(proc.pid)
        ended, cores = (time.monotonic(), broker.usage().cpu_s), None
        if started is not None and started[1] is not None and ended[1] is not None:
            cores = round((ended[1] - started[1]) / max(ended[0] - started[0], 1e-9), 2)
        out = {"rate": n / (a["last_s"] - a["first_s"]), "rss_mib": rss, "peak_rss_mib": peak,
               "counters": c, "dlq": a.get("dlq", {}), "broker_cpu_cores": cores}  # fmt: skip
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()


def _featurizer_figures(skip: bool) -> dict[str, Any]:
    keys = ("whisper_rtf_tiny", "whisper_rtf_base", "text_emb_per_s", "frame_emb_per_s")
    path = ROOT / "bench" / "featurizers.py"
    if skip or not path.is_file():
        why = "skipped (--skip-featurizers)" if skip else "bench/featurizers.py missing"
        return {k: None for k in keys} | {"featurizers": why}
    spec = importlib.util.spec_from_file_location("mmbee_bench_featurizers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.measure()
    return {k: figures.get(k) for k in keys} | {"featurizers": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=110, help="event time per stream")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rss-streams", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="small data, one run, no featurizers")
    parser.add_argument("--skip-featurizers", action="store_true")
    parser.add_argument("--worker-trivial", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker_trivial:  # a worker process started by run_worker()
        from mmbee.settings import load_settings
        from mmbee.streams.worker import run_worker as serve

        serve(load_settings(), components=[register_trivial])
        return
    if args.quick:
        args.authors, args.seconds, args.runs, args.rss_streams = 50, 40, 1, 1_000
        args.skip_featurizers = True

    workdir = Path(tempfile.mkdtemp(prefix="mmbee-bench-ingest-"))
    broker = NoidaBroker(workdir / "broker", free_port())
    broker.start()
    result: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "load_avg_1m": [round(os.getloadavg()[0], 2)],
    }
    try:
        base = Settings(
            bootstrap_servers=broker.bootstrap, topic_prefix="bench.", partitions=4,
            log_level="WARNING", store="rocksdb://",
        )  # fmt: skip
        ensure_topics(base)
        messages = live_messages(args.authors, args.seconds)
        n = len(messages)
        result["events"] = n
        result["event_mix"] = {s: sum(1 for m in messages if m[1] == s) for s in SOURCES}
        result["mean_message_bytes"] = round(sum(len(m[3]) for m in messages) / n)
        result["produce_per_s"] = round(produce(base, messages))
        del messages
        result["raw_consume_runs"] = [round(raw_consume(base, n)) for _ in range(args.runs)]
        rates: dict[str, list[float]] = {k: [] for k in KINDS}
        trivial, ingest, stock = rates["trivial"], rates["segments"], rates["trivial-stock"]
        details = []
        for run in range(args.runs):
            for kind in KINDS:
                s = base.model_copy(update={
                    "app_id": f"bench-{kind}-{run}", "web_port": free_port(),
                    "data_dir": workdir / f"{kind}-{run}",
                    "faust_inline_handoff": kind != "trivial-stock",
                    "components": ("segments",) if kind == "segments" else ()})  # fmt: skip
                got = run_worker(s, kind, n, workdir, broker)
                rates[kind].append(got["rate"])
                details.append({"kind": kind, "run": run, "rate": round(got["rate"]),
                                "rss_mib": got["rss_mib"], "dlq": got["dlq"],
                                "broker_cpu_cores": got["broker_cpu_cores"]})  # fmt: skip
                if kind == "segments":
                    assert not got["dlq"], f"segments worker dead-lettered: {got['dlq']}"
                    result["segments_closed"] = got["counters"].get("segments_closed")
                    result["table_writes"] = got["counters"].get("table_writes")
        result["raw_consume_per_s"] = round(statistics.median(result["raw_consume_runs"]))
        result["faust_trivial_per_s"] = round(statistics.median(trivial))
        result["ingest_per_s"] = round(statistics.median(ingest))
        result["ingest_vs_faust"] = round(statistics.median(ingest) / statistics.median(trivial), 3)
        result["faust_stock_trivial_per_s"] = round(statistics.median(stock))
        result["ingest_vs_faust_stock"] = round(
            statistics.median(ingest) / statistics.median(stock), 3
        )
        result["worker_runs"] = details
        for kind in KINDS:
            cores = [d["broker_cpu_cores"] for d in details
                     if d["kind"] == kind and d["broker_cpu_cores"] is not None]  # fmt: skip
            result[f"broker_cpu_cores_{kind}"] = statistics.median(cores) if cores else None
        result["broker_store_mib"] = round(broker.usage().store_mib, 1)

        # memory with 10k live streams, each holding L closed segments + an open one
        rss_settings = base.model_copy(update={
            "topic_prefix": "rss.", "app_id": "bench-rss", "web_port": free_port(),
            "data_dir": workdir / "rss", "components": ("segments",)})  # fmt: skip
        ensure_topics(rss_settings)
        L = rss_settings.segments_kept
        msgs = buffered_streams_messages(args.rss_streams, L + 1, rss_settings.segment_ms,
                                         rss_settings.allowed_lateness_ms)  # fmt: skip
        produce(rss_settings, msgs)
        got = run_worker(rss_settings, "segments", len(msgs), workdir, broker)
        assert not got["dlq"], got["dlq"]
        assert got["counters"].get("segments_closed") == args.rss_streams * L, got["counters"]
        result["rss_streams"] = args.rss_streams
        result["rss_10k_streams_mib"] = got["rss_mib"]
        result["rss_10k_streams_peak_mib"] = got["peak_rss_mib"]
        result["rss_ingest_per_s"] = round(got["rate"])
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result["load_avg_1m"].append(round(os.getloadavg()[0], 2))
    result |= _featurizer_figures(args.skip_featurizers)
    print(json.dumps(result))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
