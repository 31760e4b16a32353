"""Event-time alignment of several topics read from one partition (pure, no Faust).

Faust hands an agent the records of its topics round-robin by count, so with a backlog one
topic can run many seconds of event time ahead of another (1 MB fetches hold ~150 frame events
but ~500 comments). The segment buffer judges lateness by event time, so without alignment a
replay would dead-letter most of the slower topic as "late".

`Aligner` holds items of one partition in a heap and releases them in (ts, source, offset) order
once every source has delivered an item after their event time (the *frontier*), or once
they have waited `wait_s` of wall time (a quiet, empty or finished source must not stall the
others for longer). Released order is canonical, so a replay applies events in the same order
as the original run did, whatever the fetch interleaving.

Example:
    >>> a = Aligner(wait_s=1.0, sources=2)
    >>> a.push(ts=10, source=0, offset=0, item="frame@10", now_s=0.0)
    >>> a.ready(now_s=0.0)  # source 1 has not delivered anything yet
    []
    >>> a.push(ts=5, source=1, offset=0, item="comment@5", now_s=0.0)
    >>> a.push(ts=12, source=1, offset=1, item="comment@12", now_s=0.1)
    >>> a.ready(now_s=0.1)  # both sources are past 5; source 0 is not past 10 yet
    ['comment@5']
    >>> a.ready(now_s=1.5)  # the rest waited long enough
    ['frame@10', 'comment@12']
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any

__all__ = ["Aligner"]


class Aligner:
    """Merges the sources of one partition in event-time order.

    Args:
        wait_s: longest wall time an item waits for the frontier before it is released anyway.
        sources: number of sources (0 .. sources-1) merged here.
    """

    def __init__(self, wait_s: float, sources: int) -> None:
        self.wait_s = wait_s
        self.sources = sources
        self._heap: list[tuple[int, int, int, int, Any]] = []
        self._pushed = 0  # tie-break: the same offset can be delivered twice (seek after fetch)
        self._seen: dict[int, int] = {}  # source -> largest ts delivered
        self._arrivals: deque[tuple[float, int]] = deque()  # (arrival, ts) in push order

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, *, ts: int, source: int, offset: int, item: Any, now_s: float) -> None:
        """Hold `item` (event time `ts`, read from `source` at `offset`)."""
        self._pushed += 1
        heapq.heappush(self._heap, (ts, source, offset, self._pushed, item))
        prev = self._seen.get(source)
        if prev is None or ts > prev:
            self._seen[source] = ts
        self._arrivals.append((now_s, ts))

    def frontier(self) -> int | None:
        """Event time every source has reached (None while a source has delivered nothing)."""
        if len(self._seen) < self.sources:
            return None
        return min(self._seen.values())

    def ready(self, now_s: float) -> list[Any]:
        """Items that may be applied now, in (ts, source, offset) order."""
        # strictly before the frontier: a source may still deliver more items at its newest ts
        frontier = self.frontier()
        limit = None if frontier is None else frontier - 1
        cutoff = now_s - self.wait_s
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] <= cutoff:
            _, ts = arrivals.popleft()
            if limit is None or ts > limit:
                limit = ts
        heap = self._heap
        out = []
        while heap and limit is not None and heap[0][0] <= limit:
            out.append(heapq.heappop(heap)[4])
        if not heap:
            arrivals.clear()
        return out

    def drain(self) -> list[Any]:
        """Every held item, in order (e.g. at shutdown of a test run)."""
        out = [heapq.heappop(self._heap)[4] for _ in range(len(self._heap))]
        self._arrivals.clear()
        return out
