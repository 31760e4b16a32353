"""Serving benchmark: scoring latency, Kafka round trip, freshness under load, training rate.

Runs the demo's deployment (`mmbee.jobs.demo`: embedded broker, one worker with segments,
graph, joiner and serving, a simulated log replayed into it, a `sim_mfq_gie` model trained and
hot-swapped in); every request carries 200 candidate streamers, sampled from the streamers
with live content (about 90 in the default world) and `--cold` ids the worker has never seen
(scored cold with `serving_reject_unknown_authors` off: a world with 200 live streamers takes
~4x longer to stream on 2 cores). Then it measures

- `kafka_server_p99_ms` (per broker): the worker's own time to answer a 200-candidate request (decode, features,
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
  their event time moving with the wall clock (`mmbee.jobs.probes.Background` says why) (target
  <= 500 ms at 2k events/s); `background_events_per_s` is the rate the load thread achieved;
  `cpu_cores` gives the CPU seconds per second the broker, the worker and this process used in
  each phase (HTTP and Kafka requests without and with the page, freshness), and
  `broker_store_mib` the size of the
  broker's store file at the end (noida-db rewrites the whole file after writes, so its CPU
  follows that size: deploy/RUNBOOK.md section 11);
- `train_samples_per_s`: steady-state training rate of the same model on CPU: median time of an
  optimiser step on 512 impressions sampled from the run's training examples (batch assembly
  included, `train_batch_assembly_ms` its part), after 5 warm-up steps;
  `demo_train_samples_per_s` is the demo's own one-epoch figure, which on ~500 subsampled
  impressions mostly times set-up.

The broker is Apache Kafka or noida-db: `--broker kafka,noida` (the default) runs the same
world and the same trained model on each, one after the other (requests and probes drawn
from one seeded generator in turn), and reports
each broker's figures under `brokers` (`broker_cores`, `broker_rss_mib`: the broker's CPU per
phase and RSS at the end; `--broker kafka` alone skips noida-db). The world is simulated and the
model trained once; each broker gets its own replay and worker.

**The live page's cost** (`page_viewer`): on each broker the request phases (HTTP and
Kafka requests) run once with nobody watching the page and once with one open page
(`PageViewer`: the requests a browser tab makes: `/` and its two assets when it opens, then
`/mmbee/page/` every 3 s, page.js's refresh), each time with their own requests. The freshness
probes run once, nobody watching (their load's event ids must not repeat). Then the same
`--background-rate` load runs again, its event time past the probes', while the page opens and
closes in `--page-turns` pairs of `--page-turn-s`-second turns (closed first), the worker's CPU
read at every switch. Reported under `page_viewer`: the worker's cores in closed and open turns
and the median paired difference (`loaded_turns.page_cores_paired_median`), the difference per
request phase (`worker_cores_delta`), the
latencies with the page open (`one_page`), and the worker's own CPU per page request as it
reports it (`cpu_ms` of the event loop plus the top streams' thread, when recomputed), whose
rate at one request per 3 s is `viewer_cores_from_requests`: the same cost without the noise
of the machine, which on a shared 2-core box is larger than 2 % of a core.

Run: `OMP_NUM_THREADS=1 .venv/bin/python bench/serve.py` (about 17 minutes here for both
brokers). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from mmbee.jobs.demo import COMPONENTS, DemoConfig, demo_settings
from mmbee.jobs.probes import (
    Background,
    LogFacts,
    Reading,
    freshness,
    http_round_trips,
    kafka_round_trips,
    log_facts,
    percentiles,
    requests_for,
    served_version,
    wait_consumed,
)
from mmbee.jobs.stack import LocalStack, WorkerProcess
from mmbee.streams.broker import process_usage


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


class PageViewer:
    """One open live page, as a browser tab loads and refreshes it, from a thread: `/` and its
    two assets when the page opens, then `/mmbee/page/` every `every_s` seconds (page.js's
    `REFRESH_MS`). `toggle_s` > 0 opens and closes the page in turns of that length, starting
    closed, and reads the worker's CPU at every switch (`windows`: (open, cores) per turn).

    Args:
        worker: the worker whose page is open.
        every_s: refresh period.
        toggle_s: length of each open / closed turn (0: open the whole time).
    """

    ASSETS = ("/", "/mmbee/page/page.js", "/mmbee/page/page.css")

    def __init__(self, worker: WorkerProcess, every_s: float = 3.0, toggle_s: float = 0.0) -> None:
        self.worker, self.base = worker, worker.base_url
        self.every_s, self.toggle_s = every_s, toggle_s
        self.requests = 0
        self.failures: list[str] = []
        self.worker_cpu_ms: list[float] = []  # the worker's own CPU per /mmbee/page/ request
        self.windows: list[tuple[bool, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.base + path, timeout=30.0) as resp:
                body = bytes(resp.read())
        except OSError as exc:  # an overloaded worker answers late; the page just retries
            self.failures.append(f"{path}: {type(exc).__name__}: {exc}")
            return None
        self.requests += 1
        return body

    def _open(self, until: float) -> None:
        """The page open until monotonic time `until` (or until stopped)."""
        for path in self.ASSETS:
            self._get(path)
        while not self._stop.is_set() and time.monotonic() < until:
            body = self._get("/mmbee/page/")
            if body is not None:
                data = json.loads(body)
                # event-loop part plus the top streams' thread, when they were recomputed
                self.worker_cpu_ms.append(
                    float(data["cpu_ms"]) + float(data["top"].get("cpu_ms", 0.0))
                )
            self._stop.wait(max(0.0, min(self.every_s, until - time.monotonic())))

    def _run(self) -> None:
        if self.toggle_s <= 0:
            self._open(float("inf"))
            return
        pid = self.worker.proc.pid
        is_open = False
        while not self._stop.is_set():
            t0, cpu0 = time.monotonic(), process_usage(pid)[0]
            if is_open:
                self._open(t0 + self.toggle_s)
            else:
                self._stop.wait(self.toggle_s)
            t1, cpu1 = time.monotonic(), process_usage(pid)[0]
            if cpu0 is not None and cpu1 is not None and t1 - t0 >= self.toggle_s * 0.9:
                self.windows.append((is_open, (cpu1 - cpu0) / (t1 - t0)))
            is_open = not is_open

    def figures(self) -> dict[str, Any]:
        """Requests made, failures, the worker's CPU per page request (its own report) and,
        when toggling, the worker's cores in closed and open turns and their paired
        differences (each open turn minus the closed turn before it)."""
        cpu = self.worker_cpu_ms
        out: dict[str, Any] = {
            "requests": self.requests,
            "failures": self.failures[:5],
            "worker_cpu_ms_per_request_p50": round(statistics.median(cpu), 2) if cpu else None,
            "worker_cpu_ms_per_request_mean": round(statistics.fmean(cpu), 2) if cpu else None,
            "viewer_cores_from_requests": (
                round(statistics.fmean(cpu) / (1000 * self.every_s), 5) if cpu else None
            ),
        }
        if self.toggle_s > 0:
            closed = [c for o, c in self.windows if not o]
            opened = [c for o, c in self.windows if o]
            pairs = [
                b[1] - a[1]
                for a, b in zip(self.windows, self.windows[1:], strict=False)
                if not a[0] and b[0]
            ]
            out.update({
                "turn_s": self.toggle_s,
                "worker_cores_closed": [round(c, 3) for c in closed],
                "worker_cores_open": [round(c, 3) for c in opened],
                "worker_cores_closed_median": round(statistics.median(closed), 3) if closed else None,
                "worker_cores_open_median": round(statistics.median(opened), 3) if opened else None,
                "page_cores_paired_median": round(statistics.median(pairs), 3) if pairs else None,
            })  # fmt: skip
        return out

    def __enter__(self) -> PageViewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def _summary(rtt: list[float], server: list[float], prefix: str) -> dict[str, float]:
    p, s = percentiles(rtt), percentiles(server)
    return {
        f"{prefix}_rtt_p50_ms": round(p["p50"], 2),
        f"{prefix}_rtt_p99_ms": round(p["p99"], 2),
        f"{prefix}_server_p50_ms": round(s["p50"], 2),
        f"{prefix}_server_p99_ms": round(s["p99"], 2),
    }


def serve_phases(stack: LocalStack, worker: WorkerProcess, facts: LogFacts,
                 args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:  # fmt: skip
    """The serving phases on a worker serving the trained model: HTTP requests and Kafka
    requests, each once with nobody watching the page and once with one open page (each time
    with their own requests); the freshness probes under background load, nobody watching;
    then the same background load again while one page opens and closes in `--page-turns`
    pairs of `--page-turn-s` turns. Latencies, each process's CPU cores per phase, and the
    page's cost."""
    settings = stack.settings
    ts = facts.end_ms + 1
    out: dict[str, Any] = {"cpu_cores": {}, "seconds": {}, "errors": [], "error_responses": 0}
    page: dict[str, Any] = {}

    def timed(phase: str, fn: Any, *fn_args: Any) -> Any:
        a = Reading.take(stack, worker)
        got = fn(*fn_args)
        b = Reading.take(stack, worker)
        out["cpu_cores"][phase] = a.cores_until(b)
        out["seconds"][phase] = round(b.t - a.t, 1)
        return got

    for viewer in (False, True):
        tag = "one_page" if viewer else "no_page"
        hreqs = requests_for(facts, args.requests, args.candidates, ts, rng, f"h-{tag}", args.cold)
        kreqs = requests_for(facts, args.requests, args.candidates, ts, rng, f"k-{tag}", args.cold)
        viewer_ctx = PageViewer(worker) if viewer else None
        with viewer_ctx if viewer_ctx is not None else contextlib.nullcontext():
            if viewer:
                time.sleep(1.0)  # the page has loaded before the first reading
            h_rtt, h_server, h_err = timed(f"http_{tag}", http_round_trips, worker, hreqs)
            k_rtt, k_server, k_err = timed(
                f"kafka_{tag}", lambda r: asyncio.run(kafka_round_trips(settings, r)), kreqs
            )
        if viewer_ctx is not None:
            page["serving_requests"] = viewer_ctx.figures()
        fig = {**_summary(h_rtt, h_server, "http"), **_summary(k_rtt, k_server, "kafka")}
        if viewer:
            page["one_page"] = fig
        else:
            out.update(fig)
        out["errors"] += sorted(set(h_err + k_err))[:5]
        out["error_responses"] += len(h_err) + len(k_err)
    t0 = time.monotonic()
    fresh, missed, bg_rate = timed(
        "freshness",
        lambda: freshness(settings, worker, facts, args.probes, rng,
                          background_rate=args.background_rate),
    )  # fmt: skip
    # then the same load again, the page opening and closing in turns: its event time starts
    # past every event the probes and their load sent (one step per probe, 1 s per second)
    step = settings.segment_ms + settings.allowed_lateness_ms + 1
    start = (facts.end_ms // settings.segment_ms + 2) * settings.segment_ms
    start += (args.probes + 3) * step + int((time.monotonic() - t0) * 1000) + step
    load = Background(settings, facts, args.background_rate, facts.content_authors[0], start,
                      seed=int(rng.integers(1 << 31)))  # fmt: skip
    with load:
        time.sleep(2.0)  # the load's first segment closes are behind it
        with PageViewer(worker, toggle_s=args.page_turn_s) as turns:
            timed("page_turns", time.sleep, 2 * args.page_turns * args.page_turn_s + 1.0)
    page["loaded_turns"] = {
        **turns.figures(),
        "background_events_per_s": round(load.sent / load.seconds, 1) if load.seconds else 0.0,
    }
    f = percentiles(fresh)
    out.update({
        "freshness_p50_ms": round(f["p50"], 1),
        "freshness_p99_ms": round(f["p99"], 1),
        "freshness_probes": len(fresh),
        "freshness_missed": missed,
        "freshness_ms": [round(x, 1) for x in fresh],
        "background_events_per_s": round(bg_rate, 1),
    })  # fmt: skip
    cores = out["cpu_cores"]

    def delta(phase: str) -> float | None:
        a, b = cores[f"{phase}_no_page"]["worker"], cores[f"{phase}_one_page"]["worker"]
        return None if a is None or b is None else round(b - a, 3)

    page["worker_cores_delta"] = {"http": delta("http"), "kafka": delta("kafka")}
    out["page_viewer"] = page
    return out


def serve_on(kind: str, logdir: Path, facts: LogFacts, checkpoint: Path, args: argparse.Namespace,
             rng: np.random.Generator) -> dict[str, Any]:  # fmt: skip
    """The serving figures on broker `kind`: replay, one worker, the model swapped in, then the
    serving phases with and without one open page (`serve_phases`)."""
    from mmbee.simulator.replay import replay_log
    from mmbee.streams.rollout import announce

    # the demo's deployment reads its settings (broker_kind included) from MMBEE_* variables
    os.environ["MMBEE_BROKER_KIND"] = kind
    config = DemoConfig(out=args.out / kind, cold_candidates=args.cold)
    settings = demo_settings(config)
    result: dict[str, Any] = {"broker": kind}
    with LocalStack(args.out / kind / "stack", settings) as stack:
        settings = stack.settings
        t = time.monotonic()
        stats = replay_log(logdir, settings, speed=None, attach_text_embeddings=True,
                           progress=False)  # fmt: skip
        replay_s = time.monotonic() - t
        worker = stack.start_worker(COMPONENTS)
        worker.wait_ready(config.timeout_s)
        per = stats.per_topic
        expected = {
            "segments": sum(per.get(n, 0) for n in ("live.frames", "live.asr", "live.comments")),
            "graph_gifts": per.get("live.gifts", 0),
            "joiner_forward": per.get("live.comments", 0) + per.get("live.gifts", 0),
            "joiner_read_watch": per.get("live.watch", 0),
            "joiner_settled": per.get("live.watch", 0) + per.get("live.comments", 0)
            + per.get("live.gifts", 0),
        }  # fmt: skip
        consumed_s = wait_consumed(worker, expected, config.timeout_s, [])
        result["stream_events_per_s"] = round(stats.events / (replay_s + consumed_s), 1)
        mv = announce(settings, checkpoint, "bench-1", source="train")
        worker.wait_until(lambda: served_version(worker) == mv.version, "the model swap",
                          config.timeout_s)  # fmt: skip
        result.update(serve_phases(stack, worker, facts, args, rng))
        end = stack.broker.usage()
        result["broker_cores"] = {p: c["broker"] for p, c in result["cpu_cores"].items()}
        result["broker_rss_mib"] = end.rss_mib
        result["broker_store_mib"] = round(end.store_mib, 1)
        result["dead_letters"] = worker.dead_letters()
    return result


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
    ap.add_argument(
        "--page-turn-s",
        type=float,
        default=6.0,
        help="length of each closed / open turn of the page under load",
    )
    ap.add_argument("--page-turns", type=int, default=5, help="pairs of closed / open turns")
    ap.add_argument(
        "--broker",
        default="kafka,noida",
        help="comma-separated: kafka, noida (each in turn, same world and model)",
    )
    args = ap.parse_args()
    brokers = [b.strip() for b in args.broker.split(",") if b.strip()]
    if not brokers or any(b not in ("kafka", "noida") for b in brokers):
        ap.error("--broker takes kafka, noida or both, comma-separated")
    import torch

    from mmbee.jobs.train import TrainJob, run_train
    from mmbee.simulator.simulate import simulate

    config = DemoConfig(out=args.out, n_users=args.users, n_streamers=args.streamers,
                        days=args.days, cold_candidates=args.cold)  # fmt: skip
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    rng = np.random.default_rng(config.seed)
    logdir = args.out / "log"
    simulate(logdir, preset_name=config.preset, seed=config.seed, days=config.days,
             n_users=config.n_users, n_streamers=config.n_streamers, text_embeddings=True)  # fmt: skip
    facts = log_facts(logdir)
    torch.set_num_threads(config.threads)
    trained = run_train(
        TrainJob(logdir=logdir, out=args.out / "model", variant=config.variant,
                 content_encoder=config.content_encoder, train=config.train,
                 threads=config.threads),
        log=lambda m: None,
    )  # fmt: skip
    checkpoint = Path(trained["checkpoint"])
    result: dict[str, Any] = {"brokers": {}}
    for kind in brokers:
        fig = serve_on(kind, logdir, facts, checkpoint, args, rng=rng)
        result["brokers"][kind] = fig
        print(json.dumps({kind: fig}), flush=True)  # progress: each broker as it finishes
    inproc = inproc_scoring(checkpoint, args.candidates)
    training = training_throughput(args.out, trained["variant"], config.content_encoder)
    any_fig = next(iter(result["brokers"].values()))
    result.update({
        "candidates": args.candidates,
        "content_streamers": len(facts.content_authors),
        "cold_ids_in_pool": args.cold,
        "score_200_inproc_p50_ms": round(inproc["p50"], 2),
        "score_200_inproc_p99_ms": round(inproc["p99"], 2),
        "train_samples_per_s": round(training["samples_per_s"], 1),
        "train_step_ms": round(training["step_ms"], 2),
        "train_batch_assembly_ms": round(training["assembly_ms"], 2),
        "train_batch_size": training["batch_size"],
        "demo_train_samples_per_s": trained["train_samples_per_s"],
        "background_events_per_s": any_fig["background_events_per_s"],
        "device": "cpu",
    })  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
