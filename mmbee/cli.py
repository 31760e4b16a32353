"""`mmbee <verb>`: thin command line. Each verb parses its arguments and calls one library function.

Verbs (see `mmbee <verb> --help`): broker, schemas.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mmbee.settings import load_settings

__all__ = ["main", "build_parser"]

Handler = Callable[[argparse.Namespace], int]


def _broker(args: argparse.Namespace) -> int:
    from mmbee.streams.broker import serve_embedded_broker

    overrides = {} if args.port is None else {"broker_port": args.port}
    if args.data_dir is not None:
        overrides["broker_data_dir"] = args.data_dir
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
    from mmbee.streams.topics import ensure_topics

    created = ensure_topics(load_settings(profile=args.profile))
    print("\n".join(f"created {name}" for name in created) or "all topics already exist")
    return 0


def _topics_check(args: argparse.Namespace) -> int:
    from mmbee.streams.topics import check_topics

    drift = check_topics(load_settings(profile=args.profile))
    print("\n".join(drift) or "no drift: every topic matches the plan")
    return 1 if drift else 0


def _worker(args: argparse.Namespace) -> int:
    from mmbee.streams.worker import run_worker

    overrides: dict[str, object] = {}
    if args.components is not None:
        overrides["components"] = tuple(c.strip() for c in args.components.split(",") if c.strip())
    if args.web_port is not None:
        overrides["web_port"] = args.web_port
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    run_worker(load_settings(**overrides))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb registered."""
    parser = argparse.ArgumentParser(prog="mmbee", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("broker", help="run the embedded Kafka-protocol broker (dev profile)")
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

    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `mmbee` and `python -m mmbee`."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    sys.exit(handler(args))
