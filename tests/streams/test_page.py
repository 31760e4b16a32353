"""The live page (`/`): its ring buffers and dead-letter memory (pure), the modality ablation,
and the page itself in headless Chromium against a real worker on the real broker."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streamkit import CTX, T0, content_stream
from test_serving import small_checkpoint
from test_worker import produce

from mmbee.schemas import ScoreRequest
from mmbee.scorer.predict import ContentBuffer
from mmbee.settings import Settings
from mmbee.streams.components.serving import SCORE_PATH
from mmbee.streams.dlq import DeadLetterSink
from mmbee.streams.metrics import StreamMetrics
from mmbee.streams.page.browser import HeadlessPage, find_chromium
from mmbee.streams.page.history import DLQ_LOGGER, RecentDeadLetters, SeriesRing
from mmbee.streams.page.top import ablate
from mmbee.streams.publish import MemoryPublisher
from mmbee.streams.topics import ensure_topics
from mmbee.streams.web import ROUTES

# --- pure --------------------------------------------------------------------------------------


def test_series_ring_keeps_the_last_minutes_at_most_one_sample_per_step() -> None:
    ring = SeriesRing(keep_s=10.0, step_s=2.0)
    for t in range(0, 30):  # a sample every second: every other one is kept
        ring.record(float(t), {"segments": 100.0 * t, "graph": None})
    assert len(ring) <= 7 and ring.due(30.0) and not ring.due(29.0)
    pts = ring.points(now_s=28.0)
    assert list(pts) == ["segments"]  # None values are left out
    assert pts["segments"][-1] == [0.0, 2800.0] and pts["segments"][0][0] >= -10.0
    assert {v for _, v in ring.rates(now_s=28.0)["segments"]} == {100.0}
    ring.record(30.0, {"segments": 50.0})  # the counter restarted: counts from zero
    assert ring.rates(now_s=30.0)["segments"][-1] == [0.0, 25.0]


def test_recent_dead_letters_are_read_from_the_sinks_own_log_line() -> None:
    recent = RecentDeadLetters(keep=2, clock_ms=lambda: 7)
    logger = logging.getLogger(DLQ_LOGGER)
    logger.addHandler(recent)
    try:
        sink = DeadLetterSink("mmbee.dlq", MemoryPublisher(), StreamMetrics(), clock_ms=lambda: 1)
        for i, reason in enumerate(("decode_error", "late", "validation_error")):
            asyncio.run(sink.send(b"x", source_topic=f"mmbee.live.t{i}", agent="segments",
                                  reason=reason, detail=f"d{i}", partition=i, offset=10 + i,
                                  event_id=None if i == 0 else f"e{i}"))  # fmt: skip
    finally:
        logger.removeHandler(recent)
    got = recent.letters()
    assert [(x["reason"], x["topic"], x["event_id"]) for x in got] == [
        ("validation_error", "mmbee.live.t2", "e2"),
        ("late", "mmbee.live.t1", "e1"),
    ]
    assert got[0]["partition"] == 2 and got[0]["offset"] == 12 and got[0]["at_ms"] == 7
    assert got[0]["agent"] == "segments" and got[0]["detail"] == "d2"


def test_ablation_removes_one_modality_from_every_segment() -> None:
    v, s, c = (np.full(2, k, np.float16) for k in (1, 2, 3))
    buf = ContentBuffer("a1", ((v, s, None), (v, None, c)))
    speechless = ablate(buf, 1)
    assert [seg[1] for seg in speechless.segments] == [None, None]
    assert speechless.segments[0][0] is v and speechless.segments[1][2] is c
    assert ablate(buf, 2).segments[0] == (v, s, None)


def test_rank_orders_by_score_and_its_ablation_is_the_score_without_that_modality(
    tmp_path: Path,
) -> None:
    from mmbee.scorer.features import author_features, user_features
    from mmbee.scorer.predict import encode_buffers, load_model
    from mmbee.streams.page.top import MODALITIES, REFERENCE_VIEWER, _scores, rank

    loaded = load_model(small_checkpoint(tmp_path / "m.pt", seed=0))
    feats, ts = loaded.features, 1_700_000_100_000
    rng = np.random.default_rng(0)

    def seg(speech: bool) -> tuple[Any, ...]:
        v = rng.normal(size=8).astype(np.float16)
        s = rng.normal(size=4).astype(np.float16) if speech else None
        return v, s, rng.normal(size=4).astype(np.float16)

    authors = [f"a{i}" for i in range(6)]
    buffers = [ContentBuffer(a, tuple(seg(speech=i != 2) for _ in range(3)))
               for i, a in enumerate(authors)]  # fmt: skip
    sides = [author_features(a, None, ts, None, None, feats) for a in authors]
    user = user_features(REFERENCE_VIEWER, None, None, feats, ts)
    got = rank(loaded, ts, user, None, sides, buffers, n=6, frame_dim=8, text_dim=4)
    full = _scores(loaded, ts, user, None, sides, encode_buffers(loaded, buffers, 8, 4))
    assert [r["author_id"] for r in got] == [authors[i] for i in np.argsort(-full, kind="stable")]
    assert [r["score"] for r in got] == sorted(full.tolist(), reverse=True)
    for r in got:
        i = authors.index(r["author_id"])
        for m, name in enumerate(MODALITIES):
            if name == "speech" and i == 2:
                assert r["without"][name] is None  # never had speech: nothing to remove
                continue
            enc = encode_buffers(loaded, [ablate(buffers[i], m)], 8, 4)
            alone = _scores(loaded, ts, user, None, [sides[i]], enc)[0]
            assert r["without"][name] == pytest.approx(alone - full[i], abs=1e-5)
        moved = {k: abs(v) for k, v in r["without"].items() if v is not None}
        assert r["moved_by"] == max(moved, key=moved.__getitem__)
    assert len(rank(loaded, ts, user, None, sides, buffers, n=2, frame_dim=8, text_dim=4)) == 2
    # serving's cached encoder outputs stand in for encoding those buffers again
    enc = encode_buffers(loaded, buffers, 8, 4)
    half = [enc[i] if i % 2 else None for i in range(len(authors))]
    again = rank(loaded, ts, user, None, sides, buffers, n=6, frame_dim=8, text_dim=4, cached=half)
    assert [r["author_id"] for r in again] == [r["author_id"] for r in got]
    assert [r["score"] for r in again] == pytest.approx([r["score"] for r in got], abs=1e-6)


# --- the page in a real browser ----------------------------------------------------------------

ARTIFACTS = Path(
    os.environ.get("MMBEE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "reports" / "tests")
)
"""Where the browser test saves its screenshot (`reports/` is not tracked)."""

# the numbers the page shows (their raw values), read from its DOM
READ_PAGE = """(() => {
  const v = (id) => document.getElementById(id).dataset.value;
  const agents = {};
  for (const tr of document.querySelectorAll('#agents tbody tr[data-agent]')) {
    const td = tr.querySelectorAll('td');
    agents[tr.dataset.agent] = [Number(td[1].dataset.value), Number(td[3].dataset.value)];
  }
  const dlq = {};
  for (const tr of document.querySelectorAll('#dlq tbody tr[data-reason]'))
    dlq[tr.dataset.agent + '/' + tr.dataset.reason] = Number(tr.lastChild.dataset.value);
  const recent = [...document.querySelectorAll('#dlq-recent tbody tr')].map(
    (tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent));
  const top = [...document.querySelectorAll('#top tbody tr')].map((tr) => {
    const td = tr.querySelectorAll('td');
    return {author: td[1] && td[1].dataset.value, score: td[3] && td[3].dataset.value,
            moved: td[7] && td[7].textContent};
  });
  return {health: v('health'), model: v('model-version'), scored: Number(v('scored')),
          p50: Number(v('p50')), p99: Number(v('p99')),
          lag_total: Number(v('lag-total')), assigned: Number(v('assigned')),
          dlq_total: Number(v('dlq-total')), agents, dlq, recent, top,
          instance: document.getElementById('instance').textContent,
          broker: document.getElementById('broker').textContent,
          loaded: Number(document.body.dataset.loaded || 0)};
})()"""


def expected_from(status: dict[str, Any]) -> dict[str, Any]:
    """What the page must show for this `/mmbee/status/` answer."""
    agents = status["agents"]
    return {
        "health": "ready" if status["worker"]["ready"] else "not ready",
        "model": status["model"]["version"],
        "scored": status["scoring"]["requests"],
        "p50": status["scoring"]["p50_ms"],
        "p99": status["scoring"]["p99_ms"],
        "lag_total": status["partitions"]["lag_total"],
        "assigned": len(status["partitions"]["assigned"]),
        "dlq_total": sum(a["errors"] for a in agents.values()),
        "agents": {k: [a["processed"], a["errors"]] for k, a in agents.items()},
        "dlq": {f"{k}/{r}": n for k, a in agents.items() for r, n in a["dlq"].items()},
        "instance": status["worker"]["instance"],
        "broker": status["worker"]["bootstrap"],
    }


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return json.load(resp)


@pytest.mark.broker
@pytest.mark.browser
def test_the_page_in_headless_chromium_shows_what_the_worker_sees(
    broker_settings: Settings, workers: Any, tmp_path: Path
) -> None:
    if find_chromium() is None:
        pytest.skip("no headless Chromium (apt-get install chromium; CI: .ci/system-packages)")
    model = small_checkpoint(tmp_path / "model.pt", seed=0)
    settings = broker_settings.model_copy(
        update=dict(
            components=("segments", "joiner", "serving"), segment_ms=1_000,
            allowed_lateness_ms=0, frame_dim=CTX["frame_dim"], text_dim=CTX["text_dim"],
            stream_batch_wait_ms=10, log_level="WARNING", metrics_lag_interval_s=0.5,
            segment_align_wait_ms=500, serving_model_path=model, serving_poll_s=0.2,
            segments_kept=5, joiner_history=20, graph_top_n=10, joiner_settle_s=0.0,
            serving_reject_unknown_users=False, serving_reject_unknown_authors=False,
        )
    )  # fmt: skip
    ensure_topics(settings)
    # the replay: four streamers' frames, speech and comments over 6 s of event time (five
    # closed 1-s segments each), then a message that is not JSON: a dead letter
    events = content_stream(n_authors=4, n_per_author=60, step_ms=100, seed=3)
    authors = {e.author_id for e in events}
    produce(settings, events, [("live.frames", b"a1", b"\xff page test: not json")])
    worker = workers(settings)
    port = settings.web_port

    def page() -> dict[str, Any]:
        try:
            return get_json(port, ROUTES["page_data"])
        except OSError:
            return {}

    deadline = time.monotonic() + 120
    while True:
        assert worker.proc.poll() is None, worker.tail()
        data = page()
        top = data.get("top", {}).get("streams", [])
        s = data.get("status", {})
        consumed = s.get("agents", {}).get("segments", {}).get("processed", 0) >= len(events) + 1
        if consumed and s["worker"]["ready"] and len(top) == 4 and top[0]["score"] is not None:
            break
        assert time.monotonic() < deadline, f"{json.dumps(data)[:3000]}\n{worker.tail()}"
        time.sleep(0.5)

    for i in range(5):  # scoring latency for the page to show
        req = ScoreRequest(request_id=f"page-{i}", user_id="u1", ts_ms=T0 + 10_000,
                           candidate_author_ids=sorted(authors))  # fmt: skip
        post = urllib.request.Request(f"http://127.0.0.1:{port}{SCORE_PATH}",
                                      data=req.model_dump_json().encode(), method="POST")  # fmt: skip
        with urllib.request.urlopen(post, timeout=30) as resp:
            assert resp.status == 200

    with HeadlessPage(f"http://127.0.0.1:{port}{ROUTES['page']}", width=1440, height=1000) as p:
        p.wait_for("Number(document.body.dataset.loaded || 0) >= 1", timeout_s=30)
        deadline = time.monotonic() + 30
        while True:  # the page refreshes every 3 s: it shows the status at most that old
            shown = p.evaluate(READ_PAGE)
            want = expected_from(get_json(port, ROUTES["status"]))
            if {k: shown[k] for k in want} == want:
                break
            assert time.monotonic() < deadline, (shown, want)
            time.sleep(0.5)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = p.screenshot(ARTIFACTS / "page-test.png")
        errors = list(p.errors)

    assert not errors, errors
    assert shown["health"] == "ready" and shown["model"] and shown["loaded"] >= 1
    assert shown["scored"] == 5 and 0 < shown["p50"] <= shown["p99"]
    listed = [row["author"] for row in shown["top"]]
    assert len(listed) == 4 and set(listed) == authors, listed
    scores = [float(row["score"]) for row in shown["top"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= x <= 1 for x in scores)
    assert all(row["moved"].split(" ")[0] in ("visual", "speech", "comments") for row in shown["top"])
    frames = settings.topic("live.frames")
    assert shown["dlq"] == {"segments/decode_error": 1}
    assert [r[1:4] for r in shown["recent"]] == [["decode_error", frames, "segments"]]
    assert shot.stat().st_size > 20_000
