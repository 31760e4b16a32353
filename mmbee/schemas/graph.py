"""Messages of the graph's topics: a node's metapath expansions as the walk cache holds them.

Topics `graph.user_expansions` (key user_id) and `graph.author_expansions` (key author_id) are
compacted: the latest message per node is its current cache entry. Serving workers read the
user side from a table co-partitioned with score requests and the author side into a
GlobalTable. Each list is (node id, weight), heaviest first (docs/graph.md).

Example:
    >>> m = AuthorExpansions(author_id="a1", built_at_ms=1_750_000_000_000,
    ...                      a2a=[("a2", 0.25)], a2u2a=[("a3", 0.5)])
    >>> AuthorExpansions.model_validate_json(m.model_dump_json()) == m
    True
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from mmbee.schemas.types import Id, TsMs

__all__ = ["MAX_EXPANSION_ITEMS", "ExpansionList", "UserExpansions", "AuthorExpansions"]

MAX_EXPANSION_ITEMS = 256

ExpansionList = Annotated[
    list[tuple[Id, Annotated[float, Field(ge=0.0)]]], Field(max_length=MAX_EXPANSION_ITEMS)
]
"""(node id, weight >= 0) pairs, heaviest first."""

_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class UserExpansions(BaseModel):
    """A user's u2a2u (users), u2a2u2a and u2a2a (authors) expansions, computed from the gift
    graph as of event time `built_at_ms`. Topic `graph.user_expansions`, key `user_id`."""

    model_config = _STRICT

    user_id: Id
    built_at_ms: TsMs
    u2a2u: ExpansionList = Field(default_factory=list)
    u2a2u2a: ExpansionList = Field(default_factory=list)
    u2a2a: ExpansionList = Field(default_factory=list)


class AuthorExpansions(BaseModel):
    """An author's a2a and a2u2a expansions (both authors), as of event time `built_at_ms`.
    Topic `graph.author_expansions`, key `author_id`."""

    model_config = _STRICT

    author_id: Id
    built_at_ms: TsMs
    a2a: ExpansionList = Field(default_factory=list)
    a2u2a: ExpansionList = Field(default_factory=list)
