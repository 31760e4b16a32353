"""`mmbee <verb>`: thin command line. Each verb parses its arguments and calls one library function.

Verbs (see `mmbee <verb> --help`): demo, broker, schemas, topics, worker, status, models, graph,
simulate, replay, train, evaluate, experiment.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmbee.settings import load_settings

__all__ = ["main", "build_parser"]

Handler = Callable[[argparse.Namespace], int]


def _broker(args: argparse.Namespace) -> int:
    import logging

    from mmbee.streams.broker import serve_embedded_broker

    # the broker's own warnings (a store file growing past broker_store_warn_mib) go to stderr
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python's connection chatter

    overrides: dict[str, Any] = {} if args.port is None else {"broker_port": args.port}
    if args.data_dir is not None:
        overrides["broker_data_dir"] = args.data_dir
    if args.kind is not None:
        overrides["broker_kind"] = args.kind
    serve_embedded_broker(
        load_settings(**overrides),
        ready=lambda bootstrap: print(f"broker ready on {bootstrap} (Ctrl-C stops it)", flush=True),
    )
    return 0


def _schemas_export(args: argparse.Namespace) -> int:
    from mmbee.schemas.topics import export_json_schemas

    for path in export_json_schemas(args.directory):
        print(path)
    return 0


def _topics_create(args: argparse.Namespace) -> int:
    from mmbee.streams.deployment import provision

    created = provision(load_settings(profile=args.profile))  # catalogue + changelogs/internal
    print("\n".join(f"created {name}" for name in created) or "all topics already exist")
    return 0


def _topics_check(args: argparse.Namespace) -> int:
    from mmbee.streams.deployment import check_deployment

    drift = check_deployment(load_settings(profile=args.profile))
    print("\n".join(drift) or "no drift: every topic matches the plan")
    return 1 if drift else 0


def _status(args: argparse.Namespace) -> int:
    from mmbee.streams.status import show_status

    overrides = {} if args.port is None else {"web_port": args.port}
    return show_status(load_settings(**overrides), url=args.url, as_json=args.json)


def _models_announce(args: argparse.Namespace) -> int:
    from mmbee.scorer.predict import ModelLoadError
    from mmbee.streams.rollout import announce

    try:
        mv = announce(load_settings(), args.checkpoint, args.version, source=args.source,
                      parent_version=args.parent)  # fmt: skip
    except ModelLoadError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(f"announced {mv.model_name} {mv.version} (sha256 {mv.sha256[:12]}..., {mv.path})")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from mmbee.streams.rollout import history

    settings = load_settings()
    versions = history(settings, None if args.all else settings.serving_model_name)
    if args.json:
        print(json.dumps([mv.model_dump(mode="json") for mv in versions]))
        return 0
    newest = {mv.model_name: mv.version for mv in versions}  # oldest first: the last one wins
    for mv in versions:
        mark = "*" if newest[mv.model_name] == mv.version else " "
        print(f"{mark} {mv.model_name} {mv.version} created_at_ms={mv.created_at_ms} "
              f"source={mv.source} parent={mv.parent_version} {mv.path}")  # fmt: skip
    if not versions:
        print("no model announced")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from mmbee.streams.worker import run_worker

    overrides: dict[str, object] = {}
    if args.components is not None:
        overrides["components"] = tuple(c.strip() for c in args.components.split(",") if c.strip())
    if args.web_port is not None:
        overrides["web_port"] = args.web_port
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    from mmbee.streams.deployment import MissingTopicsError
    from mmbee.streams.topics import CoPartitioningError

    try:
        run_worker(load_settings(**overrides))
    except (CoPartitioningError, MissingTopicsError) as exc:
        print(f"mmbee worker: {exc}", file=sys.stderr)
        return 2
    return 0


def _graph_train(args: argparse.Namespace) -> int:
    from mmbee.jobs.graph import train_graph

    settings = load_settings()
    out = args.out if args.out is not None else settings.graph_dir / "graphcl.pt"
    summary = train_graph(
        args.logdir,
        out,
        graph_config=settings.graph_configs()[0],
        epochs=args.epochs,
        dim=args.dim,
        seed=args.seed,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _graph_export(args: argparse.Namespace) -> int:
    from mmbee.jobs.graph import export_graph

    settings = load_settings()
    out = args.out if args.out is not None else settings.graph_dir / "graph.graphml"
    print(export_graph(args.logdir, out, settings.graph_configs()[0]))
    return 0


def _graph_stats(args: argparse.Namespace) -> int:
    from mmbee.jobs.graph import graph_summary

    print(json.dumps(graph_summary(args.logdir, load_settings().graph_configs()[0]), indent=2))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    if args.report is not None:
        from mmbee.simulator.calibration import calibration_report, format_report

        report = calibration_report(args.report)
        print(report.to_json() if args.json else format_report(report))
        return 0
    if args.outdir is None:
        print("mmbee simulate: give OUTDIR, or --report LOGDIR", file=sys.stderr)
        return 2
    from mmbee.simulator.simulate import simulate

    manifest = simulate(
        args.outdir,
        preset_name=args.preset,
        seed=args.seed,
        days=args.days,
        media=args.media,
        text_embeddings=args.text_embeddings,
    )
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"wrote {args.outdir} (log id {manifest['log_id']}): {counts}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from mmbee.simulator.replay import parse_speed, replay_log
    from mmbee.streams.topics import ensure_topics

    stats = replay_log(
        args.logdir,
        load_settings(),
        speed=parse_speed(args.speed),
        start_ms=args.from_ts,
        end_ms=args.until_ts,
        frames=args.frames,
        speech=args.speech,
        attach_text_embeddings=args.text_embeddings,
        progress=not args.no_progress,
        prepare_topics=ensure_topics,
    )
    print(
        f"replayed {stats.events} events in {stats.seconds:.1f} s ({stats.per_s:,.0f}/s); "
        f"event time {stats.first_ts_ms} .. {stats.last_ts_ms} (resume with --from-ts)"
    )
    return 0


def _train_config(args: argparse.Namespace) -> Any:
    from mmbee.scorer.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        max_seconds=args.max_seconds,
        negative_rate=args.negative_rate,
        wide_init_steps=args.wide_init_steps,
        stage2_epochs=args.stage2_epochs,
        stage2_lr=args.stage2_lr,
        val_days=args.val_days,
        progress=not args.no_progress,
    )


def _train(args: argparse.Namespace) -> int:
    from mmbee.jobs.evaluate import format_report
    from mmbee.jobs.train import TrainJob, run_train

    report = run_train(
        TrainJob(
            logdir=args.logdir,
            out=args.out,
            variant=args.variant,
            content_encoder=args.encoder,
            train=_train_config(args),
            test_days=args.test_days,
            threads=args.threads,
        )
    )
    print(format_report(report))
    print(f"checkpoint {report['checkpoint']}; {report['train_samples_per_s']:.0f} samples/s")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mmbee.jobs.evaluate import EvaluateJob, format_report, run_evaluate

    report = run_evaluate(
        EvaluateJob(
            args.checkpoint,
            args.logdir,
            test_days=args.test_days,
            threads=args.threads,
            progress=not args.json,
        ),
        log=(lambda _msg: None) if args.json else print,
    )
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _experiment_ablation(args: argparse.Namespace) -> int:
    from mmbee.jobs.ablation import AblationJob, run_ablation, summary_json

    quiet = args.json
    job = AblationJob(
        out=args.out,
        logdir=args.logdir,
        preset=args.preset,
        n_users=args.users,
        n_streamers=args.streamers,
        days=args.days,
        sim_seed=args.sim_seed,
        variants=tuple(args.variants.split(",")),
        content_encoder=args.encoder,
        train=_train_config(
            argparse.Namespace(**{**vars(args), "no_progress": args.no_progress or quiet})
        ),
        seeds=args.seeds,
        test_days=args.test_days,
        threads=args.threads,
        diagnostics=not args.no_diagnostics,
    )
    report = run_ablation(job, log=(lambda msg: print(msg, file=sys.stderr)) if quiet else print)
    if quiet:
        print(json.dumps(summary_json(report)))
    return 0


def _experiment_vbf(args: argparse.Namespace) -> int:
    from mmbee.jobs.vbf_eval import VBFEvalJob, run_vbf_eval, summary_json
    from mmbee.scorer.train import TrainConfig

    quiet = args.json
    job = VBFEvalJob(
        out=args.out,
        logdir=args.logdir,
        preset=args.preset,
        n_users=args.users,
        n_streamers=args.streamers,
        days=args.days,
        sim_seed=args.sim_seed,
        variants=tuple(args.variants.split(",")) if args.variants else VBFEvalJob.variants,
        train=TrainConfig(seed=args.seed, device=args.device, progress=False),
        elbo_weight=args.elbo_weight,
        seeds=args.seeds,
        holdout=tuple(c for c in args.holdout.split(",") if c),
        test_days=args.test_days,
        threads=args.threads,
        progress=not (args.no_progress or quiet),
    )
    report = run_vbf_eval(job, log=(lambda msg: print(msg, file=sys.stderr)) if quiet else print)
    if quiet:
        print(json.dumps(summary_json(report)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mmbee.jobs.demo import DemoConfig, run_demo

    config = DemoConfig(
        out=args.out, n_users=args.users, n_streamers=args.streamers, days=args.days,
        seed=args.seed, variant=args.variant, requests=args.requests,
        candidates=args.candidates, keep_broker_data=args.keep_broker_data,
    )  # fmt: skip
    run_demo(config)
    print(f"report: {(config.out / 'report.md').resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb registered."""
    parser = argparse.ArgumentParser(prog="mmbee", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser(
        "demo", help="end to end on the embedded broker: simulate, stream, train, serve, report"
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output dir (emptied)")
    p.add_argument("--users", type=int, default=600)
    p.add_argument("--streamers", type=int, default=80)
    p.add_argument("--days", type=int, default=3, help="the last day is the test day")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default="sim_mfq_gie", help="Table 2 variant to train")
    p.add_argument("--requests", type=int, default=200, help="score requests per transport")
    p.add_argument("--candidates", type=int, default=200, help="candidate streamers per request")
    p.add_argument(
        "--keep-broker-data", action="store_true",
        help="keep the embedded broker's store (OUT/stack/broker, GBs) after the run",
    )  # fmt: skip
    p.set_defaults(handler=_demo)

    p = verbs.add_parser(
        "broker", help="run a single-node broker on 127.0.0.1: Apache Kafka or noida-db (dev)"
    )
    p.add_argument(
        "--kind", choices=("kafka", "noida"), default=None,
        help="'kafka': Apache Kafka from `make kafka` (Java 17+); 'noida': noida-db, no Java "
        "(default: settings, MMBEE_BROKER_KIND; workers need the same MMBEE_BROKER_KIND)",
    )  # fmt: skip
    p.add_argument("--port", type=int, default=None, help="Kafka port (default: settings)")
    p.add_argument("--data-dir", type=Path, default=None, help="broker data directory")
    p.set_defaults(handler=_broker)

    p = verbs.add_parser("schemas", help="the topic contract")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    e = sub.add_parser("export", help="write one JSON Schema per topic into DIR")
    e.add_argument("directory", type=Path, metavar="DIR")
    e.set_defaults(handler=_schemas_export)

    p = verbs.add_parser("topics", help="provision the Kafka topics, or report drift")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, handler, text in (
        ("create", _topics_create, "create every topic that is missing (idempotent)"),
        ("check", _topics_check, "report drift from the plan; exit 1 when there is any"),
    ):
        a = sub.add_parser(action, help=text)
        a.add_argument("--profile", choices=["dev", "production"], default=None)
        a.set_defaults(handler=handler)

    p = verbs.add_parser("worker", help="run a Faust stream worker (agents per settings)")
    p.add_argument(
        "--components", default=None, help="comma-separated stream components (default: all)"
    )
    p.add_argument("--web-port", type=int, default=None, help="web/metrics port on 127.0.0.1")
    p.add_argument("--data-dir", type=Path, default=None, help="table state directory")
    p.set_defaults(handler=_worker)

    p = verbs.add_parser("status", help="one-screen summary of a running worker (over HTTP)")
    p.add_argument(
        "--port", type=int, default=None, help="the worker's web port (default: settings)"
    )
    p.add_argument("--url", default=None, help="base URL instead (e.g. a port-forward)")
    p.add_argument("--json", action="store_true", help="print the raw status JSON")
    p.set_defaults(handler=_status)

    p = verbs.add_parser("models", help="model rollout: announce a checkpoint, list versions")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = sub.add_parser("announce", help="publish CHECKPOINT on model.versions (workers swap)")
    a.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    a.add_argument("--version", default=None, help="version id (default: sha-<sha256 prefix>)")
    a.add_argument("--source", choices=["manual", "train"], default="manual")
    a.add_argument("--parent", default=None, help="the version this one replaces (a note)")
    a.set_defaults(handler=_models_announce)
    a = sub.add_parser("list", help="announcements on model.versions, oldest first (* = served)")
    a.add_argument("--all", action="store_true", help="every model name, not only the served")
    a.add_argument("--json", action="store_true", help="one JSON array")
    a.set_defaults(handler=_models_list)

    p = verbs.add_parser("graph", help="gift graph: GraphCL training, GraphML export, stats")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    g = sub.add_parser("train", help="train GraphCL node embeddings on LOGDIR's gifts")
    g.add_argument("logdir", type=Path, metavar="LOGDIR")
    g.add_argument("--out", type=Path, default=None, help="checkpoint (default: graph_dir)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--dim", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.set_defaults(handler=_graph_train)
    g = sub.add_parser("export", help="write LOGDIR's U2A/A2A graph as GraphML")
    g.add_argument("logdir", type=Path, metavar="LOGDIR")
    g.add_argument("--out", type=Path, default=None, help="GraphML file (default: graph_dir)")
    g.set_defaults(handler=_graph_export)
    g = sub.add_parser("stats", help="print sizes, degrees and components of LOGDIR's graph")
    g.add_argument("logdir", type=Path, metavar="LOGDIR")
    g.set_defaults(handler=_graph_stats)

    p = verbs.add_parser("simulate", help="write a simulated world's log, or report calibration")
    p.add_argument("outdir", type=Path, nargs="?", metavar="OUTDIR", help="log directory to write")
    p.add_argument("--preset", default="default", help="tiny | demo | default (default: default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--days", type=int, default=None, help="simulated days (default: preset's)")
    p.add_argument("--media", action="store_true", help="also JPEG frames and espeak-ng speech")
    p.add_argument(
        "--text-embeddings", action="store_true", help="also cache all-MiniLM-L6-v2 text embeddings"
    )
    p.add_argument("--report", type=Path, default=None, metavar="LOGDIR", help="calibration report")
    p.add_argument("--json", action="store_true", help="with --report: one JSON object")
    p.set_defaults(handler=_simulate)

    p = verbs.add_parser("replay", help="publish a log directory to Kafka in event-time order")
    p.add_argument("logdir", type=Path, metavar="LOGDIR")
    p.add_argument("--speed", default="max", help="1 (real time), 10, ... or max (default)")
    p.add_argument("--from-ts", type=int, default=None, metavar="MS", help="resume at event time")
    p.add_argument(
        "--until-ts", type=int, default=None, metavar="MS", help="stop before this event time"
    )
    p.add_argument("--frames", choices=["auto", "embedding", "jpeg"], default="auto")
    p.add_argument("--speech", choices=["auto", "text", "audio"], default="auto")
    p.add_argument(
        "--text-embeddings", action="store_true", help="attach cached text embeddings to events"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_replay)

    def training_args(p: argparse.ArgumentParser) -> None:
        from mmbee.scorer.train import TrainConfig

        p.add_argument(
            "--encoder", default="mfq", help="content encoder behind '_mfq' (mfq, cva+text, vbf++)"
        )
        p.add_argument("--epochs", type=int, default=1)
        p.add_argument("--batch-size", type=int, default=512)
        p.add_argument("--lr", type=float, default=2e-3)
        p.add_argument(
            "--negative-rate", type=float, default=0.25, help="share of negatives kept per epoch"
        )
        p.add_argument("--seed", type=int, default=0, help="training seed")
        p.add_argument(
            "--wide-init-steps",
            type=int,
            default=TrainConfig.wide_init_steps,
            help="L-BFGS steps of the wide term's logistic-regression warm start (0: none)",
        )
        p.add_argument(
            "--stage2-epochs",
            type=int,
            default=TrainConfig.stage2_epochs,
            help="epochs of the second stage (id tables frozen, early-stopped; 0: none)",
        )
        p.add_argument("--stage2-lr", type=float, default=TrainConfig.stage2_lr)
        p.add_argument(
            "--val-days",
            type=float,
            default=TrainConfig.val_days,
            help="last days of the training period held out for early stopping (0: none)",
        )
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
        p.add_argument("--max-seconds", type=float, default=None, help="training time budget")
        p.add_argument("--test-days", type=float, default=1.0, help="days held out at the end")
        p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    from mmbee.scorer.gtr import VARIANTS

    p = verbs.add_parser("train", help="train a GTR model on LOGDIR (time split: test = last days)")
    p.add_argument("logdir", type=Path, metavar="LOGDIR")
    p.add_argument("--variant", default="sim_mfq_gie", choices=VARIANTS)
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="output directory")
    training_args(p)
    p.set_defaults(handler=_train)

    p = verbs.add_parser("evaluate", help="AUC/UAUC/GAUC/top-K of a checkpoint, popularity, oracle")
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    p.add_argument("logdir", type=Path, nargs="?", metavar="LOGDIR", help="default: training log")
    p.add_argument("--test-days", type=float, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(handler=_evaluate)

    p = verbs.add_parser("experiment", help="experiments: the Table 2 ablation grid")
    sub = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    a = sub.add_parser("ablation", help="train sim/mmoe x (+MFQ, +GIE) on a simulated log")
    a.add_argument("--logdir", type=Path, default=None, help="existing log (default: simulate)")
    a.add_argument("--out", type=Path, default=Path("runs/ablation"))
    a.add_argument("--preset", default="demo")
    a.add_argument("--users", type=int, default=8000)
    a.add_argument("--streamers", type=int, default=200)
    a.add_argument("--days", type=int, default=4)
    a.add_argument("--sim-seed", type=int, default=0)
    a.add_argument("--variants", default=",".join(VARIANTS))
    a.add_argument("--seeds", type=int, default=3, help="training seeds averaged per variant")
    a.add_argument("--json", action="store_true", help="print one JSON object (progress to stderr)")
    a.add_argument(
        "--no-diagnostics",
        action="store_true",
        help="skip the truth-ceiling variants and the linear probes",
    )
    training_args(a)
    a.set_defaults(handler=_experiment_ablation)

    # literal defaults (= VBFEvalJob's, tested): mmbee.jobs.vbf_eval loads only when run
    a = sub.add_parser(
        "vbf", help="VBF++ vs MFQ / fixed fusion, Table 3 ablations, Fig. 4, adaptation"
    )
    a.add_argument("--logdir", type=Path, default=None, help="existing log (default: simulate)")
    a.add_argument("--out", type=Path, default=Path("runs/vbf"))
    a.add_argument("--preset", default="demo")
    a.add_argument("--users", type=int, default=3000)
    a.add_argument("--streamers", type=int, default=150)
    a.add_argument("--days", type=int, default=4)
    a.add_argument("--sim-seed", type=int, default=0)
    a.add_argument("--variants", default=None, help="comma-separated rows (default: all)")
    a.add_argument("--seeds", type=int, default=3, help="training seeds per row")
    a.add_argument("--seed", type=int, default=0, help="first training seed")
    a.add_argument("--holdout", default="music,shopping", help="held-out categories ('' = none)")
    a.add_argument("--elbo-weight", type=float, default=1.0)
    a.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    a.add_argument("--test-days", type=float, default=1.0)
    a.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    a.add_argument("--json", action="store_true", help="print one JSON object (progress to stderr)")
    a.set_defaults(handler=_experiment_vbf)

    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `mmbee` and `python -m mmbee`."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    sys.exit(handler(args))
