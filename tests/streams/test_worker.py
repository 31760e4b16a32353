"""A real Faust worker process against the real embedded broker: round trip, SIGKILL + restart
with recovery from the changelog, and bad input dead-lettered while the worker keeps going."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaProducer
from segref import fold
from streamkit import (
    CTX,
    REPO,
    T0,
    TOPIC_OF,
    WorkerProcess,
    asr,
    comment,
    content_stream,
    frame,
    read_topic,
)

from mmbee.schemas import DeadLetter, SegmentClosed
from mmbee.settings import Settings
from mmbee.state.segments import ContentItem, SegmentConfig
from mmbee.streams.components.segments import SOURCES
from mmbee.streams.topics import ensure_topics

pytestmark = pytest.mark.broker

Start = Callable[..., WorkerProcess]
SEEK_RACE = (str(REPO / "tests" / "streams" / "seek_race.py"),)


def stream_settings(base: Settings, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        segment_ms=1_000,
        allowed_lateness_ms=0,
        segments_kept=10,
        frame_dim=CTX["frame_dim"],
        text_dim=CTX["text_dim"],
        components=("segments",),
        store="rocksdb://",
        stream_batch_wait_ms=10,
        log_level="INFO",  # a failure's message ends with the worker's log: group, recovery
    )
    values.update(overrides)
    return base.model_copy(update=values)


def produce(
    settings: Settings, events: list[Any], raw: list[tuple[str, bytes, bytes]] = ()
) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_list(), linger_ms=5)
    for e in events:
        producer.send(
            settings.topic(TOPIC_OF[type(e)]),
            key=e.author_id.encode(),
            value=e.model_dump_json().encode(),
        )
    for name, key, value in raw:
        producer.send(settings.topic(name), key=key, value=value)
    producer.flush()
    producer.close()


def reference(events: list[Any], settings: Settings) -> tuple[dict[str, Any], list[SegmentClosed]]:
    cfg = SegmentConfig(
        settings.segment_ms,
        settings.segments_kept,
        settings.allowed_lateness_ms,
        settings.frame_dim,
        settings.text_dim,
    )
    # the worker applies in event-time order across the three topics (ASR at mid-speech)
    items = [ContentItem.from_event(e) for e in events]
    order = sorted(
        range(len(items)),
        key=lambda i: (items[i].ts_ms, SOURCES.index(TOPIC_OF[type(events[i])]), i),
    )
    buffers, closed, rejects = fold([items[i] for i in order], cfg)
    assert rejects == []
    return buffers, closed


def buffer_view(worker: WorkerProcess, author: str) -> tuple[list[SegmentClosed], list[Any]]:
    view = worker.get(f"/mmbee/segments/{author}/")
    closed = [SegmentClosed.model_validate(s, context=CTX) for s in view["closed"]]
    return closed, [(o["start_ms"], o["counts"]) for o in view["open"]]


def segments_topic(settings: Settings) -> dict[tuple[str, int], SegmentClosed]:
    """Closed segments on `content.segments`, deduplicated by (author, start); a re-emitted
    segment (at-least-once) must be identical to the first."""
    out: dict[tuple[str, int], SegmentClosed] = {}
    for raw in read_topic(settings, "content.segments"):
        seg = SegmentClosed.model_validate_json(raw, context=CTX)
        key = (seg.author_id, seg.start_ms)
        assert out.setdefault(key, seg) == seg
    return out


def drained(n: int) -> Callable[[dict[str, Any]], bool]:
    """The worker consumed `n` messages and applied every one (none waits for alignment)."""
    return lambda a: a["counters"].get("processed", 0) >= n and a["gauges"].get("held", 1) == 0


def expected_open(buf: Any) -> list[Any]:
    return [(s.start_ms, list(s.counts)) for s in buf.open]


def test_round_trip_through_the_worker(broker_settings: Settings, workers: Start) -> None:
    settings = stream_settings(broker_settings)
    ensure_topics(settings)
    events = content_stream(n_authors=3, n_per_author=24, step_ms=170, seed=1)
    produce(settings, events)
    worker = workers(settings)
    worker.wait_for(drained(len(events)))
    ref, ref_closed = reference(events, settings)
    for author, buf in ref.items():
        closed, opened = buffer_view(worker, author)
        assert closed == list(buf.closed)
        assert opened == expected_open(buf)
    assert segments_topic(settings) == {(s.author_id, s.start_ms): s for s in ref_closed}
    assert read_topic(settings, "dlq") == []
    worker.stop()
    assert worker.proc.returncode == 0, worker.tail()


def test_sigkill_mid_stream_then_restart_recovers_from_the_changelog(
    broker_settings: Settings, workers: Start
) -> None:
    settings = stream_settings(broker_settings, commit_interval_s=0.2, allowed_lateness_ms=500)
    ensure_topics(settings)
    events = content_stream(n_authors=4, n_per_author=40, step_ms=120, seed=2)
    cut = len(events) * 5 // 8
    produce(settings, events[:cut])
    first = workers(settings)
    first.wait_for(lambda a: drained(cut)(a) and a["counters"].get("segments_closed", 0) >= 8)
    time.sleep(1.0)  # a few commit intervals: the restart then resumes from committed offsets,
    # so the segments closed so far can only come back from the changelog
    held = first.counters()["counters"]
    first.kill()  # mid-stream: open segments only in memory, their offsets uncommitted
    produce(settings, events[cut:])
    # a fresh state directory: every stored buffer must come back from the changelog topic
    second = workers(settings.model_copy(update={"data_dir": settings.data_dir.parent / "w2"}))
    ref, ref_closed = reference(events, settings)

    def caught_up(_: dict[str, Any]) -> bool:
        return all(
            buffer_view(second, a) == (list(b.closed), expected_open(b)) for a, b in ref.items()
        )

    second.wait_for(caught_up, timeout_s=60)
    assert held.get("applied", 0) > 0
    assert segments_topic(settings) == {(s.author_id, s.start_ms): s for s in ref_closed}
    assert read_topic(settings, "dlq") == []  # replays after the restart are not "late"/"duplicate"
    after = second.counters()
    assert after["dlq"] == {}
    # it resumed from committed offsets: the segments closed before the kill came back from the
    # changelog, not from re-reading the whole stream
    assert after["counters"]["events"] < len(events)
    second.stop()


def test_nothing_fetched_while_recovery_seeks_is_lost(
    broker_settings: Settings, workers: Start
) -> None:
    # seek_race.py holds Faust's end of recovery until the fetcher has handed a source message
    # to a stream buffer, which Faust's final flow resume would then empty (mmbee.streams
    # .recovery_order): the backlog must still be applied whole, on a first start and a restart
    settings = stream_settings(broker_settings, commit_interval_s=0.2, stream_batch_max=1)
    ensure_topics(settings)
    events = content_stream(n_authors=3, n_per_author=30, step_ms=120, seed=5)
    half = len(events) // 2
    produce(settings, events[:half])
    first = workers(settings, SEEK_RACE)
    first.wait_for(drained(half), timeout_s=30)
    first.stop()
    produce(settings, events[half:])
    # a fresh state directory: the restart recovers from the changelog, so Faust's fetcher runs
    # during the seek (a start with nothing to recover seeks before the fetcher starts)
    second = workers(
        settings.model_copy(update={"data_dir": settings.data_dir.parent / "w2"}), SEEK_RACE
    )
    second.wait_for(drained(len(events) - half), timeout_s=30)
    assert second.counters()["dlq"] == {}
    second.stop()
    assert second.proc.returncode == 0, second.tail()


def test_bad_input_lands_in_the_dlq_while_the_worker_keeps_going(
    broker_settings: Settings, workers: Start
) -> None:
    # trickled input: a short alignment valve keeps each step quick
    settings = stream_settings(broker_settings, segment_align_wait_ms=1_000)
    ensure_topics(settings)
    good = [frame("f0", 0), frame("f1", 500), comment("c0", 600), frame("f2", 2_500)]
    worker = workers(settings)
    produce(settings, good[:3])
    worker.wait_for(drained(3))
    ok_comment = json.loads(comment("cx", 700).model_dump_json())
    nan_frame = json.loads(frame("nan", 100).model_dump_json())
    bad: list[tuple[str, bytes, bytes]] = [
        ("live.frames", b"a1", b"\x89PNG not json"),
        ("live.comments", b"a1", json.dumps({**ok_comment, "ts_ms": "yesterday"}).encode()),
        ("live.comments", b"a1", json.dumps({**ok_comment, "mood": "happy"}).encode()),
        ("live.comments", b"a1", json.dumps({**ok_comment, "text": "x" * 600}).encode()),
        ("live.frames", b"a1", json.dumps({**nan_frame, "embedding": [float("nan")] * 8}).encode()),
        ("live.frames", b"a1", frame("f0", 50).model_dump_json().encode()),  # duplicate id
    ]  # fmt: skip
    produce(settings, [], bad)
    worker.wait_for(drained(3 + len(bad)))
    produce(settings, good[3:])  # closes segment 0
    worker.wait_for(drained(4 + len(bad)))
    produce(settings, [], [("live.asr", b"a1", asr("late", 900).model_dump_json().encode())])
    worker.wait_for(drained(5 + len(bad)))
    produce(settings, [frame("f3", 2_700)])
    worker.wait_for(drained(6 + len(bad)))
    letters = [DeadLetter.model_validate_json(v) for v in read_topic(settings, "dlq")]
    by_id = {(d.reason, d.event_id) for d in letters}
    assert [d.reason for d in letters].count("decode_error") == 1
    assert ("validation_error", "cx") in by_id  # wrong type
    assert ("oversized", "cx") in by_id  # text too long
    assert ("validation_error", "nan") in by_id
    assert ("late", "late") in by_id and "duplicate" not in {d.reason for d in letters}
    assert len(letters) == len(bad)  # the duplicate is counted, not dead-lettered; + the late one
    assert [d.original for d in letters if d.reason == "decode_error"] == [b"\x89PNG not json"]
    assert worker.counters()["counters"]["duplicates"] == 1
    dlq = worker.counters()["dlq"]
    assert dlq == {
        "decode_error": 1,
        "late": 1,
        "oversized": 1,
        "validation_error": 3,
    }
    closed, opened = buffer_view(worker, "a1")
    assert [(s.n_frames, s.n_comments) for s in closed] == [(2, 1)]
    assert opened == [(T0 + 2_000, [2, 0, 0])]
