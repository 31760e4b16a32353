"""Replay: pacing with an injected clock, and a full replay through the real embedded broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from mmbee.settings import Settings
from mmbee.simulator.reader import count_events, iter_encoded
from mmbee.simulator.replay import Pacer, parse_speed, replay_log
from mmbee.streams.topics import ensure_topics

TOPICS = ("live.frames", "live.asr", "live.watch", "live.comments", "live.gifts")


class FakeClock:
    """A clock that only moves when slept on (an async sleep, as replay takes)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_pacer_scales_event_time() -> None:
    now = [100.0]
    pacer = Pacer(10.0, clock=lambda: now[0])
    assert pacer.delay(1_000_000) == 0.0  # origin
    assert pacer.delay(1_000_000) == 0.0
    assert pacer.delay(1_020_000) == pytest.approx(2.0)  # 20 s of event time at 10x
    now[0] = 102.0
    assert pacer.delay(1_020_000) == 0.0
    now[0] = 107.0  # the sender fell behind: what is due goes at once, then it waits again
    assert pacer.delay(1_030_000) == 0.0 and pacer.delay(1_060_000) == 0.0
    assert pacer.delay(1_080_000) == pytest.approx(1.0)
    free = Pacer(None, clock=lambda: now[0])
    assert free.delay(0) == 0.0 and free.delay(10**12) == 0.0


def test_parse_speed() -> None:
    assert parse_speed("max") is None and parse_speed("10") == 10.0 and parse_speed("1") == 1.0
    with pytest.raises(ValueError):
        parse_speed("0")


def _consume_all(settings: Settings, expected: int) -> dict[str, list[tuple[int, bytes, bytes]]]:
    """Every message of the replay topics: per 'topic/partition', (offset, key, value)."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_list(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    try:
        parts = [
            TopicPartition(settings.topic(t), p)
            for t in TOPICS
            for p in consumer.partitions_for_topic(settings.topic(t)) or ()
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        got: dict[str, list[tuple[int, bytes, bytes]]] = {}
        n = 0
        for msg in consumer:
            got.setdefault(f"{msg.topic}/{msg.partition}", []).append(
                (msg.offset, msg.key, msg.value)
            )
            n += 1
            if n >= expected:
                break
        return got
    finally:
        consumer.close()


@pytest.mark.broker
def test_replay_through_broker_in_order_and_complete(
    tiny_log: Path, broker_settings: Settings
) -> None:
    stats = replay_log(
        tiny_log, broker_settings, speed=None, progress=False, prepare_topics=ensure_topics
    )
    expected = count_events(tiny_log)
    assert stats.events == expected and sum(stats.per_topic.values()) == expected
    got = _consume_all(broker_settings, expected)
    assert sum(len(v) for v in got.values()) == expected
    order = {}
    keys = {}
    for i, (topic, key, value, _ts) in enumerate(iter_encoded(tiny_log)):
        eid = json.loads(value)["event_id"]
        order[eid] = i
        keys[eid] = (broker_settings.topic(topic), key, value)
    seen = set()
    for tp, msgs in got.items():
        topic = tp.rsplit("/", 1)[0]
        positions = []
        for _offset, key, value in msgs:
            eid = json.loads(value)["event_id"]
            assert keys[eid] == (topic, key, value)
            positions.append(order[eid])
            seen.add(eid)
        assert positions == sorted(positions), f"{tp} out of event-time order"
    assert seen == set(order)


@pytest.mark.broker
def test_replay_resumes_from_timestamp(tiny_log: Path, broker_settings: Settings) -> None:
    all_ts = [ts for *_, ts in iter_encoded(tiny_log)]
    start = all_ts[len(all_ts) * 3 // 4]
    clock = FakeClock()
    stats = replay_log(
        tiny_log,
        broker_settings,
        speed=10_000.0,
        start_ms=start,
        progress=False,
        clock=clock,
        sleep=clock.sleep,
        prepare_topics=ensure_topics,
    )
    assert stats.events == sum(1 for t in all_ts if t >= start)
    assert stats.first_ts_ms is not None and stats.first_ts_ms >= start
    # paced: the fake clock slept exactly the event-time span / speed
    span_s = (all_ts[-1] - stats.first_ts_ms) / 1000 / 10_000.0
    assert sum(clock.sleeps) == pytest.approx(span_s, rel=1e-6) and len(clock.sleeps) > 10
    got = _consume_all(broker_settings, stats.events)
    assert sum(len(v) for v in got.values()) == stats.events


def test_windows_split_the_log_exactly(tiny_log: Path) -> None:
    """`[a, b)` then `[b, end)` yields what the whole log yields, in the same order; the
    counts agree with what is yielded."""
    whole = [(t, k, v) for t, k, v, _ in iter_encoded(tiny_log)]
    ts = [ts for *_, ts in iter_encoded(tiny_log)]
    cut = ts[len(ts) // 3]
    first = [(t, k, v) for t, k, v, _ in iter_encoded(tiny_log, end_ms=cut)]
    rest = [(t, k, v) for t, k, v, _ in iter_encoded(tiny_log, cut)]
    assert first + rest == whole
    assert 0 < len(first) < len(whole)
    assert all(t < cut for t in ts[: len(first)]) and ts[len(first)] >= cut
    assert count_events(tiny_log, end_ms=cut) == len(first)
    assert count_events(tiny_log, cut, end_ms=cut) == 0


@pytest.mark.broker
def test_cli_simulate_and_replay(
    tmp_path: Path,
    broker_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mmbee.cli import main

    with pytest.raises(SystemExit) as done:
        main(["simulate", str(tmp_path / "log"), "--preset", "tiny", "--seed", "5"])
    assert done.value.code == 0 and "clicks" in capsys.readouterr().out
    monkeypatch.setenv("MMBEE_BOOTSTRAP_SERVERS", broker_settings.bootstrap_servers)
    monkeypatch.setenv("MMBEE_TOPIC_PREFIX", broker_settings.topic_prefix)
    monkeypatch.setenv("MMBEE_PARTITIONS", "2")
    with pytest.raises(SystemExit) as done:
        main(["replay", str(tmp_path / "log"), "--speed", "max", "--no-progress"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert f"replayed {count_events(tmp_path / 'log')} events" in out
    got = _consume_all(broker_settings, count_events(tmp_path / "log"))
    assert len(got) == 2 * len(TOPICS)  # every topic created with 2 partitions and written
