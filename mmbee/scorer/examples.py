"""Training examples: labels joined to point-in-time snapshots by a streaming label joiner.

Every WatchEvent "enter" is an impression. Its gift label is KuaiLive's leakage-free one: 1 when
the same user sends a gift to the same streamer within `window_ms` (1 h) after entering, else 0.
MMoE's auxiliary labels come with it: `comment` (the user commented on that streamer between
entering and the emission) and `watch` (0 when a "leave" event showed a stay shorter than
`watch_threshold_ms`, else 1).

`LabelJoiner` is the pure joiner logic the streaming agent wraps: impressions wait in state;
a gift emits every matching impression at once as positive; the event-time watermark (the
largest event time seen minus `allowed_lateness_ms`) expires the others as negatives when it
passes enter + window. `flush()` returns what is left at the end of a log as `censored`
(their window was cut off; the offline jobs drop them). Re-delivered events change nothing.

Example:
    >>> from mmbee.scorer.features import AuthorFeatures, FeatureSnapshot, UserFeatures
    >>> from mmbee.schemas import GiftEvent
    >>> t = 1_700_000_000_000
    >>> j = LabelJoiner(LabelConfig())
    >>> j.add(FeatureSnapshot("w1", t, UserFeatures("u1"), AuthorFeatures("a1", "l1")))
    []
    >>> out = j.observe(GiftEvent(event_id="g1", ts_ms=t + 60_000, user_id="u1", author_id="a1",
    ...                           live_id="l1", gift_value=2.0))
    >>> out[0].labels, out[0].gift_value
    ((1.0, 0.0, 1.0), 2.0)
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from pydantic import BaseModel

from mmbee.schemas.events import CommentEvent, GiftEvent, WatchEvent
from mmbee.schemas.scoring import TrainingExample
from mmbee.scorer.batch import AUTHOR_EXPANSIONS, USER_EXPANSIONS
from mmbee.scorer.features import (
    RECENT_WINDOWS_MS,
    AuthorFeatures,
    Behaviour,
    FeatureSnapshot,
    UserFeatures,
)

__all__ = [
    "LabelConfig",
    "LabeledExample",
    "LabelJoiner",
    "to_message",
    "from_message",
]


@dataclass(frozen=True)
class LabelConfig:
    """How labels are defined and when the joiner gives up waiting.

    Attributes:
        window_ms: a gift within this long after entering makes the impression positive (1 h).
        watch_threshold_ms: a stay shorter than this (seen on a "leave") makes `watch` 0.
        allowed_lateness_ms: the watermark trails the largest event time by this much.

    Example:
        >>> LabelConfig().window_ms
        3600000
    """

    window_ms: int = 3600 * 1000
    watch_threshold_ms: int = 60 * 1000
    allowed_lateness_ms: int = 0

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.watch_threshold_ms < 0 or self.allowed_lateness_ms < 0:
            raise ValueError("window_ms must be > 0, the others >= 0")


@dataclass(frozen=True)
class LabeledExample:
    """A snapshot with its labels (`mmbee.scorer.batch.TASKS` order: watch, comment, gift).

    Attributes:
        snapshot: the features at the impression.
        labels: (watch, comment, gift) as 0.0 / 1.0.
        gift_value: the matched gift's value (0 for negatives).
        emitted_at_ms: the event time that decided the label (gift time or watermark).
        censored: the log ended before the window closed (label unknown; not a training row).
    """

    snapshot: FeatureSnapshot
    labels: tuple[float, float, float]
    gift_value: float
    emitted_at_ms: int
    censored: bool = False


@dataclass
class _Pending:
    snapshot: FeatureSnapshot
    commented: bool = False
    left_early: bool = False
    done: bool = False


@dataclass
class LabelJoiner:
    """The streaming label join as a pure state machine (no I/O, no clock).

    Attributes:
        config: label definition.
        emitted, expired, duplicates, late: counters (positives, negatives, ignored
            re-deliveries, impressions whose whole window was already behind the watermark).
    """

    config: LabelConfig
    emitted: int = 0
    expired: int = 0
    duplicates: int = 0
    late: int = 0
    watermark_ms: int | None = None
    _pending: dict[tuple[str, str], list[_Pending]] = field(default_factory=dict)
    _deadlines: list[tuple[int, int, tuple[str, str]]] = field(default_factory=list)
    _seq: int = 0
    _seen: dict[str, int] = field(default_factory=dict)
    _prune_at: int = 4096
    _max_ts: int | None = None
    _waiting: int = 0

    @property
    def pending(self) -> int:
        """Impressions waiting for their label."""
        return self._waiting

    def _is_duplicate(self, event_id: str, ts_ms: int) -> bool:
        if event_id in self._seen:
            self.duplicates += 1
            return True
        self._seen[event_id] = ts_ms
        return False

    def add(self, snapshot: FeatureSnapshot) -> list[LabeledExample]:
        """Register an impression (its snapshot); returns examples the time advance expired."""
        if self._is_duplicate(snapshot.event_id, snapshot.ts_ms):
            return []
        if (
            self.watermark_ms is not None
            and snapshot.ts_ms + self.config.window_ms < self.watermark_ms
        ):
            self.late += 1  # its label can no longer be decided
            return []
        key = (snapshot.user_id, snapshot.author_id)
        self._pending.setdefault(key, []).append(_Pending(snapshot))
        self._waiting += 1
        deadline = snapshot.ts_ms + self.config.window_ms
        heapq.heappush(self._deadlines, (deadline, self._seq, key))
        self._seq += 1
        return self._advance_to(snapshot.ts_ms)

    def observe(self, event: BaseModel) -> list[LabeledExample]:
        """Apply a gift, comment or watch "leave"; any event moves the watermark."""
        ts = getattr(event, "ts_ms", None)
        if ts is None:
            return []
        out: list[LabeledExample] = []
        event_id = getattr(event, "event_id", None)
        if event_id is not None and isinstance(event, GiftEvent | CommentEvent | WatchEvent):
            if isinstance(event, WatchEvent) and event.action == "enter":
                pass  # impressions come in through add(); enters only move time here
            elif self._is_duplicate(event_id, ts):
                return self._advance_to(ts)
            elif isinstance(event, GiftEvent):
                out.extend(self._on_gift(event))
            elif isinstance(event, CommentEvent):
                for p in self._window(event.user_id, event.author_id, ts):
                    p.commented = True
            elif isinstance(event, WatchEvent) and event.watch_ms is not None:
                window = self._window(event.user_id, event.author_id, ts)
                if window and event.watch_ms < self.config.watch_threshold_ms:
                    window[-1].left_early = True  # the latest stay is the one that ended
        out.extend(self._advance_to(ts))
        return out

    def _window(self, user_id: str, author_id: str, ts: int) -> list[_Pending]:
        w = self.config.window_ms
        return [
            p
            for p in self._pending.get((user_id, author_id), ())
            if not p.done and p.snapshot.ts_ms <= ts <= p.snapshot.ts_ms + w
        ]

    def _on_gift(self, gift: GiftEvent) -> list[LabeledExample]:
        out = []
        for p in self._window(gift.user_id, gift.author_id, gift.ts_ms):
            p.done = True
            out.append(self._example(p, gift=1.0, value=gift.gift_value, at=gift.ts_ms))
            self.emitted += 1
            self._waiting -= 1
        self._compact((gift.user_id, gift.author_id))
        return out

    def _example(
        self, p: _Pending, gift: float, value: float, at: int, censored: bool = False
    ) -> LabeledExample:
        labels = (0.0 if p.left_early else 1.0, 1.0 if p.commented else 0.0, gift)
        return LabeledExample(p.snapshot, labels, value, at, censored)

    def _compact(self, key: tuple[str, str]) -> None:
        lst = self._pending.get(key)
        if lst is not None:
            lst[:] = [p for p in lst if not p.done]
            if not lst:
                del self._pending[key]

    def advance(self, watermark_ms: int) -> list[LabeledExample]:
        """Move the watermark to `watermark_ms` (never back); expire passed windows as negatives."""
        if self.watermark_ms is not None and watermark_ms <= self.watermark_ms:
            return []
        self.watermark_ms = watermark_ms
        out = []
        while self._deadlines and self._deadlines[0][0] < watermark_ms:
            deadline, _, key = heapq.heappop(self._deadlines)
            for p in self._pending.get(key, ()):
                if not p.done and p.snapshot.ts_ms + self.config.window_ms == deadline:
                    p.done = True
                    out.append(self._example(p, gift=0.0, value=0.0, at=watermark_ms))
                    self.expired += 1
                    self._waiting -= 1
                    break
            self._compact(key)
        horizon = watermark_ms - self.config.window_ms - self.config.allowed_lateness_ms
        if len(self._seen) > self._prune_at:  # ids older than any open window can go
            self._seen = {k: t for k, t in self._seen.items() if t >= horizon}
            self._prune_at = max(4096, 2 * len(self._seen))
        return out

    def _advance_to(self, ts: int) -> list[LabeledExample]:
        if self._max_ts is None or ts > self._max_ts:
            self._max_ts = ts
        return self.advance(self._max_ts - self.config.allowed_lateness_ms)

    def flush(self) -> list[LabeledExample]:
        """End of the log: every waiting impression, marked censored, oldest first."""
        out = [
            self._example(
                p, gift=0.0, value=0.0, at=self._max_ts or p.snapshot.ts_ms, censored=True
            )
            for lst in self._pending.values()
            for p in lst
            if not p.done
        ]
        self._pending.clear()
        self._deadlines.clear()
        self._waiting = 0
        out.sort(key=lambda e: (e.snapshot.ts_ms, e.snapshot.event_id))
        return out


def to_message(ex: LabeledExample) -> TrainingExample:
    """The `train.examples` message of a labeled example (segments by reference)."""
    s = ex.snapshot
    exps = s.expansions()
    names = USER_EXPANSIONS + AUTHOR_EXPANSIONS
    return TrainingExample.model_validate(
        {
            "event_id": s.event_id,
            "ts_ms": s.ts_ms,
            "user_id": s.user_id,
            "author_id": s.author_id,
            "live_id": s.author.live_id,
            "history": [(b.ts_ms, b.author_id, b.kind) for b in s.user.history],
            "user_watches": s.user.watches,
            "user_gifts": s.user.gifts,
            "user_gift_value": s.user.gift_value,
            "author_watches": s.author.watches,
            "author_gifts": s.author.gifts,
            "pair_watches": s.pair_watches,
            "pair_gifts": s.pair_gifts,
            "segment_starts": list(s.author.segment_starts),
            "user_day_watches": s.user.day_watches,
            "user_day_gifts": s.user.day_gifts,
            "user_day_gift_value": s.user.day_gift_value,
            "author_recent_gifts": list(s.author.recent_gifts),
            "author_recent_watches": list(s.author.recent_watches),
            "live_category": s.author.category,
            "expansions": {n: [(k, w) for k, w in e] for n, e in zip(names, exps, strict=True)},
            "label_watch": int(ex.labels[0]),
            "label_comment": int(ex.labels[1]),
            "label_gift": int(ex.labels[2]),
            "gift_value": ex.gift_value,
            "emitted_at_ms": ex.emitted_at_ms,
        }
    )


def from_message(m: TrainingExample) -> LabeledExample:
    """Inverse of `to_message`."""
    exps: dict[str, list[tuple[str, float]]] = {str(k): v for k, v in m.expansions.items()}
    user = UserFeatures(
        user_id=m.user_id,
        history=tuple(Behaviour(t, a, k) for t, a, k in m.history),
        watches=m.user_watches,
        gifts=m.user_gifts,
        gift_value=m.user_gift_value,
        expansions=tuple(tuple((k, w) for k, w in exps.get(n, [])) for n in USER_EXPANSIONS),
        day_watches=m.user_day_watches,
        day_gifts=m.user_day_gifts,
        day_gift_value=m.user_day_gift_value,
    )
    author = AuthorFeatures(
        author_id=m.author_id,
        live_id=m.live_id,
        watches=m.author_watches,
        gifts=m.author_gifts,
        segment_starts=tuple(m.segment_starts),
        expansions=tuple(tuple((k, w) for k, w in exps.get(n, [])) for n in AUTHOR_EXPANSIONS),
        category=m.live_category,
        recent_gifts=tuple(m.author_recent_gifts) or (0,) * len(RECENT_WINDOWS_MS),
        recent_watches=tuple(m.author_recent_watches) or (0,) * len(RECENT_WINDOWS_MS),
    )
    snap = FeatureSnapshot(m.event_id, m.ts_ms, user, author, m.pair_watches, m.pair_gifts)
    labels = (float(m.label_watch), float(m.label_comment), float(m.label_gift))
    return LabeledExample(snap, labels, m.gift_value, m.emitted_at_ms)
