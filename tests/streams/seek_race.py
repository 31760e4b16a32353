"""`python tests/streams/seek_race.py worker ...`: the mmbee CLI with Faust's post-recovery race forced.

faust-streaming 0.15.3 ends table recovery with `resume_partitions(sources)`, `await
perform_seek()`, `flow_control.resume()`. Whatever the fetcher hands the streams during that
await is deleted by the resume, because a resume empties every stream buffer. On a quiet machine
the await is short and the race is rare; under load it was about 1 start in 5 (the SIGKILL-restart
test's occasional failure). This entry point makes it happen on every start: after the seek it
holds the recovery, while source partitions are active and the flow runs, until the fetcher has put
a message into a stream buffer (at most `HOLD_S`). `mmbee.streams.runtime.compat` (recovery_order) must make the
hold a no-op, since with it no source partition is active before the final resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

HOLD_S = 5.0
log = logging.getLogger("seek_race")


def force_the_race() -> None:
    """Patch Faust's `Consumer` in this process to hold its recovery seek as described above."""
    from faust.transport.consumer import Consumer

    seek, getmany = Consumer.perform_seek, Consumer.getmany
    handed: dict[int, int] = {}  # id(consumer) -> messages its fetcher handed on

    async def counting_getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        async for tp, message in getmany(self, timeout):
            handed[id(self)] = handed.get(id(self), 0) + 1
            yield tp, message

    async def perform_seek(self: Any) -> None:
        await seek(self)
        sources = [tp for tp in self._get_active_partitions() if not self._is_changelog_tp(tp)]
        if not (sources and self.flow_active):
            return
        # only a message handed on after the seek is lost when cleared: the client's position
        # has passed it (one handed on before is fetched again from the seek's offsets)
        queues, before = self.app.flow_control._queues, handed.get(id(self), 0)
        deadline = time.monotonic() + HOLD_S
        while time.monotonic() < deadline and not (
            handed.get(id(self), 0) > before and any(q.qsize() for q in list(queues))
        ):
            await asyncio.sleep(0.001)
        held = sum(q.qsize() for q in list(queues))
        log.warning("seek_race: held the recovery; %d messages in the stream buffers", held)

    Consumer.getmany = counting_getmany  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]


if __name__ == "__main__":
    force_the_race()
    from mmbee.cli import main

    main()
