"""Simulator speed: one simulated day for 10k users x 2k streamers, and replay at max speed.

Run:   OMP_NUM_THREADS=1 .venv/bin/python bench/simulate.py [--runs 3] [--replay-runs 3]

Figures (medians over the runs; every run is printed; the box is shared and noisy):
  * day_10k_2k_seconds: `generate_world` + `write_log` of the `default` preset (10,000 users,
    2,000 streamers, 1 day) into a temporary directory. Target <= 60 s.
  * replay_per_s: `replay_log(speed=max)` of that log into a fresh embedded noida-db broker,
    events / wall seconds including reading and checking the files. Target >= 20k events/s.
  * Baselines from the same run: encode_only_per_s (reading + encoding every event, no
    Kafka) and produce_only_per_s (the replay's producer path on the first 300k already-encoded
    messages of the same log, no reading or encoding): replay can at best approach the slower.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from mmbee.settings import Settings  # noqa: E402
from mmbee.simulator.config import preset  # noqa: E402
from mmbee.simulator.logs import write_log  # noqa: E402
from mmbee.simulator.reader import iter_encoded, read_log  # noqa: E402
from mmbee.simulator.replay import publish, replay_log  # noqa: E402
from mmbee.simulator.world import generate_world  # noqa: E402
from mmbee.streams.broker import NoidaBroker, free_port  # noqa: E402
from mmbee.streams.topics import ensure_topics  # noqa: E402


def time_day(outdir: Path, seed: int) -> tuple[float, float, float]:
    """(total, generate, write) seconds for one default-preset day."""
    t0 = time.perf_counter()
    world = generate_world(preset("default"), seed)
    t1 = time.perf_counter()
    write_log(world, outdir, preset_name="default")
    t2 = time.perf_counter()
    return t2 - t0, t1 - t0, t2 - t1


def encode_only(logdir: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_encoded(read_log(logdir, skip=("like.csv",))))
    return n, time.perf_counter() - t0


def produce_only(logdir: Path, settings: Settings, limit: int) -> tuple[int, float]:
    """Send the first `limit` already-encoded messages of the log the way replay does."""
    msgs = []
    for msg in iter_encoded(read_log(logdir, skip=("like.csv",))):
        msgs.append(msg)
        if len(msgs) >= limit:
            break
    stats = publish(msgs, settings)
    return stats.events, stats.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="generation runs (median)")
    ap.add_argument("--replay-runs", type=int, default=3, help="replay runs (median)")
    ap.add_argument("--produce-limit", type=int, default=300_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmbee-bench-sim-"))
    out: dict[str, object] = {"machine": f"{platform.node()} {platform.processor() or ''}".strip()}
    try:
        days = []
        for i in range(args.runs):
            total, gen, wr = time_day(work / f"day{i}", seed=i)
            days.append(total)
            print(
                f"day run {i}: {total:.2f} s (generate {gen:.2f} s, write {wr:.2f} s)", flush=True
            )
        logdir = work / "day0"
        manifest = json.loads((logdir / "mmbee_world.json").read_text())
        n_events, enc_s = encode_only(logdir)
        print(f"encode only: {n_events} events in {enc_s:.2f} s ({n_events / enc_s:,.0f}/s)")
        rates, produce_rates = [], []
        for i in range(args.replay_runs):
            bdir = work / f"broker{i}"
            with NoidaBroker(bdir, free_port()) as broker:
                settings = Settings(bootstrap_servers=broker.bootstrap, topic_prefix=f"b{i}.")
                stats = replay_log(
                    logdir, settings, speed=None, progress=False, prepare_topics=ensure_topics
                )
                rates.append(stats.per_s)
                print(
                    f"replay run {i}: {stats.events} events in {stats.seconds:.2f} s "
                    f"({stats.per_s:,.0f}/s)",
                    flush=True,
                )
                sent, sec = produce_only(
                    logdir,
                    settings.model_copy(update={"topic_prefix": f"p{i}."}),
                    args.produce_limit,
                )
                produce_rates.append(sent / sec)
                print(f"produce only run {i}: {sent} messages in {sec:.2f} s ({sent / sec:,.0f}/s)")
            shutil.rmtree(bdir, ignore_errors=True)
        out.update(
            {
                "day_10k_2k_seconds": round(statistics.median(days), 2),
                "day_runs_s": [round(d, 2) for d in days],
                "replay_per_s": round(statistics.median(rates)),
                "replay_runs_per_s": [round(r) for r in rates],
                "replay_events": n_events,
                "encode_only_per_s": round(n_events / enc_s),
                "produce_only_per_s": round(statistics.median(produce_rates)),
                "counts": manifest["counts"],
            }
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
