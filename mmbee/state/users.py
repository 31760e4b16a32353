"""The streaming joiner's logic on one user partition (pure, no Faust): user state, labels, examples.

Events of one user partition (`live.watch` and the gifts/comments re-keyed onto
`user.activity`) are applied in event-time order (the agent aligns the two topics). Per user one
`UserRow` holds everything: the `UserState` the offline `FeatureState` keeps (history,
counters, pair counters; the same class, the same `add`), the user's impressions waiting for
their label, and the event ids seen over the label horizon. One row per user means one table
write per event, which makes every update atomic under at-least-once delivery: a redelivered
event is either in its row (a duplicate) or was not applied at all.

Point in time, as `FeatureState` does it: an event is applied only once the user's event time
has moved past it (events of the current millisecond wait in `deferred`), so an impression at t
sees exactly the user's events with ts < t, whatever their tie order. An impression whose user
state already holds a later event is refused as late (it could only be snapshotted with the
future in it).

An impression's user side (history, counters, pair counters) is copied at the impression; its
streamer side (counters, segment references, expansions) and the user's expansions are read
when the example is emitted, *as of the impression time*, from time-indexed sources
(`FeatureSources`: the author timelines, the segment view, the versioned expansion views):
they are fed by other partitions, so reading them later only makes them more complete, never
newer than t. Labels are `LabelJoiner`'s (mmbee.scorer.examples): a gift to the same streamer
within the window decides a positive, the partition's watermark passing the window a negative;
a decided example is emitted `settle_s` of wall time later (time for the author side to arrive).

Example:
    >>> from mmbee.schemas import GiftEvent, WatchEvent
    >>> j = PartitionJoiner(JoinerConfig())
    >>> t = 1_700_000_000_000
    >>> j.apply(WatchEvent(event_id="w1", ts_ms=t, user_id="u1", author_id="a1", live_id="l1"),
    ...         now_s=0.0).outcome
    'applied'
    >>> j.apply(GiftEvent(event_id="g1", ts_ms=t + 9, user_id="u1", author_id="a1",
    ...                   live_id="l1", gift_value=5.0), now_s=0.0).outcome
    'applied'
    >>> [(u, p.event_id, p.decided) for u, p in j.due(now_s=10.0)]
    [('u1', 'w1', (1.0, 5.0, 1700000000009))]
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from mmbee.graph.metapaths import Expansions
from mmbee.schemas.events import CommentEvent, GiftEvent, WatchEvent
from mmbee.schemas.serving import UserActivity
from mmbee.scorer.examples import LabelConfig, LabeledExample
from mmbee.scorer.features import (
    COMMENT,
    GIFT,
    WATCH,
    AuthorState,
    Behaviour,
    FeatureConfig,
    UserFeatures,
    UserState,
    author_features,
    local_day,
    snapshot_features,
    user_features,
)

__all__ = [
    "JoinerConfig",
    "Pending",
    "UserRow",
    "Applied",
    "FeatureSources",
    "PartitionJoiner",
    "complete",
    "user_side_now",
]

Outcome = Literal["applied", "duplicate", "late", "ignored"]


@dataclass(frozen=True)
class JoinerConfig:
    """What the joiner keeps and when it emits.

    Attributes:
        features: what a snapshot keeps (H, L, N); must be the offline build's for equal examples.
        labels: the label definition (1 h window, watch threshold, watermark lateness).
        settle_s: wall seconds a decided example waits before its streamer side is read (the
            author timelines, segments and expansions come from other partitions).
        horizon_extra_ms: event ids are remembered for window + lateness + this; an activity
            event older than that behind the watermark is refused as late (it could be a
            duplicate nobody remembers).

    Example:
        >>> JoinerConfig().labels.window_ms
        3600000
    """

    features: FeatureConfig = field(default_factory=FeatureConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    settle_s: float = 1.0
    horizon_extra_ms: int = 10 * 60 * 1000

    @property
    def horizon_ms(self) -> int:
        """How far behind the watermark ids are remembered."""
        return self.labels.window_ms + self.labels.allowed_lateness_ms + self.horizon_extra_ms


@dataclass
class Pending:
    """An impression waiting for its label (or, decided, for its emission).

    The user side is a copy as of the impression (`day`: its day-start counters); `exp_at` is
    when the user's expansions are read (the user's first snapshot of that local day: they are
    frozen per day, as `FeatureState` does); `decided` is (gift label, gift value, the event
    time that decided it) once known.
    """

    event_id: str
    ts_ms: int
    author_id: str
    live_id: str | None
    history: tuple[Behaviour, ...]
    watches: int
    gifts: int
    gift_value: float
    pair: tuple[int, int]
    day: tuple[int, int, float] | None = None
    exp_at: int | None = None
    commented: bool = False
    left_early: bool = False
    decided: tuple[float, float, int] | None = None

    def to_json(self) -> list[Any]:
        return [
            self.event_id,
            self.ts_ms,
            self.author_id,
            self.live_id,
            [list(b) for b in self.history],
            self.watches,
            self.gifts,
            self.gift_value,
            list(self.pair),
            None if self.day is None else list(self.day),
            self.exp_at,
            self.commented,
            self.left_early,
            None if self.decided is None else list(self.decided),
        ]

    @classmethod
    def from_json(cls, v: list[Any]) -> Pending:
        return cls(
            event_id=str(v[0]),
            ts_ms=int(v[1]),
            author_id=str(v[2]),
            live_id=None if v[3] is None else str(v[3]),
            history=tuple(Behaviour(int(t), str(a), int(k)) for t, a, k in v[4]),
            watches=int(v[5]),
            gifts=int(v[6]),
            gift_value=float(v[7]),
            pair=(int(v[8][0]), int(v[8][1])),
            day=None if v[9] is None else (int(v[9][0]), int(v[9][1]), float(v[9][2])),
            exp_at=None if v[10] is None else int(v[10]),
            commented=bool(v[11]),
            left_early=bool(v[12]),
            decided=None if v[13] is None else (float(v[13][0]), float(v[13][1]), int(v[13][2])),
        )


class UserRow:
    """Everything the joiner keeps per user (one table row).

    Example:
        >>> r = UserRow()
        >>> r.defer(5, "a1", WATCH, 0.0, cfg=FeatureConfig())
        >>> r.state.watches, r.ready_before(6, FeatureConfig()).watches
        (0, 1)
    """

    __slots__ = ("state", "deferred", "tick", "applied_max", "ids", "pending", "exp_day", "exp_at")

    def __init__(self) -> None:
        self.state = UserState()
        self.deferred: list[tuple[str, int, float]] = []  # (author, kind, value) at `tick`
        self.tick: int | None = None
        self.applied_max: int | None = None  # largest ts applied to `state`
        self.ids: dict[str, int] = {}
        self.pending: list[Pending] = []
        self.exp_day: int | None = None  # local day whose expansions are frozen at `exp_at`
        self.exp_at: int | None = None

    @property
    def has_state(self) -> bool:
        """Whether any behaviour was applied (offline: the user exists in `FeatureState`)."""
        return self.applied_max is not None

    def expansion_time(self, ts: int, cfg: FeatureConfig, freeze: bool) -> int:
        """When the user's expansions for a snapshot at `ts` are read: the first snapshot of the
        local day when they are frozen per day (`freeze` records a new day), else `ts`."""
        if not (cfg.freeze_user_day and self.has_state):
            return ts
        day = local_day(ts, cfg.day_offset_ms)
        if self.exp_day == day and self.exp_at is not None:
            return self.exp_at
        if freeze:
            self.exp_day, self.exp_at = day, ts
        return ts

    def _apply(self, ts: int, author: str, kind: int, value: float, cfg: FeatureConfig) -> None:
        self.state.add(
            Behaviour(ts, author, kind),
            value,
            cfg.history,
            cfg.max_pairs_per_user,
            cfg.day_offset_ms,
        )
        if self.applied_max is None or ts > self.applied_max:
            self.applied_max = ts

    def flush_before(self, ts: int, cfg: FeatureConfig) -> None:
        """Apply the deferred events if their millisecond is before `ts`."""
        if self.tick is not None and self.tick < ts:
            for author, kind, value in self.deferred:
                self._apply(self.tick, author, kind, value, cfg)
            self.deferred.clear()
            self.tick = None

    def defer(self, ts: int, author: str, kind: int, value: float, cfg: FeatureConfig) -> None:
        """Take a behaviour: applied once the user's time moves past `ts` (late ones at once)."""
        self.flush_before(ts, cfg)
        if self.tick is None and (self.applied_max is None or ts >= self.applied_max):
            self.tick = ts
        if self.tick == ts:
            self.deferred.append((author, kind, value))
        else:  # late for this user: before the deferred millisecond or the applied ones
            self._apply(ts, author, kind, value, cfg)

    def ready_before(self, ts: int, cfg: FeatureConfig) -> UserState:
        """The user state with every event before `ts` applied, without changing the row (a
        copy when deferred events must be added): what serving reads."""
        if self.tick is None or self.tick >= ts or not self.deferred:
            return self.state
        copy = UserState.from_dict(self.state.to_dict())
        for author, kind, value in self.deferred:
            copy.add(
                Behaviour(self.tick, author, kind),
                value,
                cfg.history,
                cfg.max_pairs_per_user,
                cfg.day_offset_ms,
            )
        return copy

    def dumps(self, partition: int) -> bytes:
        """The table row."""
        row = {
            "p": partition,
            "s": self.state.to_dict(),
            "d": [list(x) for x in self.deferred],
            "t": self.tick,
            "m": self.applied_max,
            "i": self.ids,
            "q": [p.to_json() for p in self.pending],
            "e": [self.exp_day, self.exp_at],
        }
        return json.dumps(row, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes) -> tuple[UserRow, int]:
        """(row, partition) from `dumps` output."""
        d = json.loads(raw)
        r = cls()
        r.state = UserState.from_dict(d["s"])
        r.deferred = [(str(a), int(k), float(v)) for a, k, v in d["d"]]
        r.tick = None if d["t"] is None else int(d["t"])
        r.applied_max = None if d["m"] is None else int(d["m"])
        r.ids = {str(k): int(v) for k, v in d["i"].items()}
        r.pending = [Pending.from_json(p) for p in d["q"]]
        r.exp_day, r.exp_at = d["e"]
        return r, int(d["p"])


@dataclass
class Applied:
    """What applying one event did.

    Attributes:
        outcome: "applied", "duplicate", "late" (refused) or "ignored" (nothing to do).
        detail: why, for a refusal.
        touched: users whose rows changed (write them).
        decided: impressions whose label was decided by this event or the watermark it moved.
    """

    outcome: Outcome
    detail: str = ""
    touched: set[str] = field(default_factory=set)
    decided: int = 0


class FeatureSources(Protocol):
    """The streamer side and the expansions, as of a time (exclusive)."""

    def author_state(self, author_id: str, ts_ms: int) -> AuthorState | None: ...
    def author_expansions(self, author_id: str, ts_ms: int) -> Expansions | None: ...
    def user_expansions(self, user_id: str, ts_ms: int) -> Expansions | None: ...


class PartitionJoiner:
    """The joiner of one user partition: rows, watermark, label decisions, emission queue.

    Args:
        config: the joiner config.
        load: row loader (the table) for users not in memory; None: start empty.

    Example: see the module docstring.
    """

    def __init__(
        self, config: JoinerConfig, load: Callable[[str], UserRow | None] | None = None
    ) -> None:
        self.config = config
        self.load = load
        self.rows: dict[str, UserRow] = {}
        self.max_ts: int | None = None
        self.watermark_ms: int | None = None
        self._deadlines: list[tuple[int, int, str, str]] = []  # (deadline, seq, user, event id)
        self._decided: deque[tuple[float, str, str]] = deque()  # (wall s, user, event id)
        self._seq = 0
        self.counts: dict[str, int] = {}

    # --- rows ---------------------------------------------------------------------------------
    def row(self, user_id: str) -> UserRow:
        """The user's row (loaded on first use, new when the user is unknown)."""
        r = self.rows.get(user_id)
        if r is None:
            loaded = self.load(user_id) if self.load is not None else None
            if loaded is not None:
                self.adopt(user_id, loaded, now_s=None)
                return loaded
            r = self.rows[user_id] = UserRow()
        return r

    def known(self, user_id: str) -> bool:
        """Whether the user has any state here (in memory or in the table)."""
        if user_id in self.rows:
            return True
        r = self.load(user_id) if self.load is not None else None
        if r is not None:
            self.adopt(user_id, r, now_s=None)
            return True
        return False

    def adopt(self, user_id: str, row: UserRow, now_s: float | None) -> None:
        """Take a row read from the table: its waiting impressions join the deadline heap and
        its decided ones the emission queue (due at once: they waited before the restart)."""
        self.rows[user_id] = row
        w = self.config.labels.window_ms
        for p in row.pending:
            if p.decided is None:
                self._push_deadline(p.ts_ms + w, user_id, p.event_id)
            else:
                self._decided.append(
                    (float("-inf") if now_s is None else now_s, user_id, p.event_id)
                )

    def _push_deadline(self, deadline: int, user_id: str, event_id: str) -> None:
        heapq.heappush(self._deadlines, (deadline, self._seq, user_id, event_id))
        self._seq += 1

    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    # --- events -------------------------------------------------------------------------------
    def apply(self, event: BaseModel, now_s: float) -> Applied:
        """Apply one event of the partition (WatchEvent, or UserActivity / GiftEvent /
        CommentEvent of a gift or comment), in event-time order; marks are not events."""
        kind: Literal["gift", "comment", "enter", "leave"]
        if isinstance(event, UserActivity):
            if event.kind == "mark":
                return Applied("ignored")
            assert event.ts_ms is not None and event.user_id is not None
            assert event.author_id is not None and event.event_id is not None
            kind, ts, user, author = event.kind, event.ts_ms, event.user_id, event.author_id
            event_id, value = event.event_id, event.gift_value or 0.0
        elif isinstance(event, GiftEvent):
            kind, ts, user, author = "gift", event.ts_ms, event.user_id, event.author_id
            event_id, value = event.event_id, event.gift_value
        elif isinstance(event, CommentEvent):
            kind, ts, user, author = "comment", event.ts_ms, event.user_id, event.author_id
            event_id, value = event.event_id, 0.0
        elif isinstance(event, WatchEvent):
            kind = "enter" if event.action == "enter" else "leave"
            ts, user, author, event_id = event.ts_ms, event.user_id, event.author_id, event.event_id
            value = 0.0
        else:
            return Applied("ignored", f"not a joiner event: {type(event).__name__}")
        cfg = self.config
        row = self.row(user)
        result = Applied("applied", touched={user})
        if event_id in row.ids:
            self._count("duplicate")
            return Applied("duplicate", f"event {event_id} was applied already")
        if self.watermark_ms is not None and ts < self.watermark_ms - cfg.horizon_ms:
            self._count("late")
            return Applied(
                "late",
                f"ts_ms {ts} is more than {cfg.horizon_ms} ms behind the watermark "
                f"{self.watermark_ms}: its id may be forgotten",
            )
        if kind == "enter":
            assert isinstance(event, WatchEvent)
            problem = self._impression(row, event)
            if problem:
                self._count("late")
                return Applied("late", problem)
        elif kind == "leave":
            assert isinstance(event, WatchEvent)
            if event.watch_ms is not None and event.watch_ms < cfg.labels.watch_threshold_ms:
                window = self._window(row, author, ts)
                if window:
                    window[-1].left_early = True  # the latest stay is the one that ended
        elif kind == "comment":
            for p in self._window(row, author, ts):
                p.commented = True
            row.defer(ts, author, COMMENT, 0.0, cfg.features)
        else:  # gift
            for p in self._window(row, author, ts):
                p.decided = (1.0, float(value), ts)
                self._decided.append((now_s, user, p.event_id))
                result.decided += 1
                self._count("positives")
            row.defer(ts, author, GIFT, float(value), cfg.features)
        row.ids[event_id] = ts
        more = self._advance(ts, now_s)
        result.touched |= more.touched
        result.decided += more.decided
        self._count("applied")
        return result

    def _impression(self, row: UserRow, ev: WatchEvent) -> str:
        cfg = self.config
        t = ev.ts_ms
        if self.watermark_ms is not None and t + cfg.labels.window_ms < self.watermark_ms:
            return f"impression at {t}: its label window ended before the watermark {self.watermark_ms}"
        row.flush_before(t, cfg.features)
        if row.applied_max is not None and row.applied_max >= t:
            return (
                f"impression at {t}: the user's state already holds an event at "
                f"{row.applied_max} (its snapshot would see the future)"
            )
        state = row.state if row.has_state else None
        uf = user_features(ev.user_id, state, None, cfg.features, t)
        exp_at = row.expansion_time(t, cfg.features, freeze=True)
        pw, pg = row.state.pair(ev.author_id)
        row.pending.append(
            Pending(
                event_id=ev.event_id,
                ts_ms=t,
                author_id=ev.author_id,
                live_id=ev.live_id,
                history=uf.history,
                watches=uf.watches,
                gifts=uf.gifts,
                gift_value=uf.gift_value,
                pair=(pw, pg),
                day=(uf.day_watches or 0, uf.day_gifts or 0, uf.day_gift_value or 0.0),
                exp_at=exp_at,
            )
        )
        self._push_deadline(t + cfg.labels.window_ms, ev.user_id, ev.event_id)
        row.defer(t, ev.author_id, WATCH, 0.0, cfg.features)
        self._count("impressions")
        return ""

    def _window(self, row: UserRow, author: str, ts: int) -> list[Pending]:
        w = self.config.labels.window_ms
        return [
            p
            for p in row.pending
            if p.decided is None and p.author_id == author and p.ts_ms <= ts <= p.ts_ms + w
        ]

    def _advance(self, ts: int, now_s: float) -> Applied:
        out = Applied("applied")
        if self.max_ts is not None and ts <= self.max_ts:
            return out
        self.max_ts = ts
        wm = ts - self.config.labels.allowed_lateness_ms
        if self.watermark_ms is not None and wm <= self.watermark_ms:
            return out
        self.watermark_ms = wm
        while self._deadlines and self._deadlines[0][0] < wm:
            _, _, user, event_id = heapq.heappop(self._deadlines)
            row = self.rows.get(user)
            p = (
                None
                if row is None
                else next((x for x in row.pending if x.event_id == event_id), None)
            )
            if p is None or p.decided is not None:
                continue
            p.decided = (0.0, 0.0, wm)
            self._decided.append((now_s, user, event_id))
            out.touched.add(user)
            out.decided += 1
            self._count("negatives")
        return out

    def prune(self, user_id: str) -> None:
        """Forget the user's event ids that fell behind the horizon (before writing the row)."""
        row = self.rows.get(user_id)
        if row is None or self.watermark_ms is None or len(row.ids) < 64:
            return
        limit = self.watermark_ms - self.config.horizon_ms
        # ids are in arrival order, which is event-time order but for late events: drop the
        # expired prefix, O(dropped) per write instead of a scan of the row (a late id behind a
        # newer one is remembered a little longer, never less)
        expired = []
        for e, t in row.ids.items():
            if t >= limit:
                break
            expired.append(e)
        for e in expired:
            del row.ids[e]

    # --- emission -----------------------------------------------------------------------------
    def due(
        self, now_s: float, complete_through: float = float("inf")
    ) -> list[tuple[str, Pending]]:
        """Decided impressions that have settled and whose impression time is at most
        `complete_through` (the author side is complete up to there), oldest decision first;
        they leave their rows (write the rows of the returned users)."""
        out = []
        keep: deque[tuple[float, str, str]] = deque()
        settle = self.config.settle_s
        while self._decided and self._decided[0][0] + settle <= now_s:
            entry = self._decided.popleft()
            _, user, event_id = entry
            row = self.rows.get(user)
            if row is None:
                continue
            for i, p in enumerate(row.pending):
                if p.event_id == event_id and p.decided is not None:
                    if p.ts_ms <= complete_through:
                        out.append((user, row.pending.pop(i)))
                    else:
                        keep.append(entry)
                    break
        keep.extend(self._decided)
        self._decided = keep
        return out

    @property
    def waiting(self) -> int:
        """Impressions waiting for a label or for emission."""
        return sum(len(r.pending) for r in self.rows.values())

    @property
    def unemitted(self) -> int:
        """Impressions decided (labelled) but not emitted yet: waiting for `settle_s` or for the
        streamer side to be complete up to them."""
        return sum(p.decided is not None for r in self.rows.values() for p in r.pending)

    def forget(self, users: Iterable[str]) -> None:
        """Drop users from memory (their partition was revoked)."""
        gone = set(users)
        for u in gone:
            self.rows.pop(u, None)
        self._deadlines = [d for d in self._deadlines if d[2] not in gone]
        heapq.heapify(self._deadlines)
        self._decided = deque(d for d in self._decided if d[1] not in gone)


def complete(
    user_id: str, p: Pending, sources: FeatureSources, features: FeatureConfig
) -> LabeledExample:
    """The labeled example of a decided impression: the user side copied at the impression, the
    streamer side and the expansions read as of the impression time, through the shared
    `user_features` / `author_features` / `snapshot_features`."""
    assert p.decided is not None
    t = p.ts_ms
    exp_at = t if p.exp_at is None else p.exp_at
    day = p.day if p.day is not None else (p.watches, p.gifts, p.gift_value)
    user: UserFeatures = replace(
        user_features(user_id, None, sources.user_expansions(user_id, exp_at), features),
        history=p.history,
        watches=p.watches,
        gifts=p.gifts,
        gift_value=p.gift_value,
        day_watches=day[0],
        day_gifts=day[1],
        day_gift_value=day[2],
    )
    author = author_features(
        p.author_id,
        p.live_id,
        t,
        sources.author_state(p.author_id, t) or AuthorState(),
        sources.author_expansions(p.author_id, t),
        features,
    )
    pairs = UserState()
    pairs.pairs = {p.author_id: [p.pair[0], p.pair[1]]}
    snap = snapshot_features(p.event_id, t, user, author, pairs)
    gift, value, at = p.decided
    labels = (0.0 if p.left_early else 1.0, 1.0 if p.commented else 0.0, gift)
    return LabeledExample(snap, labels, value, at)


def user_side_now(
    user_id: str, row: UserRow | None, sources: FeatureSources, ts_ms: int, features: FeatureConfig
) -> tuple[UserFeatures, UserState | None]:
    """Serving's user side at `ts_ms`: the user's current state (events before `ts_ms`) and
    expansions; returns the features and the state (for the pair counters)."""
    state = None
    if row is not None:
        state = row.ready_before(ts_ms, features)
        if state is row.state and not row.has_state:
            state = None  # nothing applied yet: a new user, as offline
    exp_at = ts_ms if row is None else row.expansion_time(ts_ms, features, freeze=False)
    exp = sources.user_expansions(user_id, exp_at)
    return user_features(user_id, state, exp, features, ts_ms), state
