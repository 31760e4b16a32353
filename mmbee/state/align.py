"""Event-time alignment of several topics read from one partition (pure, no Faust).

Faust hands an agent the records of its topics round-robin by count, so with a backlog one
topic can run many seconds of event time ahead of another (1 MB fetches hold ~150 frame events
but ~500 comments). The segment buffer judges lateness by event time, so without alignment a
replay would dead-letter most of the slower topic as "late".

`Aligner` holds items of one partition in a heap and releases them in (ts, source, offset) order
once every source has delivered an item after their event time (the *frontier*); an item that
arrives behind its own source's newest event time keeps its place in that source (it leaves
with the newest time as its key), so each source's offsets leave in the order they came.
A source that has nothing more to deliver right now (the caller says which: "quiet", e.g. the
consumer has read up to the partition's high watermark) does not hold the others back, but only for items
that have waited `idle_s` of wall time: "quiet" is a snapshot of the last fetch, and a fetch
answered by a producer's first records still says a topic it has not reached yet is empty
(docs/streams.md, "Event-time alignment"). A safety valve releases items that have waited
`wait_s` of wall time anyway. Released order is canonical, so a replay applies events in the
same order as the original run did, whatever the fetch interleaving.

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
    >>> b = Aligner(wait_s=10.0, sources=2, idle_s=1.0)
    >>> b.push(ts=7, source=0, offset=0, item="frame@7", now_s=0.0)
    >>> b.ready(now_s=0.5, quiet={0, 1})  # both read to the end: the frame waits idle_s
    []
    >>> b.ready(now_s=1.0, quiet={0, 1})
    ['frame@7']
"""

from __future__ import annotations

import heapq
import sys
from collections import deque
from collections.abc import Collection
from typing import Any

__all__ = ["Aligner"]

_ALL = sys.maxsize  # frontier when no source holds anything back


class Aligner:
    """Merges the sources of one partition in event-time order.

    Args:
        wait_s: safety valve: the longest wall time an item waits for the frontier.
        sources: number of sources (0 .. sources-1) merged here.
        idle_s: wall time an item waits before quiet sources stop holding it back (0: at once).
    """

    def __init__(self, wait_s: float, sources: int, idle_s: float = 0.0) -> None:
        self.wait_s = wait_s
        self.sources = sources
        self.idle_s = idle_s
        self._heap: list[tuple[int, int, int, int, Any]] = []
        self._pushed = 0  # tie-break: the same offset can be delivered twice (seek after fetch)
        self._seen: dict[int, int] = {}  # source -> largest ts delivered
        self._offsets: dict[int, int] = {}  # source -> largest offset delivered
        self._held: dict[int, int] = {}  # source -> items held
        self._arrivals: deque[tuple[float, int]] = deque()  # (arrival, ts) in push order
        self._aging: deque[tuple[float, int]] = deque()  # the same, for the idle timeout
        self._aged: int | None = None  # largest ts of an item held idle_s (None: none yet)

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, *, ts: int, source: int, offset: int, item: Any, now_s: float) -> None:
        """Hold `item` (event time `ts`, read from `source` at `offset`)."""
        self._pushed += 1
        prev = self._seen.get(source)
        # one source's items leave in the order they came (an item behind its source's newest
        # event time takes that time as its key): a consumer that takes an offset at or below
        # the last applied one for a replay (the segment buffers) must never see a source's
        # offsets go backwards, or an event delivered out of order within the allowed lateness
        # is skipped as a replay of an offset it has not applied
        key = ts if prev is None or ts > prev else prev
        heapq.heappush(self._heap, (key, source, offset, self._pushed, item))
        self._held[source] = self._held.get(source, 0) + 1
        if prev is None or ts > prev:
            self._seen[source] = ts
        if offset > self._offsets.get(source, -1):
            self._offsets[source] = offset
        # the valve and the idle rule release by the key the item is held under, not its own
        # time: an item keyed up to its source's newest time would otherwise never be reached
        self._arrivals.append((now_s, key))
        self._aging.append((now_s, key))

    def frontier(self, quiet: Collection[int] = ()) -> int | None:
        """Event time every source not in `quiet` has reached; None while such a source has
        delivered nothing; a very large number when every source is quiet."""
        waiting = [s for s in range(self.sources) if s not in quiet]
        if not waiting:
            return _ALL
        if any(s not in self._seen for s in waiting):
            return None
        return min(self._seen[s] for s in waiting)

    def held(self, source: int) -> int:
        """Items of `source` waiting (a caller pauses a source that runs far ahead)."""
        return self._held.get(source, 0)

    def last_offset(self, source: int) -> int | None:
        """The largest offset pushed from `source` (None: nothing yet)."""
        return self._offsets.get(source)

    def ready(self, now_s: float, quiet: Collection[int] = (), valve: bool = True) -> list[Any]:
        """Items that may be applied now, in (ts, source, offset) order.

        Args:
            now_s: wall time (monotonic seconds), for the safety valve.
            quiet: sources with nothing more to deliver now; they do not hold the frontier back
                for items that have waited `idle_s`.
            valve: also release items that waited `wait_s` (callers open it only when their
                input has stalled: while batches flow, a slow source is merely behind).
        """
        # strictly before the frontier: a source may still deliver more items at its newest ts
        frontier = self.frontier()
        limit = None if frontier is None else frontier - 1
        aging, aged = self._aging, self._aged
        idle_cutoff = now_s - self.idle_s
        while aging and aging[0][0] <= idle_cutoff:
            _, ts = aging.popleft()
            if aged is None or ts > aged:
                aged = ts
        self._aged = aged
        if quiet and aged is not None:
            # quiet sources let through what waited idle_s: items up to the newest such one
            relaxed = self.frontier(quiet)
            if relaxed is not None:
                bound = min(relaxed - 1, aged)
                if limit is None or bound > limit:
                    limit = bound
        cutoff = now_s - self.wait_s
        arrivals = self._arrivals
        while valve and arrivals and arrivals[0][0] <= cutoff:
            _, ts = arrivals.popleft()
            if limit is None or ts > limit:
                limit = ts
        heap = self._heap
        out = []
        held = self._held
        while heap and limit is not None and heap[0][0] <= limit:
            entry = heapq.heappop(heap)
            held[entry[1]] -= 1
            out.append(entry[4])
        if not heap:
            arrivals.clear()
            self._aging.clear()
            self._aged = None
        return out

    def drain(self) -> list[Any]:
        """Every held item, in order (e.g. at shutdown of a test run)."""
        out = [heapq.heappop(self._heap)[4] for _ in range(len(self._heap))]
        self._arrivals.clear()
        self._aging.clear()
        self._aged = None
        self._held.clear()
        return out
