"""The app factory: Faust settings from Settings, explicit component registry, context services."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from mmbee.schemas import DeadLetter
from mmbee.settings import Settings
from mmbee.streams.app import (
    COMPONENTS,
    UnknownComponentError,
    build_app,
    create_app,
    faust_settings,
    resolve_components,
)
from mmbee.streams.dlq import DeadLetterSink
from mmbee.streams.metrics import StreamMetrics
from mmbee.streams.publish import MemoryPublisher
from mmbee.streams.runtime.component import Component
from mmbee.streams.runtime.context import StreamContext
from mmbee.streams.runtime.rocksdb import rocksdb_options


def test_faust_settings_follow_the_field_notes(tmp_path: Path) -> None:
    s = Settings(partitions=6, data_dir=tmp_path, web_port=7001)
    conf = faust_settings(s)
    assert conf["broker"] == ["kafka://127.0.0.1:19092"]
    assert conf["store"] == "rocksdb://"
    assert conf["topic_partitions"] == 6
    assert conf["broker_session_timeout"] == 6.0 and conf["broker_heartbeat_interval"] == 1.0
    assert conf["processing_guarantee"] == "at_least_once"
    assert conf["web_bind"] == "127.0.0.1" and conf["web_port"] == 7001
    assert conf["stream_wait_empty"] is False
    assert conf["producer_acks"] == 1
    assert (
        faust_settings(Settings(profile="production", bootstrap_servers="k1:9092"))["producer_acks"]
        == -1
    )
    # batched produces (Kafka 4.0's 5 ms default), and Faust really gets it
    assert conf["producer_linger"] == 0.005
    assert create_app(s.model_copy(update={"producer_linger_ms": 0})).conf.producer_linger == 0.0
    assert create_app(s).conf.producer_linger == 0.005


def test_rocksdb_options_are_explicit_and_small() -> None:
    opts = rocksdb_options(Settings(rocksdb_block_cache_mib=16, rocksdb_write_buffer_mib=8))
    assert opts["block_cache_size"] == 16 * 2**20
    assert opts["write_buffer_size"] == 8 * 2**20
    assert opts["max_write_buffer_number"] == 2
    # faust's own default is a 2 GiB block cache per table partition
    assert opts["block_cache_size"] < 2 * 2**30


def test_component_registry_is_explicit() -> None:
    assert list(COMPONENTS) == ["segments", "asr", "graph", "joiner", "serving", "refresh"]
    names = [n for n, _ in resolve_components(None)]
    assert names == list(COMPONENTS)
    assert resolve_components([COMPONENTS["graph"]]) == [("graph", COMPONENTS["graph"])]
    with pytest.raises(UnknownComponentError, match="registered"):
        resolve_components(["nope"])


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_every_component_has_the_shape(name: str) -> None:
    """Each component is an object (issue 18): its name, a frozen config built from the
    settings, a step, a state codec (or None: no table of its own), and its module is one file
    of at most 250 lines."""
    import inspect
    import sys

    c = COMPONENTS[name]
    assert isinstance(c, Component) and c.name == name
    cfg = c.config(Settings())
    assert dataclasses.is_dataclass(cfg) and type(cfg).__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert c.apply is not None and callable(c.apply)
    assert c.codec is None or (callable(c.codec.dumps) and callable(c.codec.loads))
    source = inspect.getsource(sys.modules[c.register.__module__])
    assert len(source.splitlines()) <= 250, (name, c.register.__module__)


def test_custom_component_gets_topics_tables_and_the_dlq(tmp_path: Path) -> None:
    seen: list[StreamContext] = []

    def register(ctx: StreamContext) -> None:
        seen.append(ctx)
        ctx.app.agent(ctx.topic("live.gifts"), name="test.gifts")(_noop)
        ctx.table("test_table")

    ctx = build_app(Settings(store="memory://", data_dir=tmp_path), components=[register])
    assert seen == [ctx]
    assert "test.gifts" in ctx.app.agents
    assert "test_table" in ctx.app.tables
    assert ctx.topic("live.gifts") is ctx.topic("live.gifts")
    assert ctx.topic_name("dlq") == "mmbee.dlq"
    assert ctx.catalogue_name("mmbee.live.asr") == "live.asr"
    with pytest.raises(KeyError):
        ctx.topic("live.nope")


def test_settings_choose_the_components(tmp_path: Path) -> None:
    ctx = build_app(Settings(store="memory://", data_dir=tmp_path, components=("asr",)))
    assert "mmbee.asr" in ctx.app.agents and "mmbee.segments" not in ctx.app.agents
    assert "asr" in ctx.runtimes and "segments" not in ctx.runtimes


def test_rocksdb_tables_get_the_configured_options(tmp_path: Path) -> None:
    ctx = build_app(Settings(data_dir=tmp_path, rocksdb_block_cache_mib=3), components=["segments"])
    table = ctx.app.tables["segment_buffers"]
    assert table.options["block_cache_size"] == 3 * 2**20


def test_dead_letters_keep_the_original_and_are_counted() -> None:
    pub, metrics = MemoryPublisher(), StreamMetrics(clock=lambda: 0.0)
    sink = DeadLetterSink("x.dlq", pub, metrics, clock_ms=lambda: 1_700_000_000_123)
    big = b"y" * (2 * 2**20)
    asyncio.run(
        sink.send(b"bad", source_topic="x.live.gifts", agent="a", reason="decode_error", detail="d")
    )
    asyncio.run(
        sink.send(big, source_topic="x.live.audio", agent="a", reason="oversized", detail="big",
                  partition=2, offset=9, event_id="e9")
    )  # fmt: skip
    letters = [DeadLetter.model_validate_json(v) for v in pub.values("x.dlq")]
    assert letters[0].original == b"bad" and letters[0].reason == "decode_error"
    assert letters[0].dead_lettered_at_ms == 1_700_000_000_123
    assert letters[1].truncated and len(letters[1].original) == 2**20
    assert (letters[1].partition, letters[1].offset, letters[1].event_id) == (2, 9, "e9")
    assert metrics.snapshot()["agents"]["a"]["dlq"] == {"decode_error": 1, "oversized": 1}
    samples = list(metrics.samples())
    assert ("mmbee_dead_letters_total", {"agent": "a", "reason": "oversized"}, 1.0) in samples
    json.dumps(metrics.snapshot())


def test_metrics_timing_uses_the_injected_clock() -> None:
    now = iter([10.0, 12.5])
    m = StreamMetrics(clock=lambda: next(now))
    m.observe("s", 100)
    m.observe("s", 150)
    a = m.snapshot()["agents"]["s"]
    assert a["counters"]["events"] == 250 and (a["first_s"], a["last_s"]) == (10.0, 12.5)


async def _noop(stream: object) -> None:  # pragma: no cover - never started here
    return None
