"""Dead-lettering: a message an agent cannot apply goes to the DLQ topic with a reason, is counted,
and is logged as one structured line carrying its event_id.

Example:
    >>> import asyncio
    >>> from mmbee.streams.metrics import StreamMetrics
    >>> from mmbee.streams.publish import MemoryPublisher
    >>> pub, metrics = MemoryPublisher(), StreamMetrics(clock=lambda: 0.0)
    >>> dlq = DeadLetterSink("mmbee.dlq", pub, metrics, clock_ms=lambda: 1_700_000_000_000)
    >>> asyncio.run(dlq.send(b"junk", source_topic="mmbee.live.gifts", agent="graph",
    ...                      reason="decode_error", detail="not JSON"))
    >>> metrics.dlq_total("graph"), len(pub.sent)
    (1, 1)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mmbee.schemas.events import DeadLetter, DeadLetterReason
from mmbee.streams.metrics import StreamMetrics
from mmbee.streams.publish import Publisher

__all__ = ["DeadLetterSink"]

log = logging.getLogger("mmbee.streams.dlq")


class DeadLetterSink:
    """Wraps rejected messages in `DeadLetter`, publishes them, counts them, logs them.

    Args:
        topic: full name of the dead-letter topic.
        publisher: where to send.
        metrics: counters (per agent, per reason).
        clock_ms: wall-clock milliseconds for `dead_lettered_at_ms` (injected).
    """

    def __init__(
        self,
        topic: str,
        publisher: Publisher,
        metrics: StreamMetrics,
        clock_ms: Callable[[], int],
    ) -> None:
        self.topic = topic
        self._publisher = publisher
        self._metrics = metrics
        self._clock_ms = clock_ms

    async def send(
        self,
        original: bytes | None,
        *,
        source_topic: str,
        agent: str,
        reason: DeadLetterReason,
        detail: str,
        partition: int | None = None,
        offset: int | None = None,
        event_id: str | None = None,
    ) -> None:
        """Dead-letter one message (its original bytes as received; None counts as empty)."""
        letter = DeadLetter.wrap(
            original if original is not None else b"",
            source_topic=source_topic[:255],
            agent=agent,
            reason=reason,
            detail=detail,
            now_ms=self._clock_ms(),
            partition=partition,
            offset=offset,
            event_id=event_id,
        )
        self._metrics.dead_letter(agent, reason)
        log.warning(
            "dead_letter agent=%s reason=%s event_id=%s topic=%s partition=%s offset=%s detail=%r",
            agent,
            reason,
            event_id,
            source_topic,
            partition,
            offset,
            detail[:300],
        )
        await self._publisher.send(self.topic, None, letter.model_dump_json().encode())
