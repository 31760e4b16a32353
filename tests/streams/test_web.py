"""Operational endpoints: the Prometheus exposition, rates, latency histogram, JSON logs, health,
`mmbee status` (pure), and a real worker on the real broker serving the named series."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest
from streamkit import CTX, REPO, WorkerProcess, comment, frame, settings_env
from test_worker import produce

from mmbee.settings import Settings
from mmbee.streams.metrics import StreamMetrics
from mmbee.streams.observability import (
    Histogram,
    JsonLogFormatter,
    Observability,
    PartitionLag,
    RateTracker,
    render_prometheus,
)
from mmbee.streams.status import format_status
from mmbee.streams.topics import ensure_topics
from mmbee.streams.web import PROMETHEUS_CONTENT_TYPE, ROUTES, WorkerHealth

SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$'
)


def parse_exposition(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Strict-enough parser of the text format: every line is HELP, TYPE or a sample; each
    family's HELP and TYPE come once, before its samples."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in typed, f"TYPE twice for {name}"
            typed[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
        assert family in typed, f"{name} before its TYPE"
        pairs = tuple(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
        out.setdefault(name, {})[pairs] = float(value)
    return out


# --- pure ------------------------------------------------------------------------------------


def test_histogram_is_cumulative_and_interpolates() -> None:
    h = Histogram((0.01, 0.1, 1.0))
    for v in (0.005, 0.02, 0.05, 0.5, 7.0, float("nan")):
        h.observe(v)
    h.observe(0.05, n=4)
    assert h.count == 9 and h.cumulative() == [1, 7, 8, 9]
    assert h.sum == pytest.approx(0.005 + 0.02 + 0.05 * 5 + 0.5 + 7.0)
    assert h.quantile(0.5) == pytest.approx(0.01 + 0.09 * (4.5 - 1) / 6)
    assert h.quantile(1.0) == 1.0  # the +Inf bucket reports the last finite bound
    assert Histogram().quantile(0.5) is None
    lines = list(h.samples("x", {"a": "b"}))
    assert lines[0] == ("x_bucket", {"a": "b", "le": "0.01"}, 1.0)
    assert lines[3] == ("x_bucket", {"a": "b", "le": "+Inf"}, 9.0)
    assert lines[-1] == ("x_count", {"a": "b"}, 9.0)


def test_exposition_groups_families_and_escapes_labels() -> None:
    obs = Observability(clock=lambda: 10.0)
    obs.observe_scoring_latency(0.003)
    obs.set_model_version('gtr "v2"\nhot')
    metrics = StreamMetrics(clock=lambda: 0.0)
    metrics.count("segments", "processed", 5)
    metrics.count("graph", "processed", 2)
    metrics.dead_letter("segments", "late", 2)
    text = render_prometheus(obs.samples(metrics))
    parsed = parse_exposition(text)
    assert parsed["mmbee_agent_errors_total"] == {
        (("agent", "graph"),): 0.0,
        (("agent", "segments"),): 2.0,
    }
    assert parsed["mmbee_dead_letters_total"] == {(("agent", "segments"), ("reason", "late")): 2.0}
    assert parsed["mmbee_agent_processed_total"][(("agent", "segments"),)] == 5.0
    assert parsed["mmbee_scoring_latency_seconds_count"][()] == 1.0
    assert parsed["mmbee_scoring_latency_seconds_bucket"][(("le", "0.005"),)] == 1.0
    assert parsed["mmbee_model_version_info"] == {(("version", 'gtr \\"v2\\"\\nhot'),): 1.0}
    assert text.count("# TYPE mmbee_agent_processed_total counter") == 1
    assert "# TYPE mmbee_scoring_latency_seconds histogram" in text
    with pytest.raises(ValueError):
        render_prometheus([("bad name", {}, 1.0)])


def test_rates_over_a_window_and_lag() -> None:
    now = [0.0]
    obs = Observability(clock=lambda: now[0], rate_window_s=10.0)
    metrics = StreamMetrics(clock=lambda: now[0])
    for t, n in ((0.0, 0), (5.0, 1000), (10.0, 3000), (15.0, 4000)):
        now[0] = t
        metrics.agent("segments").counters["processed"] = n
        obs.sample_rates(metrics)
    assert obs.rates.rates() == {"segments": pytest.approx(300.0)}  # (4000 - 1000) / 10 s
    now[0] = 17.0
    metrics.agent("segments").counters["processed"] = 4600
    assert obs.agent_rates(metrics) == {"segments": pytest.approx(300.0)}  # (4600 - 1000) / 12 s
    r = RateTracker(window_s=60.0)
    r.sample(0.0, {"a": 50.0})
    r.sample(2.0, {"a": 10.0})  # the counter restarted
    assert r.rates() == {"a": 5.0}
    obs.set_lag(
        [
            PartitionLag("t", 1, 90, 100),
            PartitionLag("t", 0, None, 7),
            PartitionLag("t", 2, 5, None),
        ]
    )
    assert [x.lag for x in obs.lag] == [7, 10, None] and obs.lag_total() == 17
    obs.set_lag([], error="ConsumerNotStarted: rebalancing")
    assert obs.lag_total() == 17 and obs.lag_error  # a failed sample keeps the last figures


def test_json_log_lines_carry_the_event_id() -> None:
    fmt = JsonLogFormatter()
    log = logging.getLogger("mmbee.streams.dlq")
    record = log.makeRecord(
        log.name, logging.WARNING, __file__, 1,
        "dead_letter agent=%s reason=%s event_id=%s topic=%s partition=%s offset=%s detail=%r",
        ("segments", "late", "ev-42", "mmbee.live.frames", 3, 17, "too late"), None,
    )  # fmt: skip
    out = json.loads(fmt.format(record))
    assert out["event"] == "dead_letter" and out["event_id"] == "ev-42"
    assert (out["agent"], out["reason"], out["partition"], out["offset"]) == (
        "segments",
        "late",
        3,
        17,
    )
    assert out["detail"] == "too late" and out["level"] == "WARNING"
    assert out["msg"].startswith("dead_letter agent=segments reason=late event_id=ev-42")
    extra = log.makeRecord(log.name, logging.INFO, __file__, 1, "applied %d", (3,), None,
                           extra={"event_id": "e7"})  # fmt: skip
    assert json.loads(fmt.format(extra))["event_id"] == "e7"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        err = log.makeRecord(log.name, logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "RuntimeError: boom" in json.loads(fmt.format(err))["exc"]


def test_readiness_follows_assignment_rebalance_and_recovery() -> None:
    h = WorkerHealth()
    assert h.liveness("running") == (True, "ok") and h.liveness("crashed")[0] is False
    args = dict(state="running", rebalancing=False, in_recovery=False)
    assert h.readiness(**args)[0] is False
    h.assigned_once = True
    assert h.readiness(**args) == (True, "ok")
    assert h.readiness(**{**args, "rebalancing": True}) == (False, "rebalancing")
    assert h.readiness(**{**args, "state": "init"}) == (False, "app init")
    assert h.readiness(**{**args, "state": "stopping"}) == (False, "app stopping")


def test_status_fits_one_screen() -> None:
    parts = [f"mmbee.live.{t}:{p}" for t in ("frames", "comments", "asr") for p in range(8)]
    status = {
        "worker": {"instance": "mmbee@w0:6066", "pid": 7, "profile": "production", "uptime_s": 93.2,
                   "state": "running", "ready": False, "ready_reason": "rebalancing",
                   "bootstrap": "k1:9092", "assignments": 3},
        "partitions": {"assigned": parts, "lag": {"mmbee.live.frames": {"3": 120}}, "lag_total": 120,
                       "lag_age_s": 1.5, "lag_error": None},
        "agents": {"segments": {"processed": 123456, "per_s": 2345.6, "errors": 3,
                                "dlq": {"late": 2, "decode_error": 1}}},
        "components": {"segment_buffer_streams": 40, "segment_buffer_open_segments": 41,
                       "segment_buffer_closed_segments": 400, "segment_buffer_held_events": 0,
                       "segment_buffer_unpersisted_events": 12, "graph_loaded": 0.0},
        "scoring": {"requests": 10, "p50_ms": 3.2, "p99_ms": 9.9},
        "model": {"version": "gtr-7"},
        "log_records": {"warning:mmbee.streams.dlq": 3},
    }  # fmt: skip
    text = format_status(status)
    lines = text.splitlines()
    assert len(lines) <= 30 and max(map(len, lines)) <= 100
    assert "NOT READY (rebalancing)" in lines[0]
    assert "partitions 24  lag total 120" in text
    assert "3:120" in text and "decode_error 1, late 2" in text
    assert "123,456" in text and "2,345.6" in text
    assert "streams 40" in text and "unpersisted 12" in text
    assert "graph     not on this worker" in text and "model gtr-7" in text


def test_status_of_an_unreachable_worker(capsys: pytest.CaptureFixture[str]) -> None:
    from mmbee.streams.broker import free_port
    from mmbee.streams.status import show_status, status_url

    port = free_port()  # nothing listens there
    assert status_url(Settings(web_port=port)) == f"http://127.0.0.1:{port}/mmbee/status/"
    assert status_url(Settings(web_host="0.0.0.0", web_port=port)).startswith("http://127.0.0.1:")
    assert show_status(Settings(web_port=port)) == 2
    assert "no status from" in capsys.readouterr().err


# --- a real worker -----------------------------------------------------------------------------


def fetch(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


@pytest.mark.broker
def test_worker_serves_metrics_health_status_and_json_logs(broker_settings: Settings) -> None:
    settings = broker_settings.model_copy(
        update=dict(
            components=("segments",), segment_ms=1_000, allowed_lateness_ms=0,
            frame_dim=CTX["frame_dim"], text_dim=CTX["text_dim"], stream_batch_wait_ms=10,
            # the lag sample's ListOffsets waits behind Faust's long-poll fetch (1.5 s) on Apache
            # Kafka: its timeout, max(interval, 1 s), must be longer than that
            log_level="WARNING", log_format="json", metrics_lag_interval_s=3.0,
            segment_align_wait_ms=500,
        )
    )  # fmt: skip
    ensure_topics(settings)
    worker = WorkerProcess(settings, settings.data_dir.parent / "worker.log")
    try:
        port = settings.web_port
        # one open segment (5 frames of a1, nothing after it: not persisted, not committed),
        # and two bad comments
        frames = [frame(f"f{i}", i * 100, author="a1", seed=i) for i in range(5)]
        ok = json.loads(comment("cx", 700).model_dump_json())
        produce(settings, frames, [
            ("live.comments", b"a1", json.dumps({**ok, "ts_ms": "yesterday"}).encode()),
            ("live.comments", b"a1", b"\xff not json"),
        ])  # fmt: skip

        def metrics() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
            status, ctype, body = fetch(port, ROUTES["metrics"])
            assert status == 200 and ctype.startswith(PROMETHEUS_CONTENT_TYPE), ctype
            return parse_exposition(body)

        frames_topic = settings.topic("live.frames")
        deadline = time.monotonic() + 60
        while True:
            assert worker.proc.poll() is None, worker.tail()
            try:
                m = metrics()
            except OSError:
                m = {}
            lag = {dict(k)["partition"]: v for k, v in m.get("mmbee_consumer_lag", {}).items()
                   if dict(k)["topic"] == frames_topic}  # fmt: skip
            done = m.get("mmbee_agent_processed_total", {}).get((("agent", "segments"),), 0) >= 7
            held = m.get("mmbee_segment_buffer_held_events", {}).get((), 1)
            if done and held == 0 and sorted(lag.values()) == [0.0, 0.0, 0.0, 5.0]:
                break
            assert time.monotonic() < deadline, f"{m}\n{worker.tail()}"
            time.sleep(0.3)

        seg = (("agent", "segments"),)
        assert m["mmbee_agent_errors_total"][seg] == 2
        assert (
            m["mmbee_dead_letters_total"][(("agent", "segments"), ("reason", "decode_error"))] == 1
        )
        assert (
            m["mmbee_dead_letters_total"][(("agent", "segments"), ("reason", "validation_error"))]
            == 1
        )
        assert m["mmbee_agent_events_per_second"][seg] > 0
        assert m["mmbee_segment_buffer_streams"][()] == 1
        assert m["mmbee_segment_buffer_open_segments"][()] == 1
        assert m["mmbee_segment_buffer_unpersisted_events"][()] == 5
        assert m["mmbee_assigned_partitions"][()] == 3 * settings.partitions
        assert m["mmbee_worker_ready"][()] == 1
        assert m["mmbee_scoring_latency_seconds_bucket"][(("le", "+Inf"),)] == 0
        assert m["mmbee_model_version_info"] == {(("version", "none"),): 0.0}
        warn = (("level", "warning"), ("logger", "mmbee.streams.dlq"))
        assert m["mmbee_log_records_total"][warn] == 2

        assert fetch(port, ROUTES["live"])[::2] == (200, '{"live":true,"reason":"ok"}')
        assert fetch(port, ROUTES["ready"])[::2] == (200, '{"ready":true,"reason":"ok"}')

        # the live page: its HTML (nothing from outside the worker) and its data
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{ROUTES['page']}", timeout=5) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
            assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
            assert b'src="/mmbee/page/page.js"' in r.read()
        for asset in ("page.js", "page.css"):
            got = fetch(port, ROUTES["page_data"] + asset)
            assert got[0] == 200 and got[1].startswith(("text/javascript", "text/css")), got[:2]
        page = json.loads(fetch(port, ROUTES["page_data"])[2])
        assert page["status"]["agents"]["segments"]["dlq"] == {
            "decode_error": 1, "validation_error": 1,
        }  # fmt: skip
        recent = {x["reason"]: (x["topic"], x["event_id"]) for x in page["dead_letters"]["recent"]}
        comments_topic = settings.topic("live.comments")
        assert recent == {"validation_error": (comments_topic, "cx"),
                          "decode_error": (comments_topic, None)}  # fmt: skip
        assert page["top"]["streams"] == []  # no segment views on a segments-only worker

        cli = subprocess.run(
            [sys.executable, "-m", "mmbee", "status"], env=settings_env(settings), cwd=REPO,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert "READY" in cli.stdout.splitlines()[0]
        assert f"partitions {3 * settings.partitions}  lag total 5" in cli.stdout
        assert "decode_error 1, validation_error 1" in cli.stdout
        assert "streams 1  open 1" in cli.stdout
    finally:
        worker.stop()
    lines = [json.loads(x) for x in worker.log_path.read_text().splitlines() if x.startswith("{")]
    letters: list[dict[str, Any]] = [x for x in lines if x.get("event") == "dead_letter"]
    assert {x["reason"]: x["event_id"] for x in letters} == {
        "validation_error": "cx",
        "decode_error": None,  # undecodable: no id to log (JSON null)
    }
    assert all(x["logger"] == "mmbee.streams.dlq" and x["level"] == "WARNING" for x in letters)
    unstructured = [
        x for x in worker.log_path.read_text().splitlines() if x and not x.startswith("{")
    ]
    assert not unstructured, unstructured[:5]
