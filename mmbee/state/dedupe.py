"""Event ids applied within an event-time horizon: what makes a redelivery recognisable.

At-least-once delivery redelivers events after every rebalance and restart. A component whose
effect is not idempotent by itself (a gift adds to a graph edge) remembers the ids it applied,
grouped by the key whose stored row keeps them, and forgets them once event time has moved a
horizon past them: an event older than that is refused as late before it could be a duplicate.

Example:
    >>> w = DedupeWindow(horizon_ms=1_000)
    >>> sorted(w.remember("u1", "g1", ts_ms=5_000, watermark_ms=5_000))
    ['u1']
    >>> "g1" in w
    True
    >>> sorted(w.remember("u2", "g2", ts_ms=7_000, watermark_ms=7_000))  # g1 expires: u1 changed
    ['u1', 'u2']
    >>> "g1" in w, w.of("u1")
    (False, {})
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping

__all__ = ["DedupeWindow"]


class DedupeWindow:
    """Applied event ids by owner key, forgotten `horizon_ms` of event time after their own."""

    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self._by_owner: dict[str, dict[str, int]] = {}  # owner -> {event_id: ts_ms}
        self._ids: set[str] = set()
        self._heap: list[tuple[int, str, str]] = []  # (ts_ms, event_id, owner), oldest on top

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def of(self, owner: str) -> dict[str, int]:
        """The ids `owner` holds, with their event times (what its stored row keeps)."""
        return self._by_owner.get(owner, {})

    def load(self, rows: Iterable[tuple[str, Mapping[str, int]]]) -> None:
        """Start over from stored rows: (owner, {event_id: ts_ms})."""
        self._by_owner = {owner: {e: int(t) for e, t in ids.items()} for owner, ids in rows}
        self._ids = {e for ids in self._by_owner.values() for e in ids}
        self._heap = sorted(
            (t, e, owner) for owner, ids in self._by_owner.items() for e, t in ids.items()
        )

    def clear(self) -> None:
        """Forget everything (the state moved to another worker)."""
        self.load(())

    def remember(self, owner: str, event_id: str, ts_ms: int, watermark_ms: int) -> set[str]:
        """Record `event_id` under `owner` and forget the ids older than the horizon before
        `watermark_ms`. Returns the owners whose ids changed (`owner` included)."""
        self._by_owner.setdefault(owner, {})[event_id] = ts_ms
        self._ids.add(event_id)
        heapq.heappush(self._heap, (ts_ms, event_id, owner))
        changed = {owner}
        limit = watermark_ms - self.horizon_ms
        heap = self._heap
        while heap and heap[0][0] < limit:
            _, old, who = heapq.heappop(heap)
            self._ids.discard(old)
            self._by_owner.get(who, {}).pop(old, None)
            changed.add(who)
        return changed
