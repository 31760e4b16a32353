"""Acking held events in the order they arrived, per topic partition (pure, no Faust).

The segment agent finishes events out of order: a dead-lettered event is done at once, an
applied one only when a table write covers it. Faust commits the highest contiguous acked
offset, but its gap check in 0.15.3 (`Consumer._new_offset`) lets a gap of exactly one offset
through after a commit (`min(acked) - committed > 1`, where `committed` is already the next
offset), and checks nothing before a partition's first commit. An event acked out of order can
therefore be committed past while an earlier one is still unstored, and lost in a crash. So
events are acked only as a contiguous prefix of each partition's arrival order: Faust then only
ever sees in-order acks, the case it handles.

Example:
    >>> seq = AckSequencer()
    >>> for e in ("a", "b", "c"):
    ...     seq.track(("t", 0), e)
    >>> seq.done(("t", 0), "b")
    []
    >>> seq.done(("t", 0), "a")
    ['a', 'b']
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Any

__all__ = ["AckSequencer"]


class AckSequencer:
    """Per key (a topic partition), releases finished items in their arrival order."""

    def __init__(self) -> None:
        self._queues: dict[Hashable, deque[list[Any]]] = {}
        self._entries: dict[int, list[Any]] = {}  # id(item) -> [item, done]

    def __len__(self) -> int:
        return len(self._entries)

    def track(self, key: Hashable, item: Any) -> None:
        """`item` arrived on `key`; it will be released after every earlier item of `key`."""
        entry = [item, False]
        self._entries[id(item)] = entry
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
        q.append(entry)

    def done(self, key: Hashable, item: Any) -> list[Any]:
        """Mark `item` finished; returns the items of `key` that may be acked now, in order."""
        entry = self._entries.get(id(item))
        if entry is None or entry[0] is not item:
            raise KeyError(f"{item!r} is not tracked")
        entry[1] = True
        q = self._queues[key]
        out = []
        while q and q[0][1]:
            head = q.popleft()
            del self._entries[id(head[0])]
            out.append(head[0])
        return out

    def done_many(
        self, finished: Iterable[tuple[Hashable, Any]], *, forgotten: bool = False
    ) -> list[Any]:
        """Mark several (key, item) finished; returns what may be acked now, each key's items
        in their arrival order (keys in the order they first appear in `finished`).
        `forgotten`: items of keys dropped by `forget` meanwhile (a rebalance while the caller
        awaited) are skipped instead of refused: they will be redelivered."""
        entries = self._entries
        keys: dict[Hashable, None] = {}
        for key, item in finished:
            entry = entries.get(id(item))
            if entry is None or entry[0] is not item:
                if forgotten:
                    continue
                raise KeyError(f"{item!r} is not tracked")
            entry[1] = True
            keys[key] = None
        out = []
        for key in keys:
            q = self._queues[key]
            while q and q[0][1]:
                head = q.popleft()
                del entries[id(head[0])]
                out.append(head[0])
        return out

    def forget(self, keys: set[Hashable]) -> None:
        """Drop everything tracked under `keys` (partitions revoked: they will be redelivered)."""
        for key in keys:
            for entry in self._queues.pop(key, ()):
                self._entries.pop(id(entry[0]), None)

    def waiting(self, key: Hashable) -> int:
        """Items of `key` not released yet (finished or not)."""
        return len(self._queues.get(key, ()))
