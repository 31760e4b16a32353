"""The author-side counters as a time index (pure, no Faust): what `author.state` carries.

A streamer's watch and gift counters are sums over events from every user partition, so they
are kept on the author partition (watch "enter"s arrive re-keyed on `author.activity`, gifts on
`live.gifts`) and published to the compacted `author.state` topic. Readers need them *as of* an
impression time t, not as of now, and the author agent sees events out of event-time order (the
two sources are independent topics), so the state is an order-free time index: the sorted event
times of the last `horizon_ms` and base counts for everything older. Counts before t are then a
pure function of the multiset of events: any arrival order, any redelivery (ids are remembered
over the horizon) gives the same answer, and the newest message alone answers every t after
its `base_ms`.

Example:
    >>> tl = Timeline("a1")
    >>> tl.add("watch", "w2", 2_000, horizon_ms=10_000), tl.add("watch", "w1", 1_000, horizon_ms=10_000)
    ('applied', 'applied')
    >>> tl.add("watch", "w1", 1_000, horizon_ms=10_000)
    'duplicate'
    >>> tl.message().counts_before(2_000)
    (1, 0)
    >>> Timeline.loads(tl.dumps()).dumps() == tl.dumps()
    True
"""

from __future__ import annotations

import bisect
import json
from typing import Any, Literal

from mmbee.schemas.serving import AuthorTimeline

__all__ = ["Outcome", "Timeline"]

Outcome = Literal["applied", "duplicate", "late"]
Kind = Literal["watch", "gift"]


class Timeline:
    """One streamer's time-indexed counters plus the event ids seen within the horizon.

    Args:
        author_id: the streamer.

    Example: see the module docstring.
    """

    __slots__ = ("author_id", "as_of_ms", "base_ms", "base", "ts", "ids")

    def __init__(self, author_id: str) -> None:
        self.author_id = author_id
        self.as_of_ms = 0
        self.base_ms = 0
        self.base = {"watch": 0, "gift": 0}
        self.ts: dict[str, list[int]] = {"watch": [], "gift": []}
        self.ids: dict[str, int] = {}  # event id -> ts, for events at or after base_ms

    def add(
        self,
        kind: Kind,
        event_id: str,
        ts_ms: int,
        horizon_ms: int,
        complete_ms: float = float("inf"),
    ) -> Outcome:
        """Count one event (idempotent by id); fold what fell behind the horizon.

        `complete_ms`: event time up to which every event of this streamer has arrived (the
        sources' progress marks; -inf when unknown). The base never passes it minus the
        horizon, so an event that a lagging source partition still holds (one far behind the
        others, e.g. re-read by the worker that took it over) is counted, not `late`.
        """
        if event_id in self.ids:
            return "duplicate"
        if ts_ms < self.base_ms:
            # its id could have been forgotten already: counting it might count it twice
            return "late"
        self.ids[event_id] = ts_ms
        bisect.insort(self.ts[kind], ts_ms)
        self.as_of_ms = max(self.as_of_ms, ts_ms)
        cut = min(self.as_of_ms, complete_ms) - horizon_ms
        if cut > self.base_ms:
            self._fold(int(cut))
        return "applied"

    def _fold(self, base_ms: int) -> None:
        if base_ms <= self.base_ms:
            return
        for kind, ts in self.ts.items():
            cut = bisect.bisect_left(ts, base_ms)
            if cut:
                self.base[kind] += cut
                del ts[:cut]
        self.ids = {e: t for e, t in self.ids.items() if t >= base_ms}
        self.base_ms = base_ms

    def message(self) -> AuthorTimeline:
        """The `author.state` message (ids stay with the author agent)."""
        return AuthorTimeline.model_construct(
            author_id=self.author_id,
            as_of_ms=self.as_of_ms,
            base_ms=self.base_ms,
            base_watches=self.base["watch"],
            base_gifts=self.base["gift"],
            watch_ts=list(self.ts["watch"]),
            gift_ts=list(self.ts["gift"]),
        )

    def dumps(self) -> bytes:
        """The table row (message plus the remembered ids and the streamer's id)."""
        row: dict[str, Any] = {
            "u": self.author_id,
            "a": self.as_of_ms,
            "b": self.base_ms,
            "bw": self.base["watch"],
            "bg": self.base["gift"],
            "w": self.ts["watch"],
            "g": self.ts["gift"],
            "i": self.ids,
        }
        return json.dumps(row, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes, author_id: str | None = None) -> Timeline:
        """Inverse of `dumps`. `author_id`: the row's key, for rows stored before they carried
        the streamer's id (the codec of a table row sees only its value)."""
        d = json.loads(raw)
        author = d.get("u", author_id)
        if author is None:
            raise ValueError("a timeline row without its author_id, and none given")
        tl = cls(str(author))
        tl.as_of_ms, tl.base_ms = int(d["a"]), int(d["b"])
        tl.base = {"watch": int(d["bw"]), "gift": int(d["bg"])}
        tl.ts = {"watch": [int(t) for t in d["w"]], "gift": [int(t) for t in d["g"]]}
        tl.ids = {str(e): int(t) for e, t in d["i"].items()}
        return tl
