"""The producer flush Faust runs before it commits offsets drains the buffer completely, even when
handing a message to the Kafka client takes longer than Faust's 0.1 s patience (faust-streaming
0.15.3 returned with messages still buffered: their offsets were committed, a crash lost them)."""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from faust.transport.producer import ProducerBuffer

from mmbee.streams.runtime.compat import full_flush_installed, install_full_flush


class SlowClient:
    """Stands in for the Kafka client: each hand-over takes `delay_s`."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.sent: list[int] = []

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(self.delay_s)
        self.sent.append(fut)


class Fut:
    def __init__(self, i: int, client: SlowClient) -> None:
        self.i = i
        self.message = type("M", (), {"channel": client})()


async def _flush_with_slow_handover(n: int, delay_s: float) -> tuple[int, int]:
    """(messages still buffered or in flight when flush returned, messages handed over)."""
    app = faust.App("t-flush", broker="memory://", store="memory://")
    buf = ProducerBuffer(loop=asyncio.get_running_loop())
    buf.app = app
    client = SlowClient(delay_s)
    await buf.start()
    try:
        for i in range(n):
            buf.put(Fut(i, client))  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the buffer's task takes the first message
        await buf.flush()
        left = n - len(client.sent)
    finally:
        await buf.stop()
    return left, len(client.sent)


def test_flush_waits_for_every_message_however_slow_the_client() -> None:
    install_full_flush()
    assert full_flush_installed()
    left, sent = asyncio.run(_flush_with_slow_handover(n=4, delay_s=0.25))
    assert (left, sent) == (0, 4)


def test_install_is_idempotent() -> None:
    install_full_flush()
    flush, send = ProducerBuffer.flush, ProducerBuffer._send_pending
    install_full_flush()
    assert (ProducerBuffer.flush, ProducerBuffer._send_pending) == (flush, send)


@pytest.mark.parametrize("delay_s", [0.0, 0.02])
def test_a_fast_client_is_flushed_too(delay_s: float) -> None:
    install_full_flush()
    left, sent = asyncio.run(_flush_with_slow_handover(n=50, delay_s=delay_s))
    assert (left, sent) == (0, 50)
