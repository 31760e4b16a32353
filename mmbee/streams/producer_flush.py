"""A producer flush that drains Faust's producer buffer before offsets are committed.

Faust commits source offsets after `producer.flush()`, which first drains the app's
`ProducerBuffer` (table changelog writes and `send_soon` messages wait there before they are
handed to the Kafka client) and then flushes the client. In faust-streaming 0.15.3
`ProducerBuffer.flush` gives up as soon as 0.1 s pass without a message leaving the buffer
(`flush_atmost(None)` returns on its first timeout), and it does not count the message the
buffer's task is handing over at that moment. On a busy worker (hundreds of changelog writes
waiting: "producer buffer full" warnings) a hand-over can take longer than that; offsets are
then committed while changelog writes of the events they cover are still in the buffer, and a
SIGKILL at that moment loses those writes for good (at-least-once broken). Shown with a client
whose hand-over takes 0.25 s: the original flush returned with 3 of 4 messages still buffered
(`tests/streams/test_producer_flush.py` checks the patched flush against the same client).

`install_full_flush()` replaces `ProducerBuffer.flush` (and wraps `_send_pending` to count
hand-overs in flight) so that a flush returns only when the buffer is empty and nothing is being
handed over; it raises, as before, when the producer stops with messages waiting. The rate
limiter `wait_until_ebb` keeps its bounded waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

__all__ = ["install_full_flush", "full_flush_installed"]

_ATTR = "_mmbee_full_flush"
_INFLIGHT = "_mmbee_inflight"


def full_flush_installed() -> bool:
    """Whether `install_full_flush` patched this process's Faust."""
    from faust.transport.producer import ProducerBuffer

    return bool(getattr(ProducerBuffer.flush, _ATTR, False))


def install_full_flush() -> None:
    """Patch Faust's `ProducerBuffer` for the whole process (idempotent)."""
    from faust.transport.producer import ProducerBuffer

    if full_flush_installed():
        return
    send_pending = ProducerBuffer._send_pending

    @functools.wraps(send_pending)
    async def _send_pending(self: Any, fut: Any) -> None:
        setattr(self, _INFLIGHT, getattr(self, _INFLIGHT, 0) + 1)
        try:
            await send_pending(self, fut)
        finally:
            setattr(self, _INFLIGHT, getattr(self, _INFLIGHT) - 1)

    async def flush(self: Any) -> None:
        """Wait until every buffered message was handed to the Kafka client."""
        while self.size or getattr(self, _INFLIGHT, 0):
            if self.state != "running":
                if self.size:
                    raise RuntimeError("Cannot flush: Producer not Running")
                return
            self.message_sent.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)

    setattr(flush, _ATTR, True)
    ProducerBuffer._send_pending = _send_pending  # type: ignore[method-assign]
    ProducerBuffer.flush = flush  # type: ignore[method-assign]
