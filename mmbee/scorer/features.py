"""Point-in-time features: a state machine over events and the one snapshot function.

`FeatureState` consumes events in event-time order (watch, comment, gift, closed segments) and
keeps, per user, the behaviour history and counters; per streamer, counters and the references
(start times) of its closed content segments; the closed segments' features in a `SegmentStore`;
and the gifting graph with its walk cache (metapath expansions). `FeatureState.snapshot` answers
"what did the world look like just before time t" for one (user, streamer) impression:

* an event is applied only once event time has moved past it: events at the current
  millisecond wait in a pending list, so a snapshot at t sees exactly the events with ts < t
  (ties with the impression never leak, whatever order the reader gives them in);
* history and counters are copied into the snapshot (bounded: H behaviours, a few counters);
  segments are referenced by (author, start) keys into the append-only store; expansions are
  copied (5 x top-N ids) because the walk cache keeps one entry per node, not old versions;
* a `FeatureSnapshot` is an immutable value: later events cannot change it.

The joiner (training examples) and the serving agent both build snapshots with
`snapshot_features` from `UserFeatures` / `AuthorFeatures`, so training and serving see the
same features. Offline, `FeatureState` composes them in one process.

Example:
    >>> from mmbee.schemas import GiftEvent, WatchEvent
    >>> st = FeatureState(FeatureConfig())
    >>> t = 1_700_000_000_000
    >>> st.apply(WatchEvent(event_id="w1", ts_ms=t, user_id="u1", author_id="a1", live_id="l1"))
    >>> st.apply(GiftEvent(event_id="g1", ts_ms=t + 5, user_id="u1", author_id="a1", live_id="l1",
    ...                    gift_value=1.0))
    >>> snap = st.snapshot("w2", "u1", "a1", "l1", t + 5)  # the gift at t + 5 is not visible yet
    >>> [b.kind for b in snap.user.history], snap.user.gifts
    ([0], 0)
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from pydantic import BaseModel

from mmbee.graph.metapaths import ExpansionConfig, Expansions, empty_expansions
from mmbee.graph.state import GiftGraph, GraphConfig
from mmbee.graph.walk_cache import CacheConfig, MemoryCacheStore, WalkCache
from mmbee.schemas.events import CommentEvent, GiftEvent, SegmentClosed, WatchEvent
from mmbee.schemas.types import decode_embedding
from mmbee.scorer.batch import AUTHOR_EXPANSIONS, DENSE_FEATURES, USER_EXPANSIONS

__all__ = [
    "DAY_MS",
    "RECENT_WINDOWS_MS",
    "local_day",
    "WATCH",
    "COMMENT",
    "GIFT",
    "FeatureConfig",
    "Behaviour",
    "UserState",
    "AuthorState",
    "UserFeatures",
    "AuthorFeatures",
    "FeatureSnapshot",
    "SegmentStore",
    "MemorySegmentStore",
    "snapshot_features",
    "dense_vector",
    "dense_matrix",
    "FeatureState",
]

WATCH, COMMENT, GIFT = 0, 1, 2
"""Behaviour kinds (`mmbee.scorer.batch.KINDS` order)."""
DAY_MS = 86_400_000
RECENT_WINDOWS_MS = (300_000, 900_000)
"""Windows of the streamer's recent-room counters (gifts and entries in the last 5 and 15 min)."""


def local_day(ts_ms: int, offset_ms: int) -> int:
    """Day number of `ts_ms` in a time zone `offset_ms` east of UTC (days start at local 00:00).

    Example:
        >>> local_day(16 * 3600_000, 8 * 3600_000), local_day(15 * 3600_000, 8 * 3600_000)
        (1, 0)
    """
    return (ts_ms + offset_ms) // DAY_MS


@dataclass(frozen=True)
class FeatureConfig:
    """What a snapshot keeps (the model's input sizes) and how the graph is maintained.

    Attributes:
        history: H, behaviours kept per user (SIM's long sequence; the newest H).
        segments: L, closed segments referenced per streamer (MMBee Table 6: 5, 10, 20).
        expansion_n: N, nodes per metapath expansion.
        max_pairs_per_user: streamers whose (user, streamer) counters a user keeps (oldest
            touched evicted first).
        graph_half_life_ms: time decay of the U2A gifting graph.
        expansion_staleness_ms: the walk cache recomputes an expansion older than this.
        day_offset_ms: time zone of the "day" of the user's day-start counters (ms east of
            UTC; KuaiLive's logs are UTC+8). The user's propensity counters in the dense
            features are those at the start of the impression's local day (see
            `dense_matrix`).
        freeze_user_day: the other user-only inputs are day-start values too: the behaviour
            sequence holds only behaviours before the impression's local day, and the user's
            expansions are those computed at the user's first snapshot of that day. Within a
            day, a user's impressions then differ only in streamer-, pair-, room- and content-
            side inputs (docs/scorer.md, "Within-user ranking").

    Example:
        >>> FeatureConfig(history=20).history
        20
    """

    history: int = 50
    segments: int = 10
    expansion_n: int = 20
    max_pairs_per_user: int = 256
    graph_half_life_ms: int = 7 * 24 * 3600 * 1000
    expansion_staleness_ms: int = 3600 * 1000
    day_offset_ms: int = 8 * 3600 * 1000
    freeze_user_day: bool = True

    def __post_init__(self) -> None:
        for name in ("history", "segments", "expansion_n", "max_pairs_per_user"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class Behaviour(NamedTuple):
    """One entry of a user's behaviour sequence."""

    ts_ms: int
    author_id: str
    kind: int


class UserState:
    """Everything kept per user (a user-partitioned table row in the streaming deployment).

    Besides the running counters it keeps their values at the start of the local day of its
    latest behaviour (`day_start`), so a snapshot can read the user's propensity as of the
    start of the impression's day.

    Example:
        >>> s = UserState()
        >>> s.add(Behaviour(1, "a1", GIFT), 5.0, keep=10, max_pairs=10)
        >>> s.gifts, s.pair("a1"), s.day_start(2)
        (1, (0, 1), (0, 0, 0.0))
        >>> s.day_start(DAY_MS)  # a later day: everything so far
        (0, 1, 5.0)
    """

    __slots__ = (
        "history",
        "watches",
        "gifts",
        "gift_value",
        "pairs",
        "day",
        "day_counts",
        "exp_day",
        "day_expansions",
    )

    def __init__(self) -> None:
        self.history: list[Behaviour] = []
        self.watches = 0
        self.gifts = 0
        self.gift_value = 0.0
        self.pairs: dict[str, list[int]] = {}  # author -> [watches, gifts], insertion = recency
        self.day: int | None = None  # local day of the latest behaviour
        self.day_counts: tuple[int, int, float] = (0, 0, 0.0)  # counters when `day` began
        self.exp_day: int | None = None  # local day of `day_expansions`
        self.day_expansions: Expansions | None = None

    def expansions_for_day(
        self, ts_ms: int, offset_ms: int, fresh: Callable[[], Expansions | None]
    ) -> Expansions | None:
        """The user's expansions frozen for the local day of `ts_ms`: computed by `fresh()` at
        the first call of that day (point in time: before `ts_ms`), reused after."""
        day = local_day(ts_ms, offset_ms)
        if self.exp_day != day:
            self.exp_day = day
            self.day_expansions = fresh()
        return self.day_expansions

    def day_start(self, ts_ms: int, offset_ms: int = 0) -> tuple[int, int, float]:
        """(watches, gifts, gift_value) at the start of the local day of `ts_ms` (the state
        must hold only behaviours before `ts_ms`)."""
        if self.day is not None and local_day(ts_ms, offset_ms) == self.day:
            return self.day_counts
        return (self.watches, self.gifts, self.gift_value)

    def add(
        self,
        b: Behaviour,
        gift_value: float,
        keep: int,
        max_pairs: int,
        day_offset_ms: int = 0,
    ) -> None:
        """Add a behaviour and update the counters (history trimmed to the newest `keep`).

        The history stays ordered oldest first: a behaviour older than the newest one (a late
        event in a stream; never offline, where events come in time order) is inserted at its
        place."""
        day = local_day(b.ts_ms, day_offset_ms)
        if self.day is None or day > self.day:
            self.day = day
            self.day_counts = (self.watches, self.gifts, self.gift_value)
        if self.history and b < self.history[-1]:
            bisect.insort(self.history, b)
        else:
            self.history.append(b)
        if len(self.history) > 3 * keep:
            # keep the newest `keep` behaviours before the current local day (what a day-frozen
            # snapshot reads) and the newest `keep` of the day (what a live one reads)
            start = self.day * DAY_MS - day_offset_ms
            cut = bisect.bisect_left(self.history, (start,))
            self.history = (
                self.history[max(0, cut - keep) : cut]
                + self.history[max(cut, len(self.history) - keep) :]
            )
        pair = self.pairs.pop(b.author_id, None) or [0, 0]
        self.pairs[b.author_id] = pair  # move to the most recent end
        if b.kind == WATCH:
            self.watches += 1
            pair[0] += 1
        elif b.kind == GIFT:
            self.gifts += 1
            self.gift_value += gift_value
            pair[1] += 1
        if len(self.pairs) > max_pairs:
            del self.pairs[next(iter(self.pairs))]

    def pair(self, author_id: str) -> tuple[int, int]:
        """(watches, gifts) of this user on `author_id` so far."""
        p = self.pairs.get(author_id)
        return (0, 0) if p is None else (p[0], p[1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-plain form (for a table row)."""
        return {
            "history": [list(b) for b in self.history],
            "watches": self.watches,
            "gifts": self.gifts,
            "gift_value": self.gift_value,
            "pairs": [[a, p[0], p[1]] for a, p in self.pairs.items()],
            "day": self.day,
            "day_counts": list(self.day_counts),
            "exp_day": self.exp_day,
            "day_expansions": None
            if self.day_expansions is None
            else {k: [[n, w] for n, w in v] for k, v in self.day_expansions.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UserState:
        """Inverse of `to_dict`."""
        s = cls()
        s.history = [Behaviour(int(t), str(a), int(k)) for t, a, k in d["history"]]
        s.watches, s.gifts, s.gift_value = (
            int(d["watches"]),
            int(d["gifts"]),
            float(d["gift_value"]),
        )
        s.pairs = {str(a): [int(w), int(g)] for a, w, g in d["pairs"]}
        day = d.get("day")
        s.day = None if day is None else int(day)
        w, g, v = d.get("day_counts", (0, 0, 0.0))
        s.day_counts = (int(w), int(g), float(v))
        exp_day = d.get("exp_day")
        s.exp_day = None if exp_day is None else int(exp_day)
        exps = d.get("day_expansions")
        s.day_expansions = (
            None
            if exps is None
            else {str(k): [(str(n), float(w)) for n, w in v] for k, v in exps.items()}
        )
        return s


class AuthorState:
    """Everything kept per streamer: counters and its closed segments' keys, newest last.

    `recent_gifts` / `recent_watches` hold the times of the gifts and entries of the last
    `RECENT_WINDOWS_MS[-1]` (sorted), for the recent-room counters.

    Example:
        >>> s = AuthorState()
        >>> s.add_segment("l1", 0, 30_000, keep=2)
        >>> s.segment_starts("l1", 30_000)
        (0,)
        >>> s.add_recent(s.recent_gifts, 1_000); s.add_recent(s.recent_gifts, 400_000)
        >>> s.recent(s.recent_gifts, 500_000)
        (1, 2)
    """

    __slots__ = ("watches", "gifts", "segments", "recent_gifts", "recent_watches")

    def __init__(self) -> None:
        self.watches = 0
        self.gifts = 0
        self.segments: list[tuple[str, int, int]] = []  # (live_id, start_ms, end_ms)
        self.recent_gifts: list[int] = []
        self.recent_watches: list[int] = []

    @staticmethod
    def add_recent(times: list[int], ts_ms: int) -> None:
        """Insert an event time (kept sorted) and forget times older than the longest window
        before the newest one."""
        bisect.insort(times, ts_ms)
        horizon = times[-1] - RECENT_WINDOWS_MS[-1]
        if times[0] < horizon:
            del times[: bisect.bisect_left(times, horizon)]

    @staticmethod
    def recent(times: list[int], ts_ms: int) -> tuple[int, ...]:
        """How many of `times` fall in [ts_ms - w, ts_ms) for each w in `RECENT_WINDOWS_MS`."""
        hi = bisect.bisect_left(times, ts_ms)
        return tuple(hi - bisect.bisect_left(times, ts_ms - w) for w in RECENT_WINDOWS_MS)

    def add_segment(self, live_id: str, start_ms: int, end_ms: int, keep: int) -> None:
        """Record a closed segment (idempotent; kept sorted by start, newest `keep` per live)."""
        key = (live_id, start_ms, end_ms)
        if key in self.segments:
            return
        self.segments.append(key)
        self.segments.sort(key=lambda s: (s[1], s[0]))
        if len(self.segments) > 2 * keep:
            del self.segments[: len(self.segments) - keep]

    def segment_starts(
        self, live_id: str | None, ts_ms: int, keep: int | None = None
    ) -> tuple[int, ...]:
        """Start times of the closed segments of `live_id` (None: the latest live) that ended at
        or before `ts_ms`, oldest first, at most `keep`."""
        done = [s for s in self.segments if s[2] <= ts_ms]
        if not done:
            return ()
        live = done[-1][0] if live_id is None else live_id
        starts = tuple(s[1] for s in done if s[0] == live)
        return starts if keep is None else starts[-keep:]

    def to_dict(self) -> dict[str, Any]:
        """JSON-plain form (for a table row)."""
        return {
            "watches": self.watches,
            "gifts": self.gifts,
            "segments": [list(s) for s in self.segments],
            "recent_gifts": list(self.recent_gifts),
            "recent_watches": list(self.recent_watches),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuthorState:
        """Inverse of `to_dict`."""
        s = cls()
        s.watches, s.gifts = int(d["watches"]), int(d["gifts"])
        s.segments = [(str(lv), int(a), int(b)) for lv, a, b in d["segments"]]
        s.recent_gifts = [int(t) for t in d.get("recent_gifts", [])]
        s.recent_watches = [int(t) for t in d.get("recent_watches", [])]
        return s


@dataclass(frozen=True)
class UserFeatures:
    """The user side of a snapshot (shared by every candidate of one score request).

    Attributes:
        user_id: the viewer.
        history: the newest H behaviours strictly before the snapshot time, oldest first.
        watches, gifts, gift_value: the user's counters before the snapshot time.
        expansions: u2a2u, u2a2u2a, u2a2a as (id, weight) tuples, heaviest first.
        day_watches, day_gifts, day_gift_value: the same counters at the start of the
            snapshot's local day (None: equal to the running ones). The dense features read
            these, so the user-only terms stay constant within a day (see `dense_matrix`).
    """

    user_id: str
    history: tuple[Behaviour, ...] = ()
    watches: int = 0
    gifts: int = 0
    gift_value: float = 0.0
    expansions: tuple[tuple[tuple[str, float], ...], ...] = ((), (), ())
    day_watches: int | None = None
    day_gifts: int | None = None
    day_gift_value: float | None = None


@dataclass(frozen=True)
class AuthorFeatures:
    """The streamer side of a snapshot.

    Attributes:
        author_id: the target streamer; live_id: its live session (None: the latest one).
        watches, gifts: the streamer's counters before the snapshot time.
        segment_starts: keys (start_ms) of its closed segments in the segment store, oldest
            first, at most L: references, never copies of the features.
        expansions: a2a, a2u2a as (id, weight) tuples.
        recent_gifts, recent_watches: gifts and entries in the streamer's room within each of
            `RECENT_WINDOWS_MS` before the snapshot time (a room that is gifting now is likely
            in a hot moment).
        category: the live session's content category (KuaiLive room.csv
            `live_content_category`, announced when the live starts, so point-in-time safe);
            None when unknown. It becomes `SegmentBatch.context` (a one-hot) for encoders with a
            context-aware prior (VBF++).
    """

    author_id: str
    live_id: str | None = None
    watches: int = 0
    gifts: int = 0
    segment_starts: tuple[int, ...] = ()
    expansions: tuple[tuple[tuple[str, float], ...], ...] = ((), ())
    category: str | None = None
    recent_gifts: tuple[int, ...] = (0, 0)
    recent_watches: tuple[int, ...] = (0, 0)


@dataclass(frozen=True)
class FeatureSnapshot:
    """Everything the GTR model sees of one impression, as it was at `ts_ms` (exclusive).

    Example:
        >>> s = FeatureSnapshot("w1", 1_700_000_000_000, UserFeatures("u1"), AuthorFeatures("a1"))
        >>> dense_vector(s).shape
        (15,)
    """

    event_id: str
    ts_ms: int
    user: UserFeatures
    author: AuthorFeatures
    pair_watches: int = 0
    pair_gifts: int = 0

    @property
    def user_id(self) -> str:
        return self.user.user_id

    @property
    def author_id(self) -> str:
        return self.author.author_id

    def expansions(self) -> tuple[tuple[tuple[str, float], ...], ...]:
        """The five expansions in `mmbee.scorer.batch.EXPANSIONS` order."""
        return self.user.expansions + self.author.expansions


def _freeze_expansions(
    exp: Expansions, names: Sequence[str], n: int
) -> tuple[tuple[tuple[str, float], ...], ...]:
    return tuple(tuple((str(k), float(w)) for k, w in exp.get(name, [])[:n]) for name in names)


def user_features(
    user_id: str,
    state: UserState | None,
    expansions: Expansions | None,
    config: FeatureConfig,
    ts_ms: int | None = None,
) -> UserFeatures:
    """The user side from the user's state and cached expansions (state may be None: new user).

    `ts_ms` (the snapshot time) selects the day of the day-start counters; None leaves them
    equal to the running counters.
    """
    exp = _freeze_expansions(
        expansions or empty_expansions("user"), USER_EXPANSIONS, config.expansion_n
    )
    if state is None:
        return UserFeatures(user_id, expansions=exp, day_watches=0, day_gifts=0, day_gift_value=0.0)
    dw, dg, dv = (
        (state.watches, state.gifts, state.gift_value)
        if ts_ms is None
        else state.day_start(ts_ms, config.day_offset_ms)
    )
    history = state.history
    if config.freeze_user_day and ts_ms is not None:
        start = (local_day(ts_ms, config.day_offset_ms) * DAY_MS) - config.day_offset_ms
        history = history[: bisect.bisect_left(history, (start,))]
    return UserFeatures(
        user_id=user_id,
        history=tuple(history[-config.history :]),
        watches=state.watches,
        gifts=state.gifts,
        gift_value=state.gift_value,
        expansions=exp,
        day_watches=dw,
        day_gifts=dg,
        day_gift_value=dv,
    )


def author_features(
    author_id: str,
    live_id: str | None,
    ts_ms: int,
    state: AuthorState | None,
    expansions: Expansions | None,
    config: FeatureConfig,
    category: str | None = None,
) -> AuthorFeatures:
    """The streamer side from its state and cached expansions (state may be None: unknown).

    `category` is the live session's content category when known (see `AuthorFeatures`).
    """
    exp = _freeze_expansions(
        expansions or empty_expansions("author"), AUTHOR_EXPANSIONS, config.expansion_n
    )
    if state is None:
        return AuthorFeatures(author_id, live_id, expansions=exp, category=category)
    return AuthorFeatures(
        author_id=author_id,
        live_id=live_id,
        watches=state.watches,
        gifts=state.gifts,
        segment_starts=state.segment_starts(live_id, ts_ms, config.segments),
        expansions=exp,
        category=category,
        recent_gifts=state.recent(state.recent_gifts, ts_ms),
        recent_watches=state.recent(state.recent_watches, ts_ms),
    )


def snapshot_features(
    event_id: str,
    ts_ms: int,
    user: UserFeatures,
    author: AuthorFeatures,
    user_state: UserState | None,
) -> FeatureSnapshot:
    """THE snapshot function: used by the offline state machine, the joiner and serving."""
    pw, pg = user_state.pair(author.author_id) if user_state is not None else (0, 0)
    return FeatureSnapshot(event_id, ts_ms, user, author, pw, pg)


def dense_vector(s: FeatureSnapshot) -> np.ndarray:
    """The dense counters of a snapshot, `DENSE_FEATURES` order: (15,) float32 (see
    `dense_matrix`)."""
    return dense_matrix([s])[0]


def dense_matrix(snaps: Sequence[FeatureSnapshot]) -> np.ndarray:
    """`dense_vector` of many snapshots at once: (N, len(DENSE_FEATURES)) float32.

    Rates rather than raw counts where possible (a smoothed gift rate does not drift as counters
    grow over the days of a log, a count does):
    * user: gift rate per impression, gift count, value per gift, has-gifted, all as of the
      start of the impression's local day (`UserFeatures.day_*`). Within one day the user-only
      terms are then constant, so a user's impressions of that day are ranked by the
      streamer-, pair- and content-side terms alone: with running counters, a user's first
      gift of the day lifts every later (mostly negative) impression of theirs above the
      positive one (measured: within-user AUC 0.912 vs 0.900 for a logistic regression,
      global AUC -0.0012; docs/scorer.md);
    * streamer: gift rate per impression and impressions so far; gifts and entries in its
      room in the last 5 and 15 minutes and the 15-minute gift rate (a hot moment shows);
    * pair: watches and gifts of this user on this streamer so far, and the pair's share of
      the user's watches (day start) (a fan's idol draws most of their visits);
    * the hour of day (UTC).
    """
    n_recent = len(RECENT_WINDOWS_MS)
    v = np.array(
        [
            (
                x.user.gifts if x.user.day_gifts is None else x.user.day_gifts,
                x.user.watches if x.user.day_watches is None else x.user.day_watches,
                x.user.gift_value if x.user.day_gift_value is None else x.user.day_gift_value,
                x.author.gifts,
                x.author.watches,
                x.pair_watches,
                x.pair_gifts,
                x.ts_ms // 1000 % 86400,
                *x.author.recent_gifts[:n_recent],
                *x.author.recent_watches[:n_recent],
            )
            for x in snaps
        ],
        dtype=np.float64,
    ).reshape(len(snaps), 8 + 2 * n_recent)
    ug, uw, uv, ag, aw, pw, pg, sec = v[:, :8].T
    rg = v[:, 8 : 8 + n_recent]  # (N, W) recent room gifts per window
    rw = v[:, 8 + n_recent :]  # (N, W) recent room entries
    angle = 2 * np.pi * (sec / 3600.0) / 24
    out = np.stack(
        [
            np.log((ug + 0.05) / (uw + 5.0)),
            np.log1p(ug),
            np.log1p(uv / np.maximum(ug, 1)),
            (ug > 0).astype(np.float64),
            np.log((ag + 0.1) / (aw + 10.0)),
            np.log1p(aw),
            np.log1p(pw),
            np.log1p(pg),
            np.log((pw + 0.1) / (uw + pw + 1.0)),
            np.log1p(rg[:, 0]),
            np.log1p(rg[:, -1]),
            np.log1p(rw[:, 0]),
            np.log((rg[:, -1] + 0.1) / (rw[:, -1] + 1.0)),
            np.sin(angle),
            np.cos(angle),
        ],
        axis=1,
    ).astype(np.float32)
    assert out.shape[1] == len(DENSE_FEATURES)
    return out


class SegmentStore(Protocol):
    """Closed segments' features by (author, start_ms): append-only, so references stay valid."""

    def put(self, segment: SegmentClosed) -> int: ...
    def row(self, author_id: str, start_ms: int) -> int | None: ...
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...


class MemorySegmentStore:
    """In-memory segment store: decoded features in growable row-major arrays.

    `arrays()` returns (visual (S + 1, d_v), speech (S + 1, d_s), comments (S + 1, d_t),
    present (S + 1, 3)) whose last row is all zeros / False, so a padding index of -1 gathers
    an empty segment without masking; `row(author, start)` the row of a segment. Putting the
    same key twice keeps the first copy (append-only: references never change meaning).
    `dtype` "float16" halves memory (embeddings keep ~3 significant digits).

    Example:
        >>> st = MemorySegmentStore(frame_dim=4, text_dim=2)
        >>> seg = SegmentClosed.model_validate(dict(author_id="a1", live_id="l1",
        ...     start_ms=1_700_000_000_000, end_ms=1_700_000_030_000, n_frames=1, n_comments=0,
        ...     n_asr=0, frame_mean=[1.0, 0.0, 0.0, 0.0]), context={"frame_dim": 4})
        >>> st.put(seg), st.row("a1", 1_700_000_000_000), st.arrays()[0].shape
        (0, 0, (2, 4))
    """

    def __init__(self, frame_dim: int = 1280, text_dim: int = 384, dtype: str = "float32") -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
        self.frame_dim, self.text_dim, self.dtype = frame_dim, text_dim, dtype
        self._index: dict[tuple[str, int], int] = {}
        self._n = 0
        self._cap = 1
        self._visual = np.zeros((1, frame_dim), dtype)
        self._speech = np.zeros((1, text_dim), dtype)
        self._comments = np.zeros((1, text_dim), dtype)
        self._present = np.zeros((1, 3), bool)

    def __len__(self) -> int:
        return self._n

    def _grow(self) -> None:
        cap = max(1024, 2 * self._cap)
        for name in ("_visual", "_speech", "_comments", "_present"):
            old = getattr(self, name)
            new = np.zeros((cap, old.shape[1]), old.dtype)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)
        self._cap = cap

    def put(self, segment: SegmentClosed) -> int:
        """Store a closed segment; returns its row."""
        key = (segment.author_id, segment.start_ms)
        row = self._index.get(key)
        if row is not None:
            return row
        if self._n + 1 >= self._cap:  # keep one all-zero row after the last
            self._grow()
        row = self._n
        for i, (vec, arr, dim) in enumerate(
            (
                (segment.frame_mean, self._visual, self.frame_dim),
                (segment.asr_mean, self._speech, self.text_dim),
                (segment.comment_mean, self._comments, self.text_dim),
            )
        ):
            if vec is not None:
                v = decode_embedding(vec)
                if v.shape[0] != dim:
                    raise ValueError(f"segment {key}: embedding width {v.shape[0]}, expected {dim}")
                arr[row] = v
                self._present[row, i] = True
        self._index[key] = row
        self._n += 1
        return row

    def row(self, author_id: str, start_ms: int) -> int | None:
        """Row of a stored segment, or None."""
        return self._index.get((author_id, start_ms))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Views of the stored rows plus one trailing padding row: visual, speech, comments,
        present (`MODALITIES` order)."""
        n = self._n + 1
        return self._visual[:n], self._speech[:n], self._comments[:n], self._present[:n]

    def save(self, path: Path | str) -> None:
        """Write the store to one `.npz` file."""
        n = self._n
        keys = sorted(self._index.items(), key=lambda kv: kv[1])
        np.savez(
            path,
            visual=self._visual[:n],
            speech=self._speech[:n],
            comments=self._comments[:n],
            present=self._present[:n],
            authors=np.array([k[0] for k, _ in keys], dtype=object).astype(str),
            starts=np.array([k[1] for k, _ in keys], dtype=np.int64),
        )

    @classmethod
    def load(cls, path: Path | str) -> MemorySegmentStore:
        """Read a store written by `save`."""
        with np.load(path) as z:
            visual = z["visual"]
            st = cls(visual.shape[1], z["speech"].shape[1], str(visual.dtype))
            n = visual.shape[0]
            st._cap = n + 1
            st._n = n
            for name in ("visual", "speech", "comments", "present"):
                arr = z[name]
                full = np.zeros((n + 1, arr.shape[1]), arr.dtype)
                full[:n] = arr
                setattr(st, "_" + name, full)
            st._index = {
                (str(a), int(t)): i
                for i, (a, t) in enumerate(zip(z["authors"], z["starts"], strict=True))
            }
        return st


class FeatureState:
    """The offline point-in-time state machine: apply events in event-time order, snapshot any
    impression. Events at the current millisecond are held back until time moves on; an event
    id seen before is applied once (`duplicates` counts the rest).

    Example: see the module docstring.
    """

    def __init__(
        self,
        config: FeatureConfig,
        store: MemorySegmentStore | None = None,
        cache: WalkCache | None = None,
        live_categories: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.live_categories: dict[str, str] = dict(live_categories or {})
        """live id -> content category (room.csv; a live's category is announced at its start)."""
        self.store = store if store is not None else MemorySegmentStore()
        self.cache = cache or WalkCache(
            GiftGraph(GraphConfig(half_life_ms=config.graph_half_life_ms)),
            MemoryCacheStore(),
            CacheConfig(max_staleness_ms=config.expansion_staleness_ms),
            ExpansionConfig(top_n=config.expansion_n),
        )
        self.users: dict[str, UserState] = {}
        self.authors: dict[str, AuthorState] = {}
        self._pending: list[BaseModel] = []
        self._pending_ts: int | None = None
        self._seen: set[str] = set()
        self.applied = 0
        self.duplicates = 0

    # --- updates ----------------------------------------------------------------------------
    def apply(self, event: BaseModel, at_ms: int | None = None) -> None:
        """Take one event: WatchEvent, CommentEvent, GiftEvent or SegmentClosed (others ignored).

        `at_ms` is when the event became known; default its `ts_ms`. Pass it for a
        SegmentClosed: the event time at which the segment buffer closed it (its watermark),
        since a segment is not visible before it is closed (default: its `end_ms`).
        Events must come in non-decreasing time, except late ones (before the current
        millisecond), which are applied at once: they precede every later snapshot anyway.
        """
        ts = at_ms if at_ms is not None else _event_time(event)
        if ts is None:
            return
        if self._pending_ts is None or ts > self._pending_ts:
            self._flush()
            self._pending_ts = ts
            self._pending.append(event)
        elif ts == self._pending_ts:
            self._pending.append(event)
        else:
            self._apply_now(event)

    def advance(self, ts_ms: int) -> None:
        """Apply every held-back event older than `ts_ms` (snapshot does this itself)."""
        if self._pending_ts is not None and self._pending_ts < ts_ms:
            self._flush()

    def _flush(self) -> None:
        for ev in self._pending:
            self._apply_now(ev)
        self._pending.clear()

    def _apply_now(self, ev: BaseModel) -> None:
        cfg = self.config
        if isinstance(ev, SegmentClosed):
            self.store.put(ev)
            self._author(ev.author_id).add_segment(ev.live_id, ev.start_ms, ev.end_ms, cfg.segments)
            self.applied += 1
            return
        event_id = getattr(ev, "event_id", None)
        if event_id is not None:
            if event_id in self._seen:
                self.duplicates += 1
                return
            self._seen.add(event_id)
        day = cfg.day_offset_ms
        if isinstance(ev, WatchEvent):
            if ev.action != "enter":
                return
            self._user(ev.user_id).add(
                Behaviour(ev.ts_ms, ev.author_id, WATCH),
                0.0,
                cfg.history,
                cfg.max_pairs_per_user,
                day,
            )
            author = self._author(ev.author_id)
            author.watches += 1
            author.add_recent(author.recent_watches, ev.ts_ms)
        elif isinstance(ev, CommentEvent):
            self._user(ev.user_id).add(
                Behaviour(ev.ts_ms, ev.author_id, COMMENT),
                0.0,
                cfg.history,
                cfg.max_pairs_per_user,
                day,
            )
        elif isinstance(ev, GiftEvent):
            self._user(ev.user_id).add(
                Behaviour(ev.ts_ms, ev.author_id, GIFT),
                ev.gift_value,
                cfg.history,
                cfg.max_pairs_per_user,
                day,
            )
            author = self._author(ev.author_id)
            author.gifts += 1
            author.add_recent(author.recent_gifts, ev.ts_ms)
            self.cache.add_gift(ev.user_id, ev.author_id, ev.ts_ms, ev.gift_value)
        self.applied += 1

    def _user(self, user_id: str) -> UserState:
        s = self.users.get(user_id)
        if s is None:
            s = self.users[user_id] = UserState()
        return s

    def _author(self, author_id: str) -> AuthorState:
        s = self.authors.get(author_id)
        if s is None:
            s = self.authors[author_id] = AuthorState()
        return s

    # --- reads ------------------------------------------------------------------------------
    def user_side(self, user_id: str, ts_ms: int) -> UserFeatures:
        """The user side as of `ts_ms` (exclusive)."""
        self.advance(ts_ms)

        def fresh() -> Expansions | None:
            known = user_id in self.cache.graph.user_out
            return self.cache.user_expansions(user_id, ts_ms) if known else None

        state = self.users.get(user_id)
        if self.config.freeze_user_day and state is not None:
            exp = state.expansions_for_day(ts_ms, self.config.day_offset_ms, fresh)
        else:
            exp = fresh()
        return user_features(user_id, state, exp, self.config, ts_ms)

    def author_side(self, author_id: str, live_id: str | None, ts_ms: int) -> AuthorFeatures:
        """The streamer side as of `ts_ms` (exclusive)."""
        self.advance(ts_ms)
        known = author_id in self.cache.graph.author_in
        exp = self.cache.author_expansions(author_id, ts_ms) if known else None
        state = self.authors.get(author_id)
        live = live_id
        if live is None and state is not None and state.segments:
            live = state.segments[-1][0]  # a score request: the streamer's latest live
        category = self.live_categories.get(live) if live is not None else None
        return author_features(author_id, live_id, ts_ms, state, exp, self.config, category)

    def snapshot(
        self, event_id: str, user_id: str, author_id: str, live_id: str | None, ts_ms: int
    ) -> FeatureSnapshot:
        """Features of an impression at `ts_ms`, from events strictly before it."""
        user = self.user_side(user_id, ts_ms)
        author = self.author_side(author_id, live_id, ts_ms)
        return snapshot_features(event_id, ts_ms, user, author, self.users.get(user_id))

    def segments_of(self, snap: FeatureSnapshot) -> Iterator[int]:
        """Store rows of the segments a snapshot refers to (oldest first)."""
        for start in snap.author.segment_starts:
            row = self.store.row(snap.author_id, start)
            if row is not None:
                yield row


def _event_time(ev: BaseModel) -> int | None:
    if isinstance(ev, SegmentClosed):
        return ev.end_ms
    ts = getattr(ev, "ts_ms", None)
    return int(ts) if ts is not None else None
