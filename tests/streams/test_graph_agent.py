"""The graph component: under `agent.test_context()` (no broker) and through a real worker and the
real broker (incremental through Kafka == batch build, bad input dead-lettered)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faust.types import EventT
from faust.types.tuples import Message

from mmbee.graph import author_expansions, build, user_expansions
from mmbee.schemas import DeadLetter, GiftEvent
from mmbee.schemas.graph import AuthorExpansions, UserExpansions
from mmbee.settings import Settings
from mmbee.streams.app import build_app
from mmbee.streams.components.graph import INTERNAL_TOPIC, GraphRuntime, state_digest
from mmbee.streams.publish import MemoryPublisher
from mmbee.streams.runtime.context import StreamContext

T0 = 1_750_000_000_000
HOUR = 3_600_000


def gift(eid: str, user: str, author: str, dt_ms: int, value: float = 1.0) -> GiftEvent:
    return GiftEvent(
        event_id=eid,
        ts_ms=T0 + dt_ms,
        user_id=user,
        author_id=author,
        live_id="l1",
        gift_value=value,
    )


def random_gifts(n: int, seed: int, n_users: int = 12, n_authors: int = 6) -> list[GiftEvent]:
    rng = np.random.default_rng(seed)
    return [
        gift(
            f"g{seed}-{i}",
            f"u{int(rng.integers(n_users))}",
            f"a{int(rng.integers(n_authors))}",
            int(rng.integers(0, 2 * HOUR)),
            float(rng.choice([1, 2, 5, 52, 520])),
        )
        for i in range(n)
    ]


def make_ctx(tmp_path: Path, **overrides: Any) -> tuple[StreamContext, MemoryPublisher]:
    base: dict[str, Any] = dict(store="memory://", data_dir=tmp_path, partitions=2)
    base.update(overrides)
    pub = MemoryPublisher()
    ctx = build_app(Settings(**base), components=["graph"], publisher=pub, clock_ms=lambda: T0)
    return ctx, pub


async def feed(
    tc: Any, ctx: StreamContext, topic: str, key: bytes | None, value: bytes, offset: int
) -> EventT:
    msg = Message(topic, 0, offset, 0.0, 0, None, key, value, b"",
                  generation_id=ctx.app.consumer_generation_id)  # fmt: skip
    channel = tc.stream().channel
    event: EventT = await channel.decode(msg)
    await channel.put(event)
    return event


async def settle(ctx: StreamContext, agent: str, n: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while ctx.metrics.get(agent, "processed") < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"processed {ctx.metrics.snapshot()}")
        await asyncio.sleep(0.01)


def run(ctx: StreamContext, agent: str, body: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        async with ctx.app.agents[agent].test_context() as tc:
            await body(tc)

    asyncio.run(asyncio.wait_for(main(), 120))


def letters(pub: MemoryPublisher, ctx: StreamContext) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(v) for v in pub.values(ctx.settings.topic("dlq"))]


def test_graph_agent_equals_batch_and_publishes_expansions(tmp_path: Path) -> None:
    ctx, pub = make_ctx(tmp_path)
    runtime: GraphRuntime = ctx.runtimes["graph"]
    topic = ctx.settings.topic(INTERNAL_TOPIC)
    gifts = random_gifts(60, seed=1)
    shuffled = [gifts[i] for i in np.random.default_rng(2).permutation(len(gifts))]

    async def body(tc: Any) -> None:
        offset = 0
        for g in shuffled:
            await feed(tc, ctx, topic, b"gifts", g.model_dump_json().encode(), offset)
            offset += 1
        for raw in (shuffled[3].model_dump_json().encode(), b"{broken"):  # duplicate, garbage
            await feed(tc, ctx, topic, b"gifts", raw, offset)
            offset += 1
        await settle(ctx, "graph", len(gifts) + 2)
        assert runtime.state is not None
        graph = runtime.state.graph
        assert await runtime.tick() == graph.num_users + graph.num_authors

    run(ctx, "mmbee.graph", body)
    cfg = ctx.settings.graph_configs()[0]
    batch = build(gifts, cfg)
    assert runtime.state is not None
    assert runtime.state.graph.fingerprint() == batch.fingerprint()
    assert runtime.describe()["digest"] == state_digest(batch)
    assert [(d.reason, d.agent) for d in letters(pub, ctx)] == [("decode_error", "graph")]
    assert ctx.metrics.get("graph", "duplicates") == 1  # counted, not dead-lettered
    users = {
        m.user_id: m
        for m in map(
            UserExpansions.model_validate_json,
            pub.values(ctx.settings.topic("graph.user_expansions")),
        )
    }
    authors = {
        m.author_id: m
        for m in map(
            AuthorExpansions.model_validate_json,
            pub.values(ctx.settings.topic("graph.author_expansions")),
        )
    }
    assert sorted(users) == batch.users() and sorted(authors) == batch.authors()
    for u, m in users.items():
        assert m.model_dump(exclude={"user_id", "built_at_ms"}) == user_expansions(batch, u)
    for a, m in authors.items():
        assert m.model_dump(exclude={"author_id", "built_at_ms"}) == author_expansions(batch, a)


def test_late_gifts_and_precision_are_dead_lettered(tmp_path: Path) -> None:
    ctx, pub = make_ctx(tmp_path, graph_dedupe_horizon_ms=HOUR)
    runtime: GraphRuntime = ctx.runtimes["graph"]
    topic = ctx.settings.topic(INTERNAL_TOPIC)
    sent = [
        gift("g1", "u1", "a1", 5 * HOUR),
        gift("g2", "u1", "a2", 3 * HOUR),  # 2 h before the watermark: late
        gift("g3", "u2", "a1", 4 * HOUR + 1),  # within the horizon: applied
        GiftEvent(
            event_id="g4",
            ts_ms=946_684_800_001,
            user_id="u3",
            author_id="a1",
            live_id="l1",
            gift_value=1.0,
        ),  # fmt: skip  (year 2000: long before the epoch)
    ]

    async def body(tc: Any) -> None:
        for i, g in enumerate(sent):
            await feed(tc, ctx, topic, b"gifts", g.model_dump_json().encode(), i)
        await settle(ctx, "graph", len(sent))

    run(ctx, "mmbee.graph", body)
    assert [d.reason for d in letters(pub, ctx)] == ["late", "late"]
    assert runtime.state is not None and runtime.state.graph.num_gifts == 2
    # the dedupe window forgets ids older than the horizon, in the table too
    assert sorted(runtime.state.seen) == ["g1", "g3"]


def test_forwarder_validates_and_forwards(tmp_path: Path) -> None:
    ctx, pub = make_ctx(tmp_path)
    topic = ctx.settings.topic("live.gifts")
    good = gift("g1", "u1", "a1", 0)

    async def body(tc: Any) -> None:
        await feed(tc, ctx, topic, b"a1", good.model_dump_json().encode(), 0)
        await feed(tc, ctx, topic, b"a2", good.model_dump_json().encode(), 1)  # wrong key
        await feed(tc, ctx, topic, b"a1", b'{"event_id": "x", "gift_value": -1}', 2)
        await settle(ctx, "graph_gifts", 3)

    run(ctx, "mmbee.graph_gifts", body)
    forwarded = pub.values(ctx.settings.topic(INTERNAL_TOPIC))
    assert [GiftEvent.model_validate_json(v) for v in forwarded] == [good]
    assert [(d.reason, d.agent) for d in letters(pub, ctx)] == [
        ("validation_error", "graph_gifts"),
        ("validation_error", "graph_gifts"),
    ]


@pytest.mark.broker
def test_incremental_through_kafka_equals_batch(broker_settings: Settings, workers: Any) -> None:
    from kafka import KafkaProducer
    from streamkit import read_topic

    from mmbee.streams.topics import ensure_topics

    settings = broker_settings.model_copy(
        update=dict(
            components=("graph",),
            store="rocksdb://",
            log_level="WARNING",
            graph_refresh_interval_s=0.2,
            graph_idle_rebuild_s=0.5,  # quiet for 0.5 s: a full rebuild makes the cache exact
        )
    )
    ensure_topics(settings)
    gifts = random_gifts(150, seed=3, n_users=30, n_authors=8)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_list(), linger_ms=5)
    topic = settings.topic("live.gifts")
    for g in gifts + gifts[:10]:  # ten re-sent copies (at-least-once upstream)
        producer.send(topic, key=g.author_id.encode(), value=g.model_dump_json().encode())
    producer.send(topic, key=b"a0", value=b"\xff not json")
    producer.flush()
    producer.close()

    worker = workers(settings)
    batch = build(gifts, settings.graph_configs()[0])

    def state() -> dict[str, Any]:
        try:
            return worker.get("/mmbee/graph/")
        except OSError:
            return {}

    deadline = time.monotonic() + 90
    while state().get("gifts") != len(gifts) or state().get("rebuilt_at_gifts") != len(gifts):
        assert worker.proc.poll() is None, worker.tail()
        assert time.monotonic() < deadline, f"{state()}\n{worker.tail()}"
        time.sleep(0.3)
    assert state()["digest"] == state_digest(batch)
    for user in batch.users()[:5]:
        view = worker.get(f"/mmbee/graph/users/{user}/")
        got = {m: [tuple(x) for x in view[m]] for m in ("u2a2u", "u2a2u2a", "u2a2a")}
        assert got == user_expansions(batch, user)
    final_counters = worker.get("/mmbee/metrics/")["agents"]
    worker.stop()
    dlq = [DeadLetter.model_validate_json(v) for v in read_topic(settings, "dlq")]
    assert [d.reason for d in dlq] == ["decode_error"]  # the ten copies are only counted
    assert final_counters["graph"]["counters"]["duplicates"] == 10
    published = [
        UserExpansions.model_validate_json(v) for v in read_topic(settings, "graph.user_expansions")
    ]
    latest = {m.user_id: m for m in published}  # compacted topic: the last message per user
    assert sorted(latest) == batch.users()
    for u, m in latest.items():
        assert m.model_dump(exclude={"user_id", "built_at_ms"}) == user_expansions(batch, u)


@pytest.mark.broker
def test_sigkill_and_restart_recovers_the_exact_graph(
    broker_settings: Settings, workers: Any
) -> None:
    from kafka import KafkaProducer

    from mmbee.streams.topics import ensure_topics

    settings = broker_settings.model_copy(
        update=dict(
            components=("graph",),
            store="rocksdb://",
            log_level="WARNING",
            graph_refresh_interval_s=0.2,
            graph_idle_rebuild_s=0.5,
            commit_interval_s=0.2,
        )
    )
    ensure_topics(settings)
    gifts = random_gifts(120, seed=4, n_users=25, n_authors=7)
    first, second = gifts[:70], gifts[70:]

    def send(batch: list[GiftEvent]) -> None:
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap_list(), linger_ms=5)
        for g in batch:
            producer.send(
                settings.topic("live.gifts"),
                key=g.author_id.encode(),
                value=g.model_dump_json().encode(),
            )
        producer.flush()
        producer.close()

    def wait(worker: Any, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + 90
        while True:
            assert worker.proc.poll() is None, worker.tail()
            try:
                state = worker.get("/mmbee/graph/")
            except OSError:
                state = {}
            if state and done(state):
                return state
            assert time.monotonic() < deadline, f"{state}\n{worker.tail()}"
            time.sleep(0.2)

    send(first)
    w1 = workers(settings)
    wait(w1, lambda s: s.get("gifts") == len(first))
    w1.kill()  # SIGKILL: whatever was not committed is redelivered
    send(second + first[:15])  # and some re-sent copies
    w2 = workers(settings)
    state = wait(w2, lambda s: s.get("rebuilt_at_gifts") == len(gifts))
    assert state["digest"] == state_digest(build(gifts, settings.graph_configs()[0]))
    w2.stop()
