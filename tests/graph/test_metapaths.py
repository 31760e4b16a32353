"""The five metapath expansions on hand-built graphs with known answers, and their invariances."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmbee.graph.bulk import bulk_expansions
from mmbee.graph.metapaths import (
    AUTHOR_METAPATHS,
    USER_METAPATHS,
    ExpansionConfig,
    Transitions,
    a2a_neighbours,
    author_expansions,
    expand,
    user_expansions,
)
from mmbee.graph.state import DAY_MS, GiftGraph, GraphConfig, build
from mmbee.schemas import GiftEvent

T0 = 1_750_000_000_000
S12 = 0.25  # shrunk cosine a1~a2: cos 1/2, one shared donor, shrinkage 1
S23 = 0.5 / math.sqrt(2)  # shrunk cosine a2~a3: cos 1/sqrt(2), one shared donor


def approx(pairs: list[tuple[str, float]]) -> list[tuple[str, object]]:
    return [(k, pytest.approx(v, rel=1e-12)) for k, v in pairs]


def test_u2a2u(small_graph: GiftGraph) -> None:
    assert user_expansions(small_graph, "u1")["u2a2u"] == approx([("u2", 0.5)])
    # u2 -> a1 (1/2) -> u1 (1/2); u2 -> a2 (1/2) -> u3 (1/2); tie broken by id
    assert user_expansions(small_graph, "u2")["u2a2u"] == approx([("u1", 0.25), ("u3", 0.25)])


def test_u2a2u2a_excludes_gifted_authors(small_graph: GiftGraph) -> None:
    # u1 -> u2 (1/2) -> a1 (excluded: u1 gifted it), a2 (1/4)
    assert user_expansions(small_graph, "u1")["u2a2u2a"] == approx([("a2", 0.25)])
    # u2 -> u1 -> a1 (gifted), u2 -> u3 (1/4) -> a2 (gifted), a3 (1/8)
    assert user_expansions(small_graph, "u2")["u2a2u2a"] == approx([("a3", 0.125)])
    assert user_expansions(small_graph, "u3")["u2a2u2a"] == approx([("a1", 0.125)])


def test_u2a2a(small_graph: GiftGraph) -> None:
    assert user_expansions(small_graph, "u1")["u2a2a"] == approx([("a2", 1.0)])
    p3, p1 = S23 / (S23 + S12), S12 / (S23 + S12)  # a2's normalised A2A row
    assert user_expansions(small_graph, "u2")["u2a2a"] == approx(
        [("a2", 0.5), ("a3", 0.5 * p3), ("a1", 0.5 * p1)]
    )
    assert user_expansions(small_graph, "u3")["u2a2a"] == approx(
        [("a2", 0.5), ("a3", 0.5 * p3), ("a1", 0.5 * p1)]
    )


def test_a2a(small_graph: GiftGraph) -> None:
    assert author_expansions(small_graph, "a2")["a2a"] == approx([("a3", S23), ("a1", S12)])
    assert author_expansions(small_graph, "a1")["a2a"] == approx([("a2", S12)])
    assert a2a_neighbours(small_graph, "a2", k=1) == approx([("a3", S23)])


def test_a2u2a(small_graph: GiftGraph) -> None:
    assert author_expansions(small_graph, "a1")["a2u2a"] == approx([("a2", 0.25)])
    assert author_expansions(small_graph, "a2")["a2u2a"] == approx([("a1", 0.25), ("a3", 0.25)])
    assert author_expansions(small_graph, "a3")["a2u2a"] == approx([("a2", 0.5)])


def test_expand_matches_grouped_calls(small_graph: GiftGraph) -> None:
    for u in small_graph.users():
        got = user_expansions(small_graph, u)
        assert {m: expand(small_graph, u, m) for m in USER_METAPATHS} == got
    for a in small_graph.authors():
        got = author_expansions(small_graph, a)
        assert {m: expand(small_graph, a, m) for m in AUTHOR_METAPATHS} == got
    with pytest.raises(ValueError, match="unknown metapath"):
        expand(small_graph, "u1", "u2u")  # type: ignore[arg-type]


def test_unknown_nodes_give_empty_expansions(small_graph: GiftGraph) -> None:
    assert user_expansions(small_graph, "nobody") == {"u2a2u": [], "u2a2u2a": [], "u2a2a": []}
    assert author_expansions(small_graph, "a1")["a2a"]
    assert author_expansions(small_graph, "nobody") == {"a2a": [], "a2u2a": []}


def test_time_decay_shifts_weight_to_recent_gifts() -> None:
    g = GiftGraph(GraphConfig(half_life_ms=DAY_MS, weight_by="count"))
    g.add_gift("u1", "a1", T0, 1.0)
    g.add_gift("u1", "a2", T0 + DAY_MS, 1.0)  # one half-life later: twice the weight
    for v, a in (("v1", "a1"), ("v2", "a2")):
        g.add_gift(v, a, T0, 1.0)
    exp = user_expansions(g, "u1")["u2a2u"]
    assert exp == approx([("v2", 2 / 3 * 1 / 3), ("v1", 1 / 3 * 1 / 2)])


def hub_graph() -> GiftGraph:
    """Author a0 has 30 donors with distinct weights; each donor also gifts its own author."""
    g = GiftGraph(GraphConfig(weight_by="value"))
    for i in range(30):
        g.add_gift(f"u{i:02d}", "a0", T0, float(i + 1))
        g.add_gift(f"u{i:02d}", f"b{i:02d}", T0, 1.0)
    return g


def test_top_n_and_bounds_are_respected() -> None:
    g = hub_graph()
    cfg = ExpansionConfig(top_n=5, beam_width=10, max_neighbors=8)
    u = user_expansions(g, "u00", cfg)
    assert len(u["u2a2u"]) == 5
    # a0 expands only its 8 heaviest donors: u29..u22
    assert [x for x, _ in u["u2a2u"]] == ["u29", "u28", "u27", "u26", "u25"]
    assert len(author_expansions(g, "a0", cfg)["a2u2a"]) == 5
    for m, lst in (u | author_expansions(g, "a0", cfg)).items():
        ws = [w for _, w in lst]
        assert ws == sorted(ws, reverse=True), m
        assert all(w > 0 for w in ws)


def test_shared_transitions_give_the_same_answers() -> None:
    g = hub_graph()
    t = Transitions(g, ExpansionConfig())
    for u in g.users():
        assert user_expansions(g, u, transitions=t) == user_expansions(g, u)
    for a in g.authors():
        assert author_expansions(g, a, transitions=t) == author_expansions(g, a)


gift_rows = st.lists(
    st.tuples(
        st.integers(0, 6), st.integers(0, 5), st.integers(0, 10 * DAY_MS), st.integers(1, 50)
    ),
    min_size=1,
    max_size=50,
)


@settings(max_examples=30, deadline=None)
@given(rows=gift_rows, data=st.data())
def test_expansions_invariant_to_insertion_order(rows: list, data: st.DataObject) -> None:
    gifts = [
        GiftEvent(
            event_id=f"g{i}",
            ts_ms=T0 + dt,
            user_id=f"u{u}",
            author_id=f"a{a}",
            live_id="l",
            gift_value=float(v),
        )
        for i, (u, a, dt, v) in enumerate(rows)
    ]
    cfg = GraphConfig(half_life_ms=DAY_MS)
    exp_cfg = ExpansionConfig(top_n=3, beam_width=2, max_neighbors=2)  # tight bounds: ties matter
    g1 = build(gifts, cfg)
    g2 = build(data.draw(st.permutations(gifts)), cfg)
    for u in g1.users():
        assert user_expansions(g1, u, exp_cfg) == user_expansions(g2, u, exp_cfg)
    for a in g1.authors():
        assert author_expansions(g1, a, exp_cfg) == author_expansions(g2, a, exp_cfg)


@settings(max_examples=40, deadline=None)
@given(
    rows=gift_rows,
    top_n=st.integers(1, 4),
    width=st.integers(1, 4),
    fanout=st.integers(1, 4),
    weight_by=st.sampled_from(["count", "log1p_value"]),
)
def test_bulk_equals_per_node_bitwise(
    rows: list, top_n: int, width: int, fanout: int, weight_by: str
) -> None:
    """The sparse rebuild path and the per-node path agree bit for bit, ties included."""
    gifts = [
        GiftEvent(
            event_id=f"g{i}",
            ts_ms=T0 + dt,
            user_id=f"u{u}",
            author_id=f"a{a}",
            live_id="l",
            gift_value=float(v),
        )
        for i, (u, a, dt, v) in enumerate(rows)
    ]
    cfg_g = GraphConfig(half_life_ms=DAY_MS, weight_by=weight_by, a2a_top_k=3)  # type: ignore[arg-type]
    g = build(gifts, cfg_g)
    cfg = ExpansionConfig(top_n=top_n, beam_width=width, max_neighbors=fanout)
    users, authors = bulk_expansions(g, g.users(), g.authors(), cfg, chunk=3)
    assert users == {u: user_expansions(g, u, cfg) for u in g.users()}
    assert authors == {a: author_expansions(g, a, cfg) for a in g.authors()}
