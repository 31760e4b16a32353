"""What the live page (`/` on the worker's web port) costs the worker: CPU with and without one
open page, in the same run, with the worker idle and under content load.

Set-up: the demo's deployment on the embedded broker (`mmbee.jobs.stack`): a simulated world
(`demo` preset, text embeddings attached) replayed into Kafka, one worker with segments, graph,
joiner and serving, serving an untrained `sim_mfq_gie` checkpoint with the MFQ content encoder at
the real widths (1280-d frames, 384-d texts): the page's top streams cost what they cost with a
trained one (same layers, same shapes), so no training is timed here.

Then, for `--pairs` pairs of `--window-s` windows, in alternating order (off/on, on/off, ...):
the worker's CPU seconds per second (`/proc/<pid>/stat`) with no page open, and with one page
open in headless Chromium (the real page: it polls `/mmbee/page/` every 3 s, the worker
recomputes the top streams with their modality ablation each time, as the 2 s cache has
expired). First with the worker idle (no new events), then while content events for the
streamers flow at `--background-rate` events/s (`mmbee.jobs.probes.Background`). Figures: medians
of the windows and the median of the paired differences (`page_cost_*_cores`).

`*page_requests`: the worker's own CPU per `/mmbee/page/` request, measured inside it with
`time.thread_time` (the event-loop part and the top streams' thread; every request recomputes
the top streams, as an open page's do), and `one_viewer_cores` = that / 3 s: the same cost as
the A/B windows without their noise, JSON encoding and HTTP left out.

"Nobody watching": no request, so the only work the page adds is recording samples into its ring
buffers from the two existing timers: `ring_record_us` times that recording in this process
(a 6-agent metrics snapshot and 32 partitions' lag), and `nobody_watching_cores` is that cost
per second of worker time at the worker's timer rates (processed totals every 2 s, lag every
`metrics_lag_interval_s`).

Run: `OMP_NUM_THREADS=1 .venv/bin/python bench/page.py` (about 8 minutes here; needs Debian's
`chromium`). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from mmbee.jobs.demo import COMPONENTS
from mmbee.jobs.probes import Background, log_facts
from mmbee.jobs.stack import LocalStack, WorkerProcess, counters_of
from mmbee.settings import load_settings
from mmbee.streams.broker import process_usage
from mmbee.streams.page.browser import HOW_TO_GET_CHROMIUM, HeadlessPage, find_chromium


def untrained_checkpoint(path: Path) -> Path:
    """A `sim_mfq_gie` checkpoint with the MFQ content encoder at the default widths."""
    import torch

    from mmbee.scorer.features import FeatureConfig
    from mmbee.scorer.gtr import GTRModel, config_for_variant, save_checkpoint

    torch.manual_seed(0)
    model = GTRModel(config_for_variant("sim_mfq_gie", content_encoder="mfq"))
    save_checkpoint(path, model, {"build": {"features": dict(FeatureConfig().__dict__)}})
    return path


def ring_record_us(repeats: int = 20_000) -> tuple[float, float]:
    """Median microseconds of one processed-totals sample (a snapshot of 6 agents' counters
    into the ring) and of one lag sample (32 partitions), as the worker's timers take them."""
    from mmbee.streams.metrics import StreamMetrics
    from mmbee.streams.page.history import SeriesRing

    metrics = StreamMetrics()
    for i, a in enumerate(("segments", "graph", "joiner", "joiner_forward", "authors", "serving")):
        for c in ("processed", "applied", "events", "errors"):
            metrics.count(a, c, 1000 * i)
        metrics.dead_letter(a, "late", i)
    lag = {f"mmbee.live.t{t}:{p}": 100 * p for t in range(4) for p in range(8)}

    def per_call(fn: Any) -> float:
        runs = []
        for r in range(5):
            t0 = time.perf_counter()
            for i in range(repeats):
                fn(2.0 * (r * repeats + i))  # one step apart: every call records a sample
            runs.append((time.perf_counter() - t0) / repeats * 1e6)
        return statistics.median(runs)

    ring_p = SeriesRing(300.0, step_s=2.0)
    ring_l = SeriesRing(300.0, step_s=2.0)

    def processed(now: float) -> None:
        if ring_p.due(now):
            agents = metrics.snapshot()["agents"]
            ring_p.record(now, {a: m["counters"].get("processed", 0) for a, m in agents.items()})

    return per_call(processed), per_call(lambda now: ring_l.record(now, lag))


def cores(worker: WorkerProcess, seconds: float) -> float:
    """The worker's CPU seconds per second over the next `seconds`."""
    a, t0 = process_usage(worker.proc.pid)[0], time.monotonic()
    time.sleep(seconds)
    b, t1 = process_usage(worker.proc.pid)[0], time.monotonic()
    if a is None or b is None:
        raise RuntimeError("the worker exited")
    return (b - a) / (t1 - t0)


def ab_windows(worker: WorkerProcess, pairs: int, window_s: float) -> dict[str, Any]:
    """Alternating windows without and with one open page."""
    url = worker.base_url + "/"
    off: list[float] = []
    on: list[float] = []
    errors: list[str] = []
    for i in range(pairs):
        for with_page in (False, True) if i % 2 == 0 else (True, False):
            if not with_page:
                time.sleep(2.0)  # the previous page's last request is over
                off.append(cores(worker, window_s))
                continue
            with HeadlessPage(url, width=1440, height=1000) as page:
                page.wait_for("Number(document.body.dataset.loaded || 0) >= 1", timeout_s=60)
                on.append(cores(worker, window_s))
                errors += page.errors
    diffs = [b - a for a, b in zip(off, on, strict=True)]
    return {
        "no_page_cores": round(statistics.median(off), 4),
        "one_page_cores": round(statistics.median(on), 4),
        "page_cost_cores": round(statistics.median(diffs), 4),
        "windows_no_page": [round(x, 4) for x in off],
        "windows_one_page": [round(x, 4) for x in on],
        "console_errors": errors,
    }


def page_requests(worker: WorkerProcess, n: int = 10, every_s: float = 3.0) -> dict[str, Any]:
    """`n` requests of `/mmbee/page/` as one open page makes them (one per `every_s`, each one
    recomputing the top streams): the worker's own CPU milliseconds per request (its event-loop
    part and the top streams' thread, from `time.thread_time` in the worker; JSON encoding and
    HTTP not included), the top streams' wall time, and what one viewer costs from those."""
    loop_ms, top_ms, wall_ms, scored = [], [], [], []
    for _ in range(n):
        page = worker.get("/mmbee/page/", timeout_s=30)
        loop_ms.append(page["cpu_ms"])
        top_ms.append(page["top"].get("cpu_ms", 0.0))
        wall_ms.append(page["top"].get("compute_ms", 0.0))
        scored.append(page["top"].get("scored", 0))
        time.sleep(every_s)
    per_request = statistics.median(a + b for a, b in zip(loop_ms, top_ms, strict=True))
    return {
        "live_streams_scored": statistics.median(scored),
        "loop_cpu_ms": statistics.median(loop_ms),
        "top_streams_cpu_ms": statistics.median(top_ms),
        "top_streams_wall_ms": statistics.median(wall_ms),
        "cpu_ms_per_request": round(per_request, 2),
        "one_viewer_cores": round(per_request / (1000 * every_s), 5),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-page"))
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--streamers", type=int, default=60)
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--window-s", type=float, default=24.0)
    ap.add_argument("--background-rate", type=float, default=300.0)
    args = ap.parse_args()
    if find_chromium() is None:
        raise SystemExit(HOW_TO_GET_CHROMIUM)
    import shutil

    from mmbee.simulator.replay import replay_log
    from mmbee.simulator.simulate import simulate

    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    result: dict[str, Any] = {"box": "shared 2-core machine (other jobs running)"}
    rec_p, rec_l = ring_record_us()
    result["ring_record_us"] = {"processed": round(rec_p, 2), "lag_32_partitions": round(rec_l, 2)}
    t = time.monotonic()
    logdir = out / "log"
    simulate(logdir, preset_name="demo", seed=0, days=args.days, n_users=args.users,
             n_streamers=args.streamers, text_embeddings=True)  # fmt: skip
    facts = log_facts(logdir, test_days=0.0)
    ckpt = untrained_checkpoint(out / "model.pt")
    settings = load_settings(
        profile="dev", topic_prefix="mmbee.benchpage.", app_id="mmbee-benchpage",
        partitions=4, log_level="WARNING", commit_interval_s=1.0, serving_threads=1,
        serving_model_path=ckpt, serving_poll_s=0.5,
    )  # fmt: skip
    with LocalStack(out / "stack", settings) as stack:
        stats = replay_log(logdir, stack.settings, speed=None, attach_text_embeddings=True,
                           progress=False)  # fmt: skip
        worker = stack.start_worker(COMPONENTS)
        worker.wait_ready(300)
        content = sum(
            stats.per_topic.get(n, 0) for n in ("live.frames", "live.asr", "live.comments")
        )

        def consumed() -> bool:
            seg = counters_of(worker.agents()).get("segments", {})
            serving = worker.get("/mmbee/serving/")
            if serving["last_failure"]:
                raise SystemExit(f"the worker could not load the model: {serving['last_failure']}")
            return bool(seg.get("processed", 0) >= content and serving["version"])

        worker.wait_until(consumed, "the replay and the model", 600)
        time.sleep(5.0)  # the graph's and joiner's last batches
        result["setup_s"] = round(time.monotonic() - t, 1)
        result["events_replayed"] = stats.events
        page = worker.get("/mmbee/page/", timeout_s=30)
        result["live_streams_scored"] = page["top"].get("scored")
        result["idle"] = ab_windows(worker, args.pairs, args.window_s)
        result["idle_page_requests"] = page_requests(worker, n=5)
        print(json.dumps(result), file=sys.stderr, flush=True)  # progress
        with Background(stack.settings, facts, args.background_rate, facts.content_authors[0],
                        facts.end_ms + 60_000, seed=1) as bg:  # fmt: skip
            time.sleep(5.0)
            result["loaded"] = ab_windows(worker, args.pairs, args.window_s)
            result["page_requests"] = page_requests(worker)
        result["background_events_per_s"] = round(bg.sent / bg.seconds, 1) if bg.seconds else 0.0
    per_s = rec_p / 2.0 + rec_l / settings.metrics_lag_interval_s
    result["nobody_watching_cores"] = round(per_s / 1e6, 8)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
