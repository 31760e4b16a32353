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
from collections.abc import Callable, Collection, Iterable
from typing import Any, Literal

__all__ = ["Aligner", "IdleRule", "MarkAligner", "frontier_of"]

_ALL = sys.maxsize  # frontier when no source holds anything back


def frontier_of(marks: dict[str, int | None], expected: Iterable[str]) -> float | None:
    """The event time every expected source partition has passed, by their progress marks:
    None while one has not reported, infinity when all are idle (None marks).

    Example:
        >>> frontier_of({"g:0": 5, "g:1": None}, {"g:0", "g:1"}), frontier_of({}, {"g:0"})
        (5.0, None)
    """
    if not marks.keys() >= set(expected):
        return None
    busy = [m for k in expected if (m := marks[k]) is not None]
    return float(min(busy)) if busy else float("inf")


class IdleRule:
    """The one idle rule of event-time alignment: quiet sources (nothing more to deliver now)
    stop holding back only the items that have waited `idle_s` of wall time, and only up to the
    newest such item (a quiet source is judged by the last fetch, which may predate records a
    producer is sending now: docs/streams.md, "Event-time alignment").

    Args:
        idle_s: how long an item waits before quiet sources stop holding it back.
    """

    __slots__ = ("idle_s", "_aging", "_aged")

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._aging: deque[tuple[float, int]] = deque()  # (arrival, ts) in push order
        self._aged: int | None = None  # largest ts of an item held idle_s (None: none yet)

    def held(self, now_s: float, ts: int) -> None:
        """An item keyed `ts` is held from `now_s` on (call in push order)."""
        self._aging.append((now_s, ts))

    def limit(self, now_s: float, strict: Any, relaxed: Callable[[], Any] | None) -> Any:
        """The largest key that may leave now (None: none): `strict` (the frontier of every
        source, minus one), raised to min(`relaxed()` - 1, newest key held `idle_s`), where
        `relaxed` gives the frontier without the quiet sources (None: no source is quiet)."""
        aging, aged = self._aging, self._aged
        cutoff = now_s - self.idle_s
        while aging and aging[0][0] <= cutoff:
            _, ts = aging.popleft()
            if aged is None or ts > aged:
                aged = ts
        self._aged = aged
        if relaxed is not None and aged is not None:
            frontier = relaxed()
            if frontier is not None:
                bound = min(frontier - 1, aged)
                if strict is None or bound > strict:
                    return bound
        return strict

    def clear(self) -> None:
        """Nothing is held any more."""
        self._aging.clear()
        self._aged = None


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
        self._offsets: dict[int, int] = {}  # source -> largest offset read
        self._held: dict[int, int] = {}  # source -> items held
        self._arrivals: deque[tuple[float, int]] = deque()  # (arrival, ts) in push order
        self._idle = IdleRule(idle_s)

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
        self.read(source, offset)
        # the valve and the idle rule release by the key the item is held under, not its own
        # time: an item keyed up to its source's newest time would otherwise never be reached
        self._arrivals.append((now_s, key))
        self._idle.held(now_s, key)

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

    def read(self, source: int, offset: int) -> None:
        """`source` was read at `offset`: an item pushed, or a message with nothing to hold (one
        dead-lettered, or without speech), which counts for the source's "read to its end" all
        the same."""
        if offset > self._offsets.get(source, -1):
            self._offsets[source] = offset

    def last_offset(self, source: int) -> int | None:
        """The largest offset read from `source` (None: nothing yet)."""
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
        limit = self._idle.limit(
            now_s,
            None if frontier is None else frontier - 1,
            (lambda: self.frontier(quiet)) if quiet else None,
        )
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
            self._idle.clear()
        return out

    def drain(self) -> list[Any]:
        """Every held item, in order (e.g. at shutdown of a test run)."""
        out = [heapq.heappop(self._heap)[4] for _ in range(len(self._heap))]
        self._arrivals.clear()
        self._idle.clear()
        self._held.clear()
        return out


Source = Literal["watch", "activity"]


class MarkAligner:
    """Merges one user partition of the joiner: `live.watch`, whose time is that of its newest
    event, and `user.activity` (gifts and comments re-keyed by viewer), whose time is the least
    of the progress marks each gift/comment partition sends (`frontier_of`). Items leave in
    (ts, rank, offset) order once both sources passed their time, with `IdleRule` for quiet
    sources; a stalled input opens the valve for everything held.

    Why not `Aligner` (written down for issue 18, which asked for one mechanism): ties break by
    the kind of event (`rank`: one source carries comments and gifts), an item keeps its own
    time (the joiner refuses a watch behind its window as late; segments need each source's
    offsets in order), a source's time comes from marks, an idle mark counts as unknown until
    the activity topic is read to its end, and the valve releases all, not what waited. Aligner
    would need four switches segments never use, so the two share `IdleRule` and
    `frontier_of` and nothing else differs.

    Args:
        expected: the mark keys ("live.gifts:0", ...) that must all have reported.
        wait_s: the safety valve: items wait at most this long once the input stalled.
        idle_s: as `IdleRule`.

    Example:
        >>> m = MarkAligner({"g:0"}, wait_s=5.0, idle_s=0.0)
        >>> m.push(ts=10, rank=3, offset=0, item="w10", now_s=0.0, source="watch")
        >>> m.push(ts=7, rank=5, offset=0, item="g7", now_s=0.0, source="activity")
        >>> m.ready(0.0, stalled=False)  # no mark yet: user.activity's time is unknown
        ([], False)
        >>> m.mark({"g:0": 12})
        >>> m.ready(0.0, stalled=False)  # both past 7; live.watch not past 10
        (['g7'], False)
        >>> m.ready(6.0, stalled=True)
        (['w10'], True)
    """

    def __init__(self, expected: Iterable[str], wait_s: float, idle_s: float) -> None:
        self.expected = frozenset(expected)
        self.wait_s = wait_s
        self.heap: list[tuple[int, int, int, int, Any]] = []
        self.watch_max: int | None = None
        self.marks: dict[str, int | None] = {}
        self._arrivals: deque[float] = deque()  # one per held item, in push order
        self._idle = IdleRule(idle_s)
        self._seq = 0  # tie-break: an offset can be delivered twice

    def __len__(self) -> int:
        return len(self.heap)

    def mark(self, marks: dict[str, int | None]) -> None:
        """Take the marks a forwarder sent (a partition left out keeps its earlier mark)."""
        self.marks.update(marks)

    def push(
        self, *, ts: int, rank: int, offset: int, item: Any, now_s: float, source: Source
    ) -> None:
        """Hold `item` (event time `ts`, tie rank, source offset) from `now_s` on."""
        if source == "watch" and (self.watch_max is None or ts > self.watch_max):
            self.watch_max = ts
        self._seq += 1
        heapq.heappush(self.heap, (ts, rank, offset, self._seq, item))
        self._arrivals.append(now_s)
        self._idle.held(now_s, ts)

    def frontier(self, quiet: Callable[[Source], bool | None] | None = None) -> float | None:
        """Event time both sources have passed (None: unknown yet).

        `quiet` (None: no source is): whether a source is read to its end. A quiet `live.watch`
        does not count; idle (None) marks count as unknown unless `user.activity` is quiet (the
        marks in hand are then the newest), when only the busy marks count."""
        if quiet is not None and quiet("watch"):
            watch: float = float("inf")
        elif self.watch_max is None:
            return None
        else:
            watch = self.watch_max
        if not self.expected <= self.marks.keys():
            return None
        if None in self.marks.values() and not (quiet is not None and quiet("activity")):
            return None  # an idle mark, maybe overtaken by marks not read yet
        activity = frontier_of(self.marks, self.marks)
        assert activity is not None
        return min(watch, activity)

    def ready(
        self, now_s: float, stalled: bool, quiet: Callable[[Source], bool | None] | None = None
    ) -> tuple[list[Any], bool]:
        """The items that may be applied now, in order, and whether the valve released them
        (`stalled`: no batch arrived for `wait_s`; the oldest held item waited as long)."""
        heap, arrivals = self.heap, self._arrivals
        if not heap:
            return [], False
        frontier = self.frontier()
        limit = self._idle.limit(
            now_s, None if frontier is None else frontier - 1, lambda: self.frontier(quiet)
        )
        valve = stalled and bool(arrivals) and now_s - arrivals[0] >= self.wait_s
        out = []
        while heap and (valve or (limit is not None and heap[0][0] <= limit)):
            out.append(heapq.heappop(heap)[4])
            arrivals.popleft()
        if not heap:
            self._idle.clear()
        return out, valve
