"""Shared fixtures of the graph tests: a small hand-built gifting graph with known answers."""

from __future__ import annotations

import pytest

from mmbee.graph.state import GiftGraph, GraphConfig
from mmbee.schemas import GiftEvent

T0 = 1_750_000_000_000
SMALL_EDGES = [("u1", "a1"), ("u2", "a1"), ("u2", "a2"), ("u3", "a2"), ("u3", "a3")]


@pytest.fixture
def small_gifts() -> list[GiftEvent]:
    """One gift per edge of u1 -> a1; u2 -> a1, a2; u3 -> a2, a3; all at the same time."""
    return [
        GiftEvent(event_id=f"g{i}", ts_ms=T0, user_id=u, author_id=a, live_id="l", gift_value=1.0)
        for i, (u, a) in enumerate(SMALL_EDGES)
    ]


@pytest.fixture
def small_graph(small_gifts: list[GiftEvent]) -> GiftGraph:
    """The small graph with count weights: every edge has the same weight."""
    g = GiftGraph(GraphConfig(weight_by="count"))
    for gift in small_gifts:
        g.apply(gift)
    return g
