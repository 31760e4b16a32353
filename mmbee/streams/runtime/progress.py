"""Whether a worker has read a partition to its end: the one "caught up" notion of every agent.

Event-time alignment needs it: a source that has delivered everything it holds must not hold
back the others' frontier. Kafka tells the consumer a partition's high watermark with each
fetch; Faust remembers the next offset it will read.

The answer is as of the last fetch response, and a response can be one fetch out of date in a
way that matters: a long-poll fetch answered by a producer's first records carries, for the
topics that producer has not reached yet, the high watermarks of that moment. So "caught up"
never means idle at once: the alignment takes a source as idle only for events held
`Settings.align_idle_ms` (runtime/alignment.py, the joiner; docs/streams.md).
"""

from __future__ import annotations

from typing import Any

from faust.exceptions import ConsumerNotStarted

from mmbee.streams.runtime.compat import read_offsets

__all__ = ["caught_up"]


def caught_up(consumer: Any, tp: Any, seen_offset: int | None) -> bool | None:
    """Whether `consumer` has nothing more to deliver of `tp` now: the agent saw the offset just
    below the high watermark (`seen_offset`), or, before it saw anything, the consumer starts at
    the high watermark. None when unknown (no fetch yet, no consumer under `test_context`)."""
    try:
        hw = consumer.highwater(tp)
    except (ConsumerNotStarted, AssertionError, KeyError, AttributeError):
        return None
    if hw is None:
        return None
    if seen_offset is not None:
        return bool(seen_offset + 1 >= hw)
    start = read_offsets(consumer).get(tp)
    return hw == 0 or (start is not None and start >= hw)
