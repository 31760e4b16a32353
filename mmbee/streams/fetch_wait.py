"""Client-side fetch long-poll for brokers that ignore `fetch.max.wait.ms` (the embedded noida-db).

Apache Kafka holds a fetch request until data arrives or `fetch.max.wait.ms` passes, so an idle
consumer costs nothing. noida-db 0.2.3 answers every fetch at once, empty or not, and aiokafka
then re-fetches immediately: an idle Faust worker spins at ~0.9 of a core (measured on the
2-core dev box), which starves the broker and every other process there. This module makes the
consumer wait `wait_ms` after a fetch that brought no records, which is what the broker would
have done. Data that arrives during the wait is picked up at most `wait_ms` later.

It patches aiokafka's `Fetcher` class for the whole process, so only process entry points use
it: the worker, and the demo's and benchmarks' `ScoreClient` (mmbee/jobs/stack.py), whose
response consumer would otherwise spin in the measuring process. Both do so only for the dev
profile's embedded broker (`Settings.embedded_fetch_wait_ms`), never against Apache Kafka, whose
long-poll makes it unnecessary.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

__all__ = ["install_fetch_wait", "installed_fetch_wait_ms"]

_ATTR = "_mmbee_fetch_wait_ms"


def install_fetch_wait(wait_ms: int) -> None:
    """Make aiokafka consumers in this process wait `wait_ms` after an empty fetch (0: undo)."""
    from aiokafka.consumer.fetcher import Fetcher

    original = getattr(Fetcher._proc_fetch_request, "__wrapped__", Fetcher._proc_fetch_request)
    if wait_ms <= 0:
        Fetcher._proc_fetch_request = original
        return
    delay_s = wait_ms / 1000.0

    @functools.wraps(original)
    async def proc_fetch_request(self: Any, assignment: Any, node_id: Any, request: Any) -> bool:
        # `needs_wakeup` is False when the response added no records (and raised no error that
        # the consumer must see); the task still counts as in flight for this node while it
        # sleeps, so no new fetch goes out: a client-side long-poll.
        needs_wakeup = bool(await original(self, assignment, node_id, request))
        if not needs_wakeup and assignment.active:
            try:
                await asyncio.sleep(delay_s)
            except asyncio.CancelledError:
                # like the original: a cancelled fetch (close, unassignment) just ends
                return False
        return needs_wakeup

    setattr(proc_fetch_request, _ATTR, wait_ms)
    Fetcher._proc_fetch_request = proc_fetch_request


def installed_fetch_wait_ms() -> int:
    """The wait currently installed (0 when aiokafka is unpatched)."""
    from aiokafka.consumer.fetcher import Fetcher

    return int(getattr(Fetcher._proc_fetch_request, _ATTR, 0))
