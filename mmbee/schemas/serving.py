"""Messages of the joiner's and serving's topics: repartitioned activity, author timelines, models.

* `UserActivity` (`user.activity`, key user_id): gifts and comments re-keyed by the viewer, so
  the user-partitioned joiner sees them next to `live.watch`; and *marks*, the forwarder's
  progress per source partition ("every event of live.gifts:3 up to ts W has been forwarded"),
  which give the joiner an event-time frontier across the repartition hop.
* `AuthorActivity` (`author.activity`, key author_id): watch "enter" events re-keyed by the
  streamer, for the author-side counters.
* `AuthorTimeline` (`author.state`, key author_id, compacted): a streamer's counters as a
  time index: base counts before `base_ms` plus the sorted event times since, so a reader can
  answer "how many watches / gifts before time t" for any t after `base_ms`. The latest message
  per author is enough (the topic is compacted): it holds its own recent history.
* `ModelVersion` (`model.versions`, key model_name, compacted): a checkpoint to serve.

Example:
    >>> a = UserActivity(kind="gift", event_id="g1", ts_ms=1_700_000_000_000, user_id="u1",
    ...                  author_id="a1", live_id="l1", gift_value=2.0)
    >>> UserActivity.model_validate_json(a.model_dump_json()) == a
    True
    >>> AuthorTimeline(author_id="a1", as_of_ms=5, base_ms=0, watch_ts=[1, 4]).counts_before(4)
    (1, 0)
"""

from __future__ import annotations

import bisect
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmbee.schemas.types import EventId, Id, TsMs

__all__ = [
    "MAX_MARKS",
    "MAX_TIMELINE",
    "UserActivity",
    "AuthorActivity",
    "AuthorTimeline",
    "ModelVersion",
]

MAX_MARKS = 4096
"""Source partitions one mark message may report on."""
MAX_TIMELINE = 200_000
"""Event times one author timeline may hold (a very hot streamer over the horizon)."""

_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

SourcePartition = Annotated[
    str, Field(min_length=3, max_length=160, pattern=r"^[A-Za-z0-9_.\-]+:\d+$")
]
"""'<catalogue topic>:<partition>', e.g. 'live.gifts:3'."""
MAX_OFFSET = 2**63 - 1
"""The largest Kafka offset (int64)."""


def _check_origin(kind: str, source: str | None, offset: int | None) -> None:
    """`source` and `source_offset` (the message a forwarded event was read from) come
    together, and never on a mark."""
    if kind == "mark" and (source is not None or offset is not None):
        raise ValueError("a mark carries no source nor source_offset")
    if (source is None) != (offset is None):
        raise ValueError("source and source_offset come together (or neither)")


class UserActivity(BaseModel):
    """A gift or comment on the viewer's partition, or a forwarder's progress mark.

    `kind` "gift" / "comment": the original event's id, time, viewer, streamer, live (and the
    gift's value), and optionally its origin: `source` ("live.gifts:3") and `source_offset`,
    the message it was forwarded from (the joiner recognises a re-forward by it,
    `mmbee.state.received`). `kind` "mark": `marks` maps source partitions to the largest
    event time forwarded from them (None: nothing waits there now); marks are sent to every
    partition.
    """

    model_config = _STRICT

    kind: Literal["gift", "comment", "mark"]
    event_id: EventId | None = None
    ts_ms: TsMs | None = None
    user_id: Id | None = None
    author_id: Id | None = None
    live_id: Id | None = None
    gift_value: float | None = Field(default=None, gt=0, le=1e7)
    marks: dict[SourcePartition, TsMs | None] = Field(default_factory=dict, max_length=MAX_MARKS)
    source: SourcePartition | None = None
    source_offset: int | None = Field(default=None, ge=0, le=MAX_OFFSET)

    @model_validator(mode="after")
    def _shape(self) -> Self:
        event = (self.event_id, self.ts_ms, self.user_id, self.author_id, self.live_id)
        _check_origin(self.kind, self.source, self.source_offset)
        if self.kind == "mark":
            if any(v is not None for v in event) or self.gift_value is not None:
                raise ValueError("a mark carries only `marks`")
            if not self.marks:
                raise ValueError("a mark needs at least one source partition")
            return self
        if any(v is None for v in event):
            raise ValueError(f"a {self.kind} needs event_id, ts_ms, user_id, author_id, live_id")
        if self.marks:
            raise ValueError(f"a {self.kind} carries no marks")
        if (self.kind == "gift") != (self.gift_value is not None):
            raise ValueError("gift_value is set on gifts and only on gifts")
        return self


class AuthorActivity(BaseModel):
    """A watch "enter" re-keyed by the streamer (for the author-side watch counter), with
    optionally its origin (`source` "live.watch:<p>", `source_offset`: the message it was
    forwarded from), or a mark: per `live.watch` partition the largest event time forwarded
    (None: nothing waiting)."""

    model_config = _STRICT

    kind: Literal["watch", "mark"] = "watch"
    event_id: EventId | None = None
    ts_ms: TsMs | None = None
    author_id: Id | None = None
    user_id: Id | None = None
    live_id: Id | None = None
    marks: dict[SourcePartition, TsMs | None] = Field(default_factory=dict, max_length=MAX_MARKS)
    source: SourcePartition | None = None
    source_offset: int | None = Field(default=None, ge=0, le=MAX_OFFSET)

    @model_validator(mode="after")
    def _shape(self) -> Self:
        event = (self.event_id, self.ts_ms, self.author_id, self.user_id, self.live_id)
        _check_origin(self.kind, self.source, self.source_offset)
        if self.kind == "mark":
            if any(v is not None for v in event) or not self.marks:
                raise ValueError("a mark carries only (non-empty) `marks`")
        elif any(v is None for v in event) or self.marks:
            raise ValueError("a watch needs event_id, ts_ms, author_id, user_id, live_id")
        return self


class AuthorTimeline(BaseModel):
    """A streamer's watch and gift counts as a time index (see the module docstring), or the
    author agent's progress mark for one of its partitions.

    Counts before t (events with ts < t) are exact for t >= `base_ms`; earlier ones are folded
    into `base_watches` / `base_gifts`. `as_of_ms` is the largest event time applied. A mark
    (`kind` "mark", key "~mark~<partition>", sent to that partition after its timelines) says
    the author events of that partition up to `as_of_ms` are all in the timelines published
    before it (`as_of_ms` None: nothing waits there).
    """

    model_config = _STRICT

    kind: Literal["timeline", "mark"] = "timeline"
    author_id: Id | None = None
    partition: int | None = Field(default=None, ge=0)
    as_of_ms: int | None = Field(default=None, ge=0)
    base_ms: int = Field(default=0, ge=0)
    base_watches: int = Field(default=0, ge=0)
    base_gifts: int = Field(default=0, ge=0)
    watch_ts: list[int] = Field(default_factory=list, max_length=MAX_TIMELINE)
    gift_ts: list[int] = Field(default_factory=list, max_length=MAX_TIMELINE)

    @model_validator(mode="after")
    def _sorted(self) -> Self:
        if (self.kind == "mark") != (self.author_id is None):
            raise ValueError("a timeline has an author_id, a mark has none")
        if (self.kind == "mark") != (self.partition is not None):
            raise ValueError("a mark has a partition, a timeline has none")
        if self.kind == "timeline" and self.as_of_ms is None:
            raise ValueError("a timeline needs as_of_ms")
        for name in ("watch_ts", "gift_ts"):
            ts = getattr(self, name)
            if any(b < a for a, b in zip(ts, ts[1:], strict=False)):
                raise ValueError(f"{name} is not sorted")
            if ts and ts[0] < self.base_ms:
                raise ValueError(f"{name} holds a time before base_ms")
        return self

    def counts_before(self, ts_ms: int) -> tuple[int, int]:
        """(watches, gifts) with event time < `ts_ms` (exact when ts_ms >= base_ms)."""
        return (
            self.base_watches + bisect.bisect_left(self.watch_ts, ts_ms),
            self.base_gifts + bisect.bisect_left(self.gift_ts, ts_ms),
        )


class ModelVersion(BaseModel):
    """A GTR checkpoint announced for serving. Topic `model.versions`, key `model_name`.

    `path` must be readable by the serving workers (a shared volume); `sha256` is checked on
    load, so a half-copied or replaced file is refused instead of served.
    """

    model_config = _STRICT

    model_name: Id
    version: Id
    path: str = Field(min_length=1, max_length=4096)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at_ms: TsMs
    source: Literal["train", "refresh", "manual"] = "manual"
    parent_version: Id | None = None
    examples: int = Field(default=0, ge=0)
    metrics: dict[str, float] = Field(default_factory=dict, max_length=64)
