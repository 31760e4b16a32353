"""Serving benchmark: scoring latency, Kafka round trip, freshness under load, training rate.

Runs the demo's deployment (`mmbee.jobs.demo`: embedded broker, one worker with segments,
graph, joiner and serving, a simulated log replayed into it, a `sim_mfq_gie` model trained and
hot-swapped in); every request carries 200 candidate streamers, sampled from the streamers
with live content (about 90 in the default world) and `--cold` ids the worker has never seen
(scored cold with `serving_reject_unknown_authors` off: a world with 200 live streamers takes
~4x longer to stream on 2 cores). Then it measures

- `score_200_p99_ms`: the worker's own time to answer a 200-candidate request (decode, features,
  cached content embeddings, one batched forward pass on the serving executor, response), as it
  reports in `ScoreResponse.latency_ms` (target <= 10 ms on CPU), while the worker also runs its
  Kafka consumer and timers;
- `score_200_inproc_p99_ms`: `score_request` called in this process on the checkpoint the run
  trained, for one user against 200 candidates with every list full (H behaviours, N nodes in
  each of the five expansions) and cached content embeddings: the model's own cost, no worker;
- `kafka_rtt_p99_ms`: client send on `score.requests` -> response read from `score.responses`
  (target <= 50 ms); `http_rtt_p99_ms` the same over `POST /mmbee/score/`;
- `freshness_p99_ms`: a content event for a streamer -> that streamer's score changed, while
  content events for the streamers outside its partition flow at `--background-rate` events/s,
  their event time moving with the wall clock (`mmbee.jobs.demo.Background` says why) (target
  <= 500 ms at 2k events/s); `background_events_per_s` is the rate the load thread achieved;
  `cpu_cores` gives the CPU seconds per second the embedded broker and the worker used in
  each phase (HTTP requests, Kafka requests, freshness), and `broker_store_mib` the size of the
  broker's store file at the end (noida-db rewrites the whole file after writes, so its CPU
  follows that size: deploy/RUNBOOK.md section 11);
- `train_samples_per_s`: steady-state training rate of the same model on CPU: median time of an
  optimiser step on 512 impressions sampled from the run's training examples (batch assembly
  included, `train_batch_assembly_ms` its part), after 5 warm-up steps;
  `demo_train_samples_per_s` is the demo's own one-epoch figure, which on ~500 subsampled
  impressions mostly times set-up.

The broker is Apache Kafka (`--broker kafka`, the default; `make kafka` installs it) or noida-db
(`--broker noida`); `broker` in the result names it, `broker_rss_mib` is its RSS at the end.

Run: `OMP_NUM_THREADS=1 .venv/bin/python bench/serve.py` (about 10 minutes here). The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from mmbee.jobs.demo import DemoConfig, run_demo


def inproc_scoring(checkpoint: Path, candidates: int, repeats: int = 300) -> dict[str, float]:
    """p50 / p99 ms of `score_request` for one request of `candidates` streamers, every feature
    list full, content embeddings precomputed (serving's cache), torch on one thread."""
    import torch

    from mmbee.schemas.events import ScoreRequest
    from mmbee.scorer.features import AuthorFeatures, Behaviour, UserFeatures
    from mmbee.scorer.predict import load_model, score_request

    torch.set_num_threads(1)
    loaded = load_model(checkpoint)
    f = loaded.features
    rng = np.random.default_rng(0)
    t = 1_746_500_000_000
    authors = [f"bench-a{i}" for i in range(candidates)]

    def exp(prefix: str) -> tuple[tuple[str, float], ...]:
        return tuple((f"{prefix}{rng.integers(10_000)}", float(rng.random()))
                     for _ in range(f.expansion_n))  # fmt: skip

    history = tuple(
        Behaviour(t - 60_000 * (f.history - i), authors[int(rng.integers(candidates))],
                  int(rng.integers(3)))
        for i in range(f.history)
    )  # fmt: skip
    user = UserFeatures("bench-u", history=history, watches=40, gifts=3, gift_value=20.0,
                        expansions=(exp("bench-u"), exp("bench-a"), exp("bench-a")))  # fmt: skip
    sides = [AuthorFeatures(a, "l1", watches=100, gifts=5, expansions=(exp("bench-a"),
                            exp("bench-u")), recent_gifts=(1, 2), recent_watches=(3, 4))
             for a in authors]  # fmt: skip
    req = ScoreRequest(request_id="bench", user_id="bench-u", candidate_author_ids=authors, ts_ms=t)
    content = None
    if loaded.model.content is not None:
        content = torch.from_numpy(
            rng.standard_normal((candidates, loaded.model.content.out_dim)).astype(np.float32)
        )
    times = []
    for i in range(repeats + 20):
        t0 = time.perf_counter()
        resp = score_request(loaded, req, user, sides, None, None, content=content)
        if i >= 20:  # warm-up
            times.append((time.perf_counter() - t0) * 1000.0)
        if resp.error is not None:
            raise RuntimeError(resp.error)
    return {"p50": statistics.median(times), "p99": float(np.percentile(times, 99))}


def training_throughput(out: Path, variant: str, content_encoder: str, batch_size: int = 512,
                        steps: int = 40, warmup: int = 5) -> dict[str, float]:  # fmt: skip
    """Steady-state training rate of the demo's model on CPU: `steps` optimiser steps of
    `batch_size` impressions sampled from the run's cached training examples (batch assembly
    from the example table and segment store, then `train_step` with `mmbee train`'s
    optimiser), after `warmup`
    steps; samples/s = batch size / median step time, with the assembly's share."""
    import torch

    from mmbee.jobs.train import TrainJob, load_or_build, model_config, split_by_time
    from mmbee.scorer.gtr import GTRModel
    from mmbee.scorer.train import TrainConfig, make_optimizer, rows_for, train_step

    torch.set_num_threads(1)
    job = TrainJob(logdir=out / "log", out=out / "model", variant=variant,
                   content_encoder=content_encoder)  # fmt: skip
    built = load_or_build(job.logdir, job.build, out / "model" / "cache", False, lambda m: None)
    train_idx, _ = split_by_time(built, job.test_days)
    torch.manual_seed(0)
    model = GTRModel(model_config(job, built)).train()
    config = TrainConfig(progress=False)
    opt, rows = make_optimizer(model, config), rows_for(model)
    rng = np.random.default_rng(0)
    step_s, assemble_s = [], []
    for i in range(warmup + steps):
        idx = rng.choice(train_idx, batch_size, replace=len(train_idx) < batch_size)
        t0 = time.perf_counter()
        batch = built.table.batch(idx, rows, built.store)
        t1 = time.perf_counter()
        train_step(model, opt, batch, config)
        if i >= warmup:
            step_s.append(time.perf_counter() - t0)
            assemble_s.append(t1 - t0)
    step = statistics.median(step_s)
    return {"samples_per_s": batch_size / step, "step_ms": step * 1000.0,
            "assembly_ms": statistics.median(assemble_s) * 1000.0,
            "batch_size": batch_size, "train_examples": len(train_idx)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-serve"))
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--streamers", type=int, default=120)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--cold", type=int, default=120, help="never-seen ids added to the pool")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--probes", type=int, default=30)
    ap.add_argument("--background-rate", type=float, default=2000.0)
    ap.add_argument("--broker", choices=("kafka", "noida"), default="kafka")
    args = ap.parse_args()
    # the demo's deployment reads its settings (broker_kind included) from MMBEE_* variables
    os.environ["MMBEE_BROKER_KIND"] = args.broker
    report = run_demo(
        DemoConfig(
            out=args.out, n_users=args.users, n_streamers=args.streamers, days=args.days,
            requests=args.requests, candidates=args.candidates, freshness_probes=args.probes,
            background_rate=args.background_rate, cold_candidates=args.cold,
        )
    )  # fmt: skip
    v = report["serving"]
    inproc = inproc_scoring(args.out / "model" / "model.pt", args.candidates)
    training = training_throughput(args.out, report["training"]["variant"], "mfq")
    result = {
        "candidates": v["candidates"],
        "content_streamers": v["content_streamers"],
        "cold_ids_in_pool": v["cold_in_pool"],
        "score_200_p50_ms": round(v["kafka_server_ms"]["p50"], 2),
        "score_200_p99_ms": round(v["kafka_server_ms"]["p99"], 2),
        "score_200_inproc_p50_ms": round(inproc["p50"], 2),
        "score_200_inproc_p99_ms": round(inproc["p99"], 2),
        "kafka_rtt_p50_ms": round(v["kafka_rtt_ms"]["p50"], 2),
        "kafka_rtt_p99_ms": round(v["kafka_rtt_ms"]["p99"], 2),
        "http_rtt_p50_ms": round(v["http_rtt_ms"]["p50"], 2),
        "http_rtt_p99_ms": round(v["http_rtt_ms"]["p99"], 2),
        "freshness_p50_ms": round(v["freshness_ms"]["p50"], 1),
        "freshness_p99_ms": round(v["freshness_ms"]["p99"], 1),
        "freshness_probes": v["freshness_ms"]["n"],
        "freshness_missed": v["freshness_missed"],
        "background_events_per_s": round(v["freshness_background_events_per_s"], 1),
        "cpu_cores": v["cpu_cores"],  # broker / worker, per phase (http, kafka, freshness)
        "broker": args.broker,
        "broker_store_mib": v["broker_store_mib"],
        "broker_rss_mib": v.get("broker_rss_mib"),
        "error_responses": v["error_count"],
        "train_samples_per_s": round(training["samples_per_s"], 1),
        "train_step_ms": round(training["step_ms"], 2),
        "train_batch_assembly_ms": round(training["assembly_ms"], 2),
        "train_batch_size": training["batch_size"],
        "demo_train_samples_per_s": report["training"]["train_samples_per_s"],
        "stream_events_per_s": round(report["stream"]["end_to_end_events_per_s"], 1),
        "device": "cpu",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
