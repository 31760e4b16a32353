"""`mmbee demo` (`make demo`): the whole system on one machine, end to end, with a report.

1. **Simulate** a small world (`demo` preset, sizes below) with real all-MiniLM-L6-v2 text
   embeddings and its ground truth.
2. **Stream**: start the embedded broker and one worker (`segments`, `graph`, `joiner`,
   `serving`), replay the whole log into Kafka as fast as the broker takes it, and wait until
   the worker has consumed everything: rolling segment buffers, the gifting graph and its walk
   caches, and point-in-time training examples joined on `train.examples`.
3. **Train** the GTR model (`sim_mfq_gie` by default) on the first days and evaluate it on the
   last one against the popularity baseline and the simulator's oracles (`mmbee train`'s job on
   the same log; `tests/streams/test_joiner.py` proves its examples equal the worker's).
4. **Serve**: announce the checkpoint on `model.versions`; the worker hot-swaps it. Score
   requests over Kafka (`score.requests` -> `score.responses`) and over HTTP measure the round
   trip and the worker's own latency; **freshness** probes publish new content for a streamer
   and time how long until its score changes.
5. **Report**: `report.md`, `report.png` and `report.json` in the output directory, and
   `page.png`: a screenshot of the worker's live page (`/` on its web port, whose address the
   demo prints as soon as the worker runs; open it in a browser while the demo serves), taken
   in headless Chromium after the serving measurements (so the browser's CPU does not enter
   them); without Chromium the report says how to get it.

Only measured numbers go into the report. Example:
    >>> report = run_demo(DemoConfig(out=Path("runs/demo")))  # doctest: +SKIP
    >>> report["quality"]["test"]["auc"] > report["quality"]["popularity"]["auc"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmbee.jobs.probes import (
    Reading,
    freshness,
    http_round_trips,
    kafka_round_trips,
    landed_examples,
    log_facts,
    percentiles,
    requests_for,
    served_version,
    wait_consumed,
)
from mmbee.jobs.stack import LocalStack, WorkerProcess
from mmbee.jobs.train import TrainJob, run_train
from mmbee.scorer.train import TrainConfig
from mmbee.settings import Settings, load_settings
from mmbee.streams.rollout import announce

__all__ = [
    "COMPONENTS",
    "DemoConfig",
    "demo_settings",
    "markdown_report",
    "page_screenshot",
    "run_demo",
]

COMPONENTS = ("segments", "graph", "joiner", "serving")


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Attributes:
        out: output directory (emptied first); the report is `out/report.md`.
        preset, n_users, n_streamers, days, seed: the simulated world.
        variant, content_encoder: the GTR model trained (Table 2 name).
        train: training settings (1 epoch, negatives subsampled, as `mmbee train`).
        partitions: partitions of every topic.
        requests: score requests over Kafka and again over HTTP.
        candidates: candidate streamers per request (at most the streamers with content).
        freshness_probes: content-change probes.
        background_rate: content events/s for other streamers while the probes run.
        cold_candidates: never-seen streamer ids added to the candidate pool (scored cold:
            `serving_reject_unknown_authors` off), to reach `candidates` in a small world.
        timeout_s: how long each wait may take before the demo gives up.
        threads: torch threads for training.
        keep_broker_data: keep the embedded broker's store (`out/stack/broker`) after the run.
            It holds every record the run produced (the demo's about 5 GiB: noida-db writes
            each record byte as a decimal number), so by default it is deleted once the broker
            has stopped; its log, the worker logs and state stay.
    """

    out: Path = Path("runs/demo")
    preset: str = "demo"
    n_users: int = 600
    n_streamers: int = 80
    days: int = 3
    seed: int = 0
    variant: str = "sim_mfq_gie"
    content_encoder: str = "mfq"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(progress=False))
    partitions: int = 4
    requests: int = 200
    candidates: int = 200
    freshness_probes: int = 20
    background_rate: float = 0.0
    cold_candidates: int = 0
    timeout_s: float = 480.0
    threads: int = 2
    keep_broker_data: bool = False


# --- the log -------------------------------------------------------------------------------


# --- stages ---------------------------------------------------------------------------------


def demo_settings(config: DemoConfig) -> Settings:
    return load_settings(
        profile="dev",
        topic_prefix="mmbee.demo.",
        app_id="mmbee-demo",
        partitions=config.partitions,
        log_level="WARNING",
        commit_interval_s=1.0,
        graph_refresh_interval_s=0.5,
        graph_idle_rebuild_s=1.0,
        serving_poll_s=0.2,
        serving_threads=1,
        model_dir=config.out / "models",
        serving_reject_unknown_authors=config.cold_candidates == 0,
    )


# --- the job --------------------------------------------------------------------------------


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; returns the report (also written as `out/report.{md,json,png}`)."""
    import torch

    from mmbee.simulator.replay import replay_log
    from mmbee.simulator.simulate import simulate

    t_start = time.monotonic()
    out = Path(config.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(config.seed)
    report: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v
                                         for k, v in asdict(config).items()}}  # fmt: skip
    stages: dict[str, float] = {}

    log(f"[1/5] simulating {config.n_users} users x {config.n_streamers} streamers x "
        f"{config.days} days (seed {config.seed})")  # fmt: skip
    t = time.monotonic()
    logdir = out / "log"
    manifest = simulate(logdir, preset_name=config.preset, seed=config.seed, days=config.days,
                        n_users=config.n_users, n_streamers=config.n_streamers,
                        text_embeddings=True)  # fmt: skip
    facts = log_facts(logdir)
    stages["simulate_s"] = time.monotonic() - t
    report["world"] = manifest.get("counts", {})

    settings = demo_settings(config)
    with LocalStack(out / "stack", settings) as stack:
        settings = stack.settings
        log(
            f"[2/5] broker on {settings.bootstrap_servers}; replaying the log, then a worker "
            f"({', '.join(COMPONENTS)})"
        )
        # The log goes in first and the worker reads it as a backlog, as a backfill should
        # (deploy/RUNBOOK.md section 7): replayed at full speed into a running worker, a topic
        # it had read to the end looked quiet while the replay was still filling it, and its
        # later events were dead-lettered as late: up to 7,022 of the joiner's events in a run,
        # and one bench/serve run lost 21% of its examples (2026-12-05).
        t = time.monotonic()
        stats = replay_log(logdir, settings, speed=None, attach_text_embeddings=True,
                           progress=False)  # fmt: skip
        replay_s = time.monotonic() - t

        t = time.monotonic()
        worker = stack.start_worker(COMPONENTS)
        worker.wait_ready(config.timeout_s)
        stages["worker_start_s"] = time.monotonic() - t
        log(f"      the worker's live page: {worker.base_url}/ (until the report is written)")
        content = sum(
            stats.per_topic.get(n, 0) for n in ("live.frames", "live.asr", "live.comments")
        )
        expected = {
            "segments": content,
            "graph_gifts": stats.per_topic.get("live.gifts", 0),
            "joiner_forward": stats.per_topic.get("live.comments", 0)
            + stats.per_topic.get("live.gifts", 0),
            "joiner_read_watch": stats.per_topic.get("live.watch", 0),
            "joiner_settled": stats.per_topic.get("live.watch", 0)
            + stats.per_topic.get("live.comments", 0)
            + stats.per_topic.get("live.gifts", 0),
        }
        log(f"      replayed {stats.events:,} events in {replay_s:.1f} s, then started the "
            "worker; waiting until it has read the backlog")  # fmt: skip
        samples: list[Any] = []
        consumed_s = wait_consumed(worker, expected, config.timeout_s, samples)
        streamed = landed_examples(settings, worker, timeout_s=30.0)
        stages["stream_s"] = replay_s + stages["worker_start_s"] + consumed_s
        report["stream"] = {
            "events": stats.events,
            "per_topic": stats.per_topic,
            "replay_s": replay_s,
            "replay_events_per_s": stats.events / replay_s,
            "consumed_s": consumed_s,
            "end_to_end_events_per_s": stats.events / consumed_s,
            "joined_examples": streamed,
            "dead_letters": worker.dead_letters(),
        }
        report["stream_samples"] = [
            (t, sum(n for k, n in v.items() if k not in ("joiner_examples", "joiner_settled")))
            for t, v in samples
        ]

        log("[3/5] training and evaluating on the time split")
        t = time.monotonic()
        torch.set_num_threads(config.threads)
        trained = run_train(
            TrainJob(logdir=logdir, out=out / "model", variant=config.variant,
                     content_encoder=config.content_encoder, train=config.train,
                     threads=config.threads),
            log=lambda m: log("      " + m),
        )  # fmt: skip
        stages["train_s"] = time.monotonic() - t
        quality = {k: trained[k] for k in ("test", "popularity", "observable_oracle", "oracle")
                   if k in trained}  # fmt: skip
        report["quality"] = quality
        report["training"] = {
            "variant": trained["variant"],
            "examples_offline": int(trained["build"].get("examples", 0)),
            "train_samples_per_s": trained["train_samples_per_s"],
            "train_seconds": trained["train_seconds"],
        }

        log("[4/5] serving: hot swap, requests over Kafka and HTTP, freshness probes")
        t = time.monotonic()
        ckpt = Path(trained["checkpoint"])
        mv = announce(settings, ckpt, "demo-1", source="train",
                      metrics={f"test_{k}": v for k, v in quality["test"].items()})  # fmt: skip
        swap_s = worker.wait_until(
            lambda: served_version(worker) == mv.version, "the model swap", config.timeout_s
        )
        ts = facts.end_ms + 1
        cold = config.cold_candidates
        kreqs = requests_for(facts, config.requests, config.candidates, ts, rng, "kafka", cold)
        hreqs = requests_for(facts, config.requests, config.candidates, ts, rng, "http", cold)
        marks = [Reading.take(stack, worker)]
        h_rtt, h_server, h_err = http_round_trips(worker, hreqs)
        marks.append(Reading.take(stack, worker))
        log(f"      HTTP: {len(h_rtt)} answered, {len(h_err)} errors")
        k_rtt, k_server, k_err = asyncio.run(kafka_round_trips(settings, kreqs))
        marks.append(Reading.take(stack, worker))
        log(f"      Kafka: {len(k_rtt)} answered, {len(k_err)} errors")
        # the page as the log left it (the freshness probes below move one streamer's event
        # time minutes past the log's end, where no other stream is live any more)
        report["page"] = page_screenshot(worker, out / "page.png", config.timeout_s)
        log(f"      live page {worker.base_url}/: "
            + (f"screenshot {out / 'page.png'}" if "path" in report["page"]
               else report["page"]["missing"]))  # fmt: skip
        fresh_start = Reading.take(stack, worker)  # the freshness phase starts after it
        fresh, missed, bg_rate = freshness(settings, worker, facts, config.freshness_probes, rng,
                                           background_rate=config.background_rate)  # fmt: skip
        marks.append(Reading.take(stack, worker))
        end = stack.broker.usage()
        stages["serve_s"] = time.monotonic() - t
        report["serving"] = {
            "model_version": mv.version,
            "swap_s": swap_s,
            "candidates": len(kreqs[0].candidate_author_ids) if kreqs else 0,
            "cold_in_pool": cold,
            "content_streamers": len(facts.content_authors),
            "kafka_rtt_ms": percentiles(k_rtt),
            "kafka_server_ms": percentiles(k_server),
            "http_rtt_ms": percentiles(h_rtt),
            "http_server_ms": percentiles(h_server),
            "errors": sorted(set(k_err + h_err))[:10],
            "error_count": len(k_err) + len(h_err),
            "freshness_ms": percentiles(fresh),
            "freshness_missed": missed,
            "freshness_background_events_per_s": bg_rate,
            # what the cores did in each phase: noida-db rewrites its whole store after writes
            "cpu_cores": {
                phase: a.cores_until(b)
                for phase, a, b in zip(
                    PHASES, [marks[0], marks[1], fresh_start], marks[1:], strict=True
                )
            },
            "broker_store_mib": round(end.store_mib, 1),
            "broker_rss_mib": end.rss_mib,
            "worker_serving": _page(worker, "/mmbee/serving/", config.timeout_s),
            "worker_counters": worker.counters().get("serving", {}),
        }
        report["latency_samples"] = {"kafka_rtt": k_rtt, "http_rtt": h_rtt, "server": k_server + h_server,
                                     "freshness": fresh}  # fmt: skip

    if not config.keep_broker_data:
        freed = stack.broker.discard_store()
        log(f"      deleted the broker's store ({freed:,.0f} MiB; --keep-broker-data keeps it)")
    stages["total_s"] = time.monotonic() - t_start
    report["stages"] = stages
    log("[5/5] writing the report")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    _plot(report, out / "report.png")
    (out / "report.md").write_text(markdown_report(report))
    return report


PHASES = ("http", "kafka", "freshness")
"""The serving phases of the demo, in order, with a CPU reading between each."""


def _page(worker: WorkerProcess, path: str, timeout_s: float) -> dict[str, Any]:
    """A JSON page of a worker that may be busy catching up (after the freshness load its web
    server can take longer than one GET's timeout to answer): retried until `timeout_s`, then
    reported as unavailable instead of ending the demo."""
    deadline, error = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        try:
            return dict(worker.get(path, timeout_s=15.0))
        except (OSError, ValueError) as exc:  # TimeoutError is an OSError
            error = f"{type(exc).__name__}: {exc}"
            time.sleep(1.0)
    return {"unavailable": error or "no answer"}


def page_screenshot(worker: WorkerProcess, path: Path, timeout_s: float) -> dict[str, Any]:
    """A screenshot of the worker's live page in headless Chromium, once the page has drawn its
    data: `{"path", "url", "console_errors"}`, or `{"missing": why, "url"}` (without Chromium:
    how to get it)."""
    from mmbee.streams.page.browser import (
        HOW_TO_GET_CHROMIUM,
        BrowserError,
        HeadlessPage,
        find_chromium,
    )

    url = worker.base_url + "/"
    if find_chromium() is None:
        return {"missing": HOW_TO_GET_CHROMIUM, "url": url}
    try:
        with HeadlessPage(url, width=1440, height=1000, timeout_s=min(60.0, timeout_s)) as page:
            page.wait_for("Number(document.body.dataset.loaded || 0) >= 1", timeout_s=timeout_s)
            page.screenshot(path)
            errors = list(page.errors)
    except (BrowserError, OSError) as exc:  # TimeoutError is an OSError
        return {"missing": f"no screenshot: {type(exc).__name__}: {exc}", "url": url}
    return {"path": path.name, "url": url, "console_errors": errors}


# --- the report ------------------------------------------------------------------------------


def _row(name: str, p: dict[str, float]) -> str:
    return (
        f"| {name} | {p['n']} | {p['p50']:.1f} | {p['p90']:.1f} | {p['p99']:.1f} | {p['max']:.1f} |"
    )


def markdown_report(report: dict[str, Any]) -> str:
    """The report as markdown (every number measured in this run)."""
    c, s, q, v, st = (report[k] for k in ("config", "stream", "quality", "serving", "stages"))
    w = report.get("world", {})
    lines = [
        "# mmbee demo report",
        "",
        f"World: {c['n_users']} users, {c['n_streamers']} streamers, {c['days']} days "
        f"(preset `{c['preset']}`, seed {c['seed']}): {w.get('clicks', '?')} watches, "
        f"{w.get('gifts', '?')} gifts, {w.get('comments', '?')} comments, "
        f"{w.get('frames', '?')} frames, {w.get('speech', '?')} speech segments.",
        f"One worker ({', '.join(COMPONENTS)}) on the embedded broker, {c['partitions']} "
        f"partitions per topic. Total wall time {st['total_s']:.0f} s "
        f"(simulate {st['simulate_s']:.0f}, stream {st['stream_s']:.0f}, train "
        f"{st['train_s']:.0f}, serve {st['serve_s']:.0f}).",
        "",
        "## Stream",
        "",
        "| figure | value |",
        "|---|---|",
        f"| events replayed into Kafka | {s['events']:,} |",
        f"| replay rate (producer) | {s['replay_events_per_s']:,.0f} events/s |",
        f"| worker ready -> the whole log consumed (a backlog) | {s['consumed_s']:.1f} s "
        f"({s['end_to_end_events_per_s']:,.0f} events/s end to end) |",
        f"| training examples joined by the worker (`train.examples`) | {s['joined_examples']:,} |",
        f"| examples of the offline build of the same log | "
        f"{report['training']['examples_offline']:,} |",
        f"| dead letters | {json.dumps(s['dead_letters']) if s['dead_letters'] else 'none'} |",
        "",
        "## Quality on the last day (time split)",
        "",
        f"Model `{report['training']['variant']}` trained on the earlier days "
        f"({report['training']['train_samples_per_s']:,.0f} samples/s on CPU, "
        f"{report['training']['train_seconds']:.0f} s). The oracle scores with the simulator's "
        "true gift probability; the observable oracle with the part of it that the logged "
        "data can reveal (no hidden per-user propensity).",
        "",
        "| scorer | AUC | UAUC | GAUC | Recall@10 | NDCG@10 |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("test", "popularity", "observable_oracle", "oracle"):
        m = q.get(name)
        if m is None:
            continue
        label = report["training"]["variant"] if name == "test" else name
        lines.append(
            f"| {label} | {m['auc']:.4f} | {m['uauc']:.4f} | {m['gauc']:.4f} | "
            f"{m.get('recall@10', float('nan')):.4f} | {m.get('ndcg@10', float('nan')):.4f} |"
        )
    if "test" in q and "popularity" in q:
        margins = {k: q["test"][k] - q["popularity"][k] for k in ("auc", "uauc", "gauc")}
        lines += [
            "",
            "Against popularity: "
            + ", ".join(f"{k.upper()} {v:+.4f}" for k, v in margins.items())
            + (
                " (the model beats it on all three)."
                if all(v > 0 for v in margins.values())
                else " (the model does NOT beat it on every metric)."
            ),
        ]
    lines += [
        "",
        "## Serving",
        "",
        f"Checkpoint announced on `model.versions` as `{v['model_version']}`; the worker "
        f"loaded it and swapped it in {v['swap_s']:.1f} s after the announcement. Requests of "
        f"last-day viewers, {v['candidates']} candidate streamers each, one at a time.",
        "",
        "| latency (ms) | n | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|---|",
        _row("Kafka request -> response (client)", v["kafka_rtt_ms"]),
        _row("worker scoring time (Kafka requests)", v["kafka_server_ms"]),
        _row("HTTP POST /mmbee/score/ (client)", v["http_rtt_ms"]),
        _row("worker scoring time (HTTP requests)", v["http_server_ms"]),
        _row("freshness: content event -> changed score", v["freshness_ms"]),
        "",
        f"Error responses: {v['error_count']}"
        + (f" ({'; '.join(v['errors'])})" if v["errors"] else "")
        + f". Freshness probes that timed out (10 s): {v['freshness_missed']}.",
        "",
        _cores_line(v),
        "",
        "![report](report.png)",
        "",
        "## The live page",
        "",
    ]
    page = report.get("page", {})
    if "path" in page:
        lines += [
            f"The worker's page ({page['url']} while it ran), after the serving measurements:",
            "",
            f"![live page]({page['path']})",
            "",
        ]
    else:
        lines += [f"No screenshot of the worker's page: {page.get('missing', 'not taken')}.", ""]
    return "\n".join(lines)


def _cores_line(v: dict[str, Any]) -> str:
    """Where the CPU went in each serving phase (the broker shares the machine)."""

    def pair(phase: str) -> str:
        cores = (v.get("cpu_cores") or {}).get(phase) or {}
        b, w, c = (
            "n/a" if cores.get(k) is None else f"{cores[k]:.2f}"
            for k in ("broker", "worker", "client")
        )
        return f"{b} / {w} / {c}"

    return (
        "CPU cores used by the embedded broker / the worker / the demo's clients: HTTP requests "
        f"{pair('http')}, Kafka requests {pair('kafka')}, freshness probes "
        f"{pair('freshness')}; the broker's store file was "
        f"{v.get('broker_store_mib', float('nan')):,.0f} MiB at the end (noida-db rewrites all "
        "of it after writes: deploy/RUNBOOK.md section 11)."
    )


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    samples = report.get("stream_samples", [])
    if samples:
        xs, ys = zip(*samples, strict=True)
        axes[0].plot(xs, ys)
    axes[0].set(title="worker: events processed once it was ready", xlabel="s",
                ylabel="events processed (all agents)")  # fmt: skip
    lat = report["latency_samples"]
    for name in ("kafka_rtt", "http_rtt", "server", "freshness"):
        vals = np.sort(np.asarray(lat[name], dtype=float))
        if len(vals):
            axes[1].plot(vals, np.arange(1, len(vals) + 1) / len(vals), label=name)
    axes[1].set(xscale="log", title="latency CDF", xlabel="ms", ylabel="fraction")
    axes[1].legend()
    q = report["quality"]
    names = [n for n in ("test", "popularity", "observable_oracle", "oracle") if n in q]
    x = np.arange(3)
    for i, n in enumerate(names):
        axes[2].bar(x + i * 0.2, [q[n][m] for m in ("auc", "uauc", "gauc")], 0.2, label=n)
    axes[2].set_xticks(x + 0.3, ["AUC", "UAUC", "GAUC"])
    axes[2].set(ylim=(0.5, 1.0), title="last-day quality")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
