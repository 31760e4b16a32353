"""`mmbee status`: a one-screen summary of a running worker, read from its `/mmbee/status/` page.

`format_status` is a pure function of the page's JSON; `show_status` fetches and prints it.

Example:
    $ mmbee status --port 6066          # doctest: +SKIP
    worker mmbee@host:6066  pid 4242  profile dev  up 93.2 s  state running  READY
    ...
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any, TextIO

from mmbee.settings import Settings
from mmbee.streams.web import ROUTES

__all__ = ["StatusError", "status_url", "fetch_status", "format_status", "show_status"]


class StatusError(RuntimeError):
    """The worker could not be reached or did not answer with a status."""


def status_url(settings: Settings, url: str | None = None) -> str:
    """The status page of the worker at `url` (a base URL), or of the local worker on
    `settings.web_port` (127.0.0.1 when it binds every interface)."""
    if url is None:
        host = settings.web_host if settings.web_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        url = f"http://{host}:{settings.web_port}"
    return url.rstrip("/") + ROUTES["status"]


def fetch_status(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET the status JSON at `url`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (http only)
            data = json.load(resp)
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as exc:
        raise StatusError(f"no status from {url}: {exc}") from exc
    if not isinstance(data, dict) or "worker" not in data:
        raise StatusError(f"{url} did not answer with a worker status")
    return data


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def format_status(s: dict[str, Any], width: int = 100) -> str:
    """The status as at most ~30 lines of text.

    Example:
        >>> print(format_status({"worker": {"instance": "w0", "state": "running", "ready": True,
        ...     "ready_reason": "ok"}, "agents": {}, "partitions": {}}).splitlines()[0])
        worker w0  pid -  profile -  up - s  state running  READY
    """
    w = s.get("worker", {})
    lines = [
        f"worker {w.get('instance', '?')}  pid {w.get('pid', '-')}  profile "
        f"{w.get('profile', '-')}  up {_num(w.get('uptime_s'))} s  state {w.get('state', '?')}  "
        + ("READY" if w.get("ready") else f"NOT READY ({w.get('ready_reason', '?')})")
    ]
    if w.get("bootstrap"):
        lines.append(f"kafka {w['bootstrap']}  rebalances seen {w.get('assignments', 0)}")
    p = s.get("partitions", {})
    assigned = p.get("assigned", [])
    by_topic: dict[str, list[str]] = {}
    for tp in assigned:
        topic, _, part = tp.rpartition(":")
        by_topic.setdefault(topic, []).append(part)
    lines.append(
        f"partitions {len(assigned)}  lag total {_num(p.get('lag_total'))}"
        + (f" (sampled {_num(p.get('lag_age_s'))} s ago)" if p.get("lag_age_s") is not None else "")
        + (f"  lag error: {p['lag_error']}" if p.get("lag_error") else "")
    )
    lag = p.get("lag", {})
    for topic, parts in sorted(by_topic.items()):
        cells = [f"{q}:{_num(lag.get(topic, {}).get(q))}" for q in sorted(parts, key=int)]
        lines.append(f"  {topic:<34} " + " ".join(cells))
    agents = s.get("agents", {})
    if agents:
        lines.append(f"{'agent':<16}{'processed':>12}{'events/s':>11}{'errors':>9}  dead letters")
        for name, a in agents.items():
            dlq = ", ".join(f"{k} {v}" for k, v in sorted(a.get("dlq", {}).items())) or "-"
            lines.append(
                f"{name:<16}{_num(a.get('processed')):>12}{_num(a.get('per_s')):>11}"
                f"{_num(a.get('errors')):>9}  {dlq}"
            )
    comp = s.get("components", {})
    seg = {k.removeprefix("segment_buffer_"): v for k, v in comp.items() if k.startswith("segment")}
    if seg:
        lines.append(
            "segments  streams {}  open {}  closed {}  held {}  unpersisted {}".format(
                *(_num(seg.get(k)) for k in ("streams", "open_segments", "closed_segments",
                                              "held_events", "unpersisted_events"))
            )
        )  # fmt: skip
    if "graph_loaded" in comp:
        if comp["graph_loaded"]:
            lines.append(
                "graph     users {}  authors {}  edges {}  gifts {}".format(
                    *(_num(comp.get(k)) for k in ("graph_users", "graph_authors", "graph_edges",
                                                   "graph_gifts"))
                )
            )  # fmt: skip
        else:
            lines.append("graph     not on this worker")
    sc, model = s.get("scoring", {}), s.get("model", {})
    lines.append(
        f"scoring   requests {_num(sc.get('requests'))}  p50 {_num(sc.get('p50_ms'))} ms  "
        f"p99 {_num(sc.get('p99_ms'))} ms  model {model.get('version') or 'none'}"
    )
    logs = s.get("log_records", {})
    if logs:
        worst = sorted(logs.items(), key=lambda kv: -kv[1])[:3]
        lines.append("log       " + "  ".join(f"{k} {v}" for k, v in worst))
    return "\n".join(line[:width] for line in lines)


def show_status(
    settings: Settings, url: str | None = None, *, as_json: bool = False, out: TextIO | None = None
) -> int:
    """Print the status of the worker (`mmbee status`); returns the exit code (0: ready,
    1: running but not ready, 2: unreachable)."""
    out = out or sys.stdout
    target = status_url(settings, url)
    try:
        s = fetch_status(target)
    except StatusError as exc:
        print(f"mmbee status: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(s, indent=2) if as_json else format_status(s), file=out)
    return 0 if s.get("worker", {}).get("ready") else 1
