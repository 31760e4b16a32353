"""What the embedded broker (noida-db) costs by itself: its whole-store rewrite after writes.

Run:   OMP_NUM_THREADS=1 .venv/bin/python bench/broker.py [--store-mb 50 200]

noida-db keeps every Kafka record in one JSON file, `<data-dir>/kafka.json`, each record byte
written as a decimal number, and rewrites the whole file after a change. This benchmark puts
`--store-mb` MB of 5 KB records on a fresh broker, waits until it is idle, then measures
  * idle_cpu_cores: its CPU seconds per second while nothing is sent (2 s);
  * for one 1-byte produce onto that store: the CPU seconds the broker then spends
    (`rewrite_cpu_s`), its peak RSS meanwhile, and the store file's size; `cpu_s_per_gib_store`
    is the CPU per GiB of store file, over the largest store;
  * produce acks (acks=1, 1-byte records, one every 50 ms) and ListOffsets round trips while
    rewrites run: whether the broker keeps answering during one.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mmbee.streams.broker import NoidaBroker, free_port  # noqa: E402

RECORD = os.urandom(3750).hex()[:5000].encode()  # 5,000 bytes, incompressible-ish text


def _cpu(broker: NoidaBroker) -> float:
    cpu = broker.usage().cpu_s
    if cpu is None:
        raise RuntimeError("broker CPU time is not readable (needs Linux /proc)")
    return cpu


def wait_idle(broker: NoidaBroker, quiet_s: float = 2.0, timeout_s: float = 120.0) -> None:
    """Return once the broker used under 0.05 CPU seconds in `quiet_s`."""
    deadline = time.monotonic() + timeout_s
    last = _cpu(broker)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = _cpu(broker)
        if now - last < 0.05:
            return
        last = now
    raise RuntimeError(f"broker still busy after {timeout_s:.0f} s")


def one_rewrite(broker: NoidaBroker, producer: Any) -> dict[str, float]:
    """CPU seconds and peak RSS of the broker after one 1-byte produce onto an idle store."""
    wait_idle(broker)
    store = broker.usage().store_mib
    cpu0, peak = _cpu(broker), 0.0
    producer.send("bench.tiny", b"x").get(timeout=30)
    t0 = time.monotonic()
    last, quiet_since = cpu0, time.monotonic()
    while time.monotonic() - t0 < 120:
        time.sleep(0.1)
        u = broker.usage()
        peak = max(peak, u.rss_mib or 0.0)
        now = u.cpu_s or last
        if now - last > 0.005:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 1.5 and now > cpu0:
            break
        last = now
    return {"store_mib": round(store, 1), "rewrite_cpu_s": round(_cpu(broker) - cpu0, 2),
            "peak_rss_mib": round(peak, 1)}  # fmt: skip


def latencies(broker: NoidaBroker, n: int) -> dict[str, float]:
    """Produce-ack and ListOffsets round trips (ms), one pair every 50 ms."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import TopicPartition

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0, acks=1)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    tp = TopicPartition("bench.tiny", 0)
    acks, lists = [], []
    try:
        for _ in range(n):
            t = time.perf_counter()
            producer.send("bench.tiny", b"x").get(timeout=30)
            acks.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            consumer.end_offsets([tp])
            lists.append((time.perf_counter() - t) * 1000)
            time.sleep(0.05)
    finally:
        producer.close()
        consumer.close()
    acks.sort()
    lists.sort()
    return {"produce_ack_p50_ms": round(acks[n // 2], 2),
            "produce_ack_p99_ms": round(acks[int(n * 0.99)], 2),
            "produce_ack_max_ms": round(acks[-1], 2),
            "list_offsets_p50_ms": round(lists[n // 2], 2),
            "list_offsets_max_ms": round(lists[-1], 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store-mb", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--probes", type=int, default=200)
    args = parser.parse_args()
    from kafka import KafkaProducer

    workdir = Path(tempfile.mkdtemp(prefix="mmbee-bench-broker-"))
    broker = NoidaBroker(workdir / "broker", free_port())
    broker.start()
    result: dict[str, Any] = {"machine": f"{os.cpu_count()} cpus", "record_bytes": len(RECORD)}
    try:
        bulk = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5,
                             max_request_size=4 << 20)  # fmt: skip
        tiny = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0, acks=1)
        tiny.send("bench.tiny", b"x").get(timeout=30)
        result["empty"] = latencies(broker, args.probes // 2)
        stored, stores = 0, []
        for mb in sorted(args.store_mb):
            while stored < mb * 1_000_000:
                bulk.send("bench.big", RECORD)
                stored += len(RECORD)
            bulk.flush()
            got = one_rewrite(broker, tiny)
            got["records_mb"] = round(stored / 1e6, 1)
            stores.append(got)
        result["stores"] = stores
        cpu0, t0 = _cpu(broker), time.monotonic()
        time.sleep(2.0)
        result["idle_cpu_cores"] = round((_cpu(broker) - cpu0) / (time.monotonic() - t0), 3)
        result["during_rewrites"] = latencies(broker, args.probes)  # each send dirties the store
        biggest = stores[-1]
        result["cpu_s_per_gib_store"] = round(
            biggest["rewrite_cpu_s"] / (biggest["store_mib"] / 1024), 2
        )
        result["store_bytes_per_record_byte"] = round(
            biggest["store_mib"] * 2**20 / (biggest["records_mb"] * 1e6), 2
        )
        bulk.close()
        tiny.close()
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
