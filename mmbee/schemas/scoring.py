"""Messages of the scorer's topics: joined training examples (`train.examples`).

A TrainingExample is one impression's point-in-time features with its labels. It refers to the
streamer's closed content segments by key (author_id, segment start) into the segment store
instead of copying their features (~80 KB for ten segments): what it copies is small and
bounded (at most a few hundred history entries and 5 x top-N expansion ids, a few KB).

Example:
    >>> m = TrainingExample(event_id="w1", ts_ms=1_700_000_000_000, user_id="u1", author_id="a1",
    ...                     label_watch=1, label_comment=0, label_gift=0,
    ...                     emitted_at_ms=1_700_003_600_001)
    >>> TrainingExample.model_validate_json(m.model_dump_json()) == m
    True
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmbee.schemas.types import EventId, Id, TsMs

__all__ = ["MAX_HISTORY", "MAX_EXPANSION", "ExpansionName", "TrainingExample"]

MAX_HISTORY = 512
MAX_EXPANSION = 256
MAX_SEGMENTS = 64

ExpansionName = Literal["u2a2u", "u2a2u2a", "u2a2a", "a2a", "a2u2a"]
"""MMBee's five metapath expansions."""


class TrainingExample(BaseModel):
    """A labeled impression. Topic `train.examples`, key `user_id`.

    `history` holds (ts_ms, author_id, kind) with kind 0 watch, 1 comment, 2 gift, oldest first,
    all strictly before `ts_ms`. `segment_starts` are keys into the segment store for
    `author_id`. Labels are 0/1: watch (stayed >= the threshold), comment, gift (within 1 h).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    event_id: EventId
    ts_ms: TsMs
    user_id: Id
    author_id: Id
    live_id: Id | None = None
    history: list[tuple[int, Id, Literal[0, 1, 2]]] = Field(
        default_factory=list, max_length=MAX_HISTORY
    )
    user_watches: int = Field(default=0, ge=0)
    user_gifts: int = Field(default=0, ge=0)
    user_gift_value: float = Field(default=0.0, ge=0.0)
    author_watches: int = Field(default=0, ge=0)
    author_gifts: int = Field(default=0, ge=0)
    pair_watches: int = Field(default=0, ge=0)
    pair_gifts: int = Field(default=0, ge=0)
    segment_starts: list[int] = Field(default_factory=list, max_length=MAX_SEGMENTS)
    user_day_watches: int | None = Field(default=None, ge=0)
    user_day_gifts: int | None = Field(default=None, ge=0)
    user_day_gift_value: float | None = Field(default=None, ge=0.0)
    author_recent_gifts: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, max_length=8
    )
    author_recent_watches: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, max_length=8
    )
    live_category: str | None = Field(default=None, max_length=128)
    expansions: dict[
        ExpansionName, Annotated[list[tuple[Id, float]], Field(max_length=MAX_EXPANSION)]
    ] = Field(default_factory=dict)
    label_watch: Literal[0, 1]
    label_comment: Literal[0, 1]
    label_gift: Literal[0, 1]
    gift_value: float = Field(default=0.0, ge=0.0)
    emitted_at_ms: int

    @model_validator(mode="after")
    def _point_in_time(self) -> Self:
        if any(t >= self.ts_ms for t, _, _ in self.history):
            raise ValueError("history holds a behaviour at or after the impression time ts_ms")
        if any(b[0] < a[0] for a, b in zip(self.history, self.history[1:], strict=False)):
            raise ValueError("history is not ordered oldest first")
        if any(s >= self.ts_ms for s in self.segment_starts):
            raise ValueError("segment_starts holds a segment starting at or after ts_ms")
        return self
