"""The client-side fetch long-poll for the embedded broker: idle consumers stop spinning."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from mmbee.streams.broker import NoidaBroker
from mmbee.streams.fetch_wait import install_fetch_wait, installed_fetch_wait_ms

pytestmark = pytest.mark.broker


@pytest.fixture
def restore_fetcher() -> Iterator[None]:
    yield
    install_fetch_wait(0)


def _idle_cpu_share_and_delivery(bootstrap: str, topic: str) -> tuple[float, int]:
    async def run() -> tuple[float, int]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        await producer.start()
        await consumer.start()
        try:
            await consumer.getmany(timeout_ms=500)
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            got = 0
            while time.monotonic() - t0 < 1.5:  # idle: nothing is produced
                got += sum(len(v) for v in (await consumer.getmany(timeout_ms=100)).values())
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / (time.monotonic() - t0)
            for i in range(5):  # data still arrives, in order and complete
                await producer.send_and_wait(topic, str(i).encode(), partition=0)
            deadline = time.monotonic() + 5
            while got < 5 and time.monotonic() < deadline:
                got += sum(len(v) for v in (await consumer.getmany(timeout_ms=100)).values())
            return cpu, got
        finally:
            await consumer.stop()
            await producer.stop()

    return asyncio.run(run())


def test_empty_fetches_wait_and_data_still_flows(
    broker: NoidaBroker, restore_fetcher: None
) -> None:
    busy, got_busy = _idle_cpu_share_and_delivery(broker.bootstrap, "fetchwait.a")
    install_fetch_wait(20)
    assert installed_fetch_wait_ms() == 20
    calm, got_calm = _idle_cpu_share_and_delivery(broker.bootstrap, "fetchwait.b")
    assert got_busy == got_calm == 5
    # measured here: ~0.4-0.5 of a core without the wait, ~0.03-0.05 with 10-20 ms
    assert calm < busy / 2, (busy, calm)
    install_fetch_wait(0)
    assert installed_fetch_wait_ms() == 0
