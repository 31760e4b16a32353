"""U2A/A2A state: exact decay, order invariance, incremental == batch, persistence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmbee.graph.state import (
    DAY_MS,
    GiftGraph,
    GraphConfig,
    build,
    contribution,
    load_graph,
    save_graph,
)
from mmbee.schemas import GiftEvent

T0 = 1_750_000_000_000
CFG = GraphConfig(half_life_ms=DAY_MS)


def gift(i: int, u: str, a: str, ts: int = T0, value: float = 1.0) -> GiftEvent:
    return GiftEvent(
        event_id=f"g{i}", ts_ms=ts, user_id=u, author_id=a, live_id="l", gift_value=value
    )


gifts_strategy = st.lists(
    st.builds(
        lambda u, a, dt, v: (f"u{u}", f"a{a}", T0 + dt, v),
        st.integers(0, 5),
        st.integers(0, 4),
        st.integers(-30 * DAY_MS, 30 * DAY_MS),
        st.floats(0.01, 5000.0, allow_nan=False),
    ),
    min_size=1,
    max_size=40,
).map(lambda rows: [gift(i, *r) for i, r in enumerate(rows)])


def test_decay_halves_per_half_life() -> None:
    g = GiftGraph(GraphConfig(half_life_ms=DAY_MS, weight_by="count"))
    g.add_gift("u", "a", T0, 9.0)
    w = g.edge("u", "a")[2]
    assert g.weight_at(w, T0) == pytest.approx(1.0, rel=1e-9)
    assert g.weight_at(w, T0 + DAY_MS) == pytest.approx(0.5, rel=1e-9)
    assert g.weight_at(w, T0 + 3 * DAY_MS) == pytest.approx(0.125, rel=1e-9)
    # a gift one half-life later weighs twice as much in the fixed-point sum
    assert contribution(T0 + DAY_MS, 1.0, g.config) == pytest.approx(2 * w, rel=1e-9)


def test_edge_counts_values_and_weight_modes() -> None:
    for mode, per_gift in (("count", 1.0), ("value", 4.0), ("log1p_value", math.log1p(4.0))):
        g = GiftGraph(GraphConfig(weight_by=mode))  # type: ignore[arg-type]
        g.add_gift("u", "a", T0, 4.0)
        g.add_gift("u", "a", T0, 4.0)
        count, value_micro, w, last = g.edge("u", "a")
        assert (count, value_micro, last) == (2, 8_000_000, T0)
        assert g.weight_at(w, T0) == pytest.approx(2 * per_gift, rel=1e-8)


def test_a2a_cosine_and_shrinkage(small_graph: GiftGraph) -> None:
    g = GiftGraph(GraphConfig(weight_by="count", a2a_shrinkage=0.0))
    for u, row in small_graph.user_out.items():
        for a in row:
            g.add_gift(u, a, T0, 1.0)
    assert g.similarity("a1", "a2") == pytest.approx(0.5)  # 1 / (sqrt 2 * sqrt 2)
    assert g.similarity("a2", "a3") == pytest.approx(1 / math.sqrt(2))
    assert g.similarity("a1", "a3") == 0.0
    # shrinkage 1 with one shared donor halves the cosine
    assert small_graph.similarity("a1", "a2") == pytest.approx(0.25)
    assert small_graph.shared_donors("a2", "a3") == 1


@settings(max_examples=40, deadline=None)
@given(gifts=gifts_strategy, data=st.data())
def test_state_is_a_function_of_the_multiset(gifts: list[GiftEvent], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(gifts))
    a, b = build(gifts, CFG), build(shuffled, CFG)
    assert a.fingerprint() == b.fingerprint()


@settings(max_examples=30, deadline=None)
@given(gifts=gifts_strategy, data=st.data())
def test_incremental_equals_batch(gifts: list[GiftEvent], data: st.DataObject) -> None:
    """One gift at a time (random order, with a save/load checkpoint midway) == batch build."""
    order = data.draw(st.permutations(gifts))
    cut = data.draw(st.integers(0, len(order)))
    inc = GiftGraph(CFG)
    for g in order[:cut]:
        inc.apply(g)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_graph(inc, Path(d) / "g")
        inc = load_graph(Path(d) / "g", CFG)
    for g in order[cut:]:
        inc.apply(g)
    batch = build(sorted(gifts, key=lambda g: g.ts_ms), CFG)
    assert inc.fingerprint() == batch.fingerprint()


def test_a2a_statistics_match_brute_force() -> None:
    gifts = [
        gift(i, f"u{i % 7}", f"a{(i * 3) % 5}", T0 + i * 3_600_000, 1.0 + i) for i in range(60)
    ]
    g = build(gifts, CFG)
    for a in g.authors():
        for b in g.authors():
            if a == b:
                continue
            common = set(g.author_in[a]) & set(g.author_in[b])
            dot = sum(g.author_in[a][u] * g.author_in[b][u] for u in common)
            assert g.shared_donors(a, b) == len(common)
            assert g.a2a_dot[a].get(b, 0) == dot
        assert g.author_norm2[a] == sum(w**2 for w in g.author_in[a].values())
        assert g.author_total[a] == sum(g.author_in[a].values())


def test_build_dedupes_event_ids() -> None:
    g1 = build([gift(1, "u", "a"), gift(1, "u", "a"), gift(2, "u", "a")], CFG)
    assert g1.edge("u", "a")[0] == 2
    g2 = build([gift(1, "u", "a"), gift(1, "u", "a")], CFG, dedupe=False)
    assert g2.edge("u", "a")[0] == 2


def test_save_load_roundtrip_and_incremental_save(tmp_path: Path) -> None:
    g = build([gift(i, f"u{i % 3}", f"a{i % 4}", T0 + i) for i in range(20)], CFG)
    save_graph(g, tmp_path / "g")
    g.add_gift("u9", "a1", T0 + 100, 3.0)
    g.add_gift("u0", "a3", T0 + 101, 3.0)
    save_graph(g, tmp_path / "g", users=["u9", "u0"])  # only the changed rows
    assert load_graph(tmp_path / "g").fingerprint() == g.fingerprint()
    with pytest.raises(ValueError, match="built with"):
        load_graph(tmp_path / "g", GraphConfig(half_life_ms=2 * DAY_MS))


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        GraphConfig(half_life_ms=0)
    with pytest.raises(ValueError):
        GraphConfig(precision_bits=2)


def test_gifts_long_before_the_epoch_are_rejected_not_zeroed() -> None:
    cfg = GraphConfig(half_life_ms=DAY_MS, epoch_ms=T0)
    assert contribution(T0 - 10 * DAY_MS, 1.0, cfg) > 0  # 22 bits left: fine
    with pytest.raises(ValueError, match="earlier epoch_ms"):
        contribution(T0 - 20 * DAY_MS, 1.0, cfg)


def test_restore_derives_watermark_and_count_from_rows() -> None:
    from mmbee.graph.state import restore, user_row

    g = build([gift(i, f"u{i % 3}", f"a{i % 4}", T0 + 7 * i, 2.0) for i in range(30)], CFG)
    back = restore(CFG, [(u, user_row(g, u)) for u in g.users()])
    assert back.fingerprint() == g.fingerprint()


@settings(max_examples=60, deadline=None)
@given(
    dt=st.integers(-300 * DAY_MS, 300 * DAY_MS),
    value=st.floats(0.01, 1e6, allow_nan=False),
    mode=st.sampled_from(["count", "value", "log1p_value"]),
)
def test_add_gift_adds_exactly_the_contribution(dt: int, value: float, mode: str) -> None:
    cfg = GraphConfig(weight_by=mode, epoch_ms=T0)  # type: ignore[arg-type]
    g = GiftGraph(cfg)
    try:
        expected = contribution(T0 + dt, value, cfg)
    except ValueError:
        with pytest.raises(ValueError):
            g.add_gift("u", "a", T0 + dt, value)
        return
    g.add_gift("u", "a", T0 + dt, value)
    assert g.edge("u", "a")[2] == expected
