"""The client-side fetch long-poll for noida-db: idle consumers stop spinning. Apache Kafka holds
empty fetches itself, so the Kafka path runs without it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.consumer.fetcher import Fetcher

from mmbee.streams.broker import KafkaBroker, NoidaBroker
from mmbee.streams.runtime.compat import install_fetch_wait, installed_fetch_wait_ms

pytestmark = pytest.mark.broker


@pytest.fixture
def restore_fetcher() -> Iterator[None]:
    yield
    install_fetch_wait(0)


IDLE_S = 1.5


def _idle_fetches_and_delivery(
    bootstrap: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, int]:
    """(fetch requests an idle consumer sends in IDLE_S seconds, messages delivered after).

    Counting fetches, not CPU time: how much CPU the spin costs depends on the broker's latency
    and on the box's load (a full CI run once saw 0.095 of a core instead of ~0.4), but the wait
    bounds the number of empty fetches whatever the speed."""
    calls = 0
    inner = Fetcher._proc_fetch_request

    async def counted(self: Any, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        return await inner(self, *args)

    monkeypatch.setattr(Fetcher, "_proc_fetch_request", counted)

    async def run() -> tuple[int, int]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        await producer.start()
        await consumer.start()
        try:
            await consumer.getmany(timeout_ms=500)
            before, t0 = calls, time.monotonic()
            got = 0
            while time.monotonic() - t0 < IDLE_S:  # idle: nothing is produced
                got += sum(len(v) for v in (await consumer.getmany(timeout_ms=100)).values())
            fetches = calls - before
            for i in range(5):  # data still arrives, in order and complete
                await producer.send_and_wait(topic, str(i).encode(), partition=0)
            deadline = time.monotonic() + 5
            while got < 5 and time.monotonic() < deadline:
                got += sum(len(v) for v in (await consumer.getmany(timeout_ms=100)).values())
            return fetches, got
        finally:
            await consumer.stop()
            await producer.stop()

    try:
        return asyncio.run(run())
    finally:
        monkeypatch.setattr(Fetcher, "_proc_fetch_request", inner)


def test_empty_fetches_wait_and_data_still_flows(
    noida_broker: NoidaBroker, restore_fetcher: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    bootstrap = noida_broker.bootstrap
    busy, got_busy = _idle_fetches_and_delivery(bootstrap, "fetchwait.a", monkeypatch)
    install_fetch_wait(20)
    assert installed_fetch_wait_ms() == 20
    calm, got_calm = _idle_fetches_and_delivery(bootstrap, "fetchwait.b", monkeypatch)
    assert got_busy == got_calm == 5
    # each empty fetch is followed by a 20 ms wait: at most IDLE_S / 0.02 of them (+ slack for
    # the fetches in flight at each end); without it the client re-fetches at once (~6-8k here)
    assert 1 <= calm <= IDLE_S / 0.020 + 10, calm
    assert busy > 2 * calm, (busy, calm)
    install_fetch_wait(0)
    assert installed_fetch_wait_ms() == 0


def test_apache_kafka_needs_no_fetch_wait(
    broker: KafkaBroker | NoidaBroker, restore_fetcher: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unpatched, an idle consumer on Apache Kafka sends about one fetch per fetch.max.wait.ms
    (aiokafka's 500 ms): the broker holds the request, as noida-db does not."""
    if broker.kind != "kafka":
        pytest.skip("the session broker is noida-db (--broker=noida)")
    assert installed_fetch_wait_ms() == 0
    fetches, got = _idle_fetches_and_delivery(broker.bootstrap, "fetchwait.k", monkeypatch)
    assert got == 5
    assert 1 <= fetches <= IDLE_S / 0.5 + 4, fetches  # noida-db, unpatched: thousands
