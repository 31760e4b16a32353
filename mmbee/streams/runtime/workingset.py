"""A stateful agent's working set: per-key state in memory, with the events not yet stored.

An agent that stores its state less often than per event (the segment agent writes a stream
when a segment closes) keeps, per key, the events applied since the last write. They are acked
only once a write covers them, so Faust's commit never passes an event whose effect is not
stored. The working set tracks them and says which key to store next: the one whose oldest
unstored event is oldest (`checkpoint`), which bounds both the replay after a crash and the
events held unacked.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class E:
    ...     partition: int
    ...     pending: list = field(default_factory=list)
    ...     first_seq: int = 0
    >>> ws = WorkingSet()
    >>> e = ws.add("a1", E(partition=0))
    >>> ws.applied("a1", e, "ev1", seq=1); ws.applied("a1", e, "ev2", seq=2); ws.seq = 2
    >>> ws.pending, ws.checkpoint(limit=1)
    (2, 'a1')
    >>> ws.stored("a1", e), ws.pending
    (['ev1', 'ev2'], 0)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Entry", "WorkingSet"]


class Entry(Protocol):
    """What the working set needs of a key's in-memory state."""

    partition: int
    pending: list[Any]  # applied events no write covers yet (unacked)
    first_seq: int  # arrival number of the oldest of them


E = TypeVar("E", bound=Entry)


class WorkingSet(Generic[E]):
    """Entries by key, the keys with unstored events (oldest first), and their count."""

    def __init__(self) -> None:
        self.entries: dict[str, E] = {}
        self.dirty: dict[str, None] = {}  # keys with pending events, oldest first
        self.seq = 0  # arrival number of the latest event (the agent counts them)
        self.pending = 0  # events applied and not stored, over all keys

    def add(self, key: str, entry: E) -> E:
        self.entries[key] = entry
        return entry

    def applied(self, key: str, entry: E, event: Any, seq: int) -> None:
        """`event` (arrival number `seq`) changed `entry`; it is acked once a write covers it."""
        if not entry.pending:  # the key's oldest unstored event
            entry.first_seq = seq
            self.dirty[key] = None
        entry.pending.append(event)
        self.pending += 1

    def stored(self, key: str, entry: E) -> list[Any]:
        """A write covered every event `entry` applied: returns them (to ack)."""
        events, entry.pending = entry.pending, []
        self.pending -= len(events)
        self.dirty.pop(key, None)
        return events

    def checkpoint(self, limit: int) -> str | None:
        """The key to store now: its oldest unstored event is `limit` events old, or more than
        `limit` events are unstored in all (None: nothing is due)."""
        if not self.dirty:
            return None
        key = next(iter(self.dirty))
        entry = self.entries[key]
        if entry.first_seq > self.seq - limit and self.pending <= limit:
            return None
        return key

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the entries of revoked partitions (their unacked events are redelivered)."""
        parts = set(partitions)
        for key in [k for k, e in self.entries.items() if e.partition in parts]:
            entry = self.entries.pop(key)
            self.pending -= len(entry.pending)
            self.dirty.pop(key, None)
