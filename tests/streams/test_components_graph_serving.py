"""The graph, serving and refresh components as `runtime.component` describes them: the graph's
`apply` is pure (the same state and gift give an equal `Step`) and its codec round-trips; the
refresh step keeps a bounded, deduplicated buffer; each module exposes a `COMPONENT`."""

from __future__ import annotations

import pytest
from test_graph_agent import HOUR, T0, gift, random_gifts

from mmbee.graph import build
from mmbee.schemas import GiftEvent
from mmbee.schemas.scoring import TrainingExample
from mmbee.settings import Settings
from mmbee.state.graph import GraphState
from mmbee.streams.components import graph, refresh, serving
from mmbee.streams.runtime.component import Component, Reject

CFG = graph.config(Settings(graph_dedupe_horizon_ms=HOUR))


def state_of(items: list[GiftEvent]) -> GraphState:
    state = GraphState.empty(CFG.graph, CFG.dedupe_horizon_ms)
    for g in items:
        state = graph.apply(CFG, state, g).state
    return state


def copy(state: GraphState) -> GraphState:
    """An equal, independent state: through the codec, row by row."""
    rows = [(u, graph.CODEC.loads(graph.CODEC.dumps(row))) for u, row in state.rows()]
    return GraphState.from_rows(CFG.graph, CFG.dedupe_horizon_ms, rows)


def test_graph_apply_is_pure_same_state_and_gift_give_an_equal_step() -> None:
    base = random_gifts(40, seed=1, n_users=8, n_authors=5)
    probes = [
        gift("new", "u1", "a2", 3 * HOUR),  # applied
        base[-1],  # duplicate
        gift("old", "u2", "a1", -2 * HOUR),  # late
    ]
    for probe in probes:
        one, two = state_of(base), copy(state_of(base))
        assert one == two
        a, b = graph.apply(CFG, one, probe), graph.apply(CFG, two, probe)
        assert a == b, probe.event_id
    # and the equality is not vacuous: another gift gives another step and state
    a = graph.apply(CFG, state_of(base), probes[0])
    b = graph.apply(CFG, state_of(base), gift("other", "u1", "a3", 3 * HOUR))
    assert a != b and a.state != b.state


def test_graph_apply_outputs_and_rejects() -> None:
    state = state_of([])
    first = graph.apply(CFG, state, gift("g1", "u1", "a1", 5 * HOUR))
    assert [(o.user_id, o.author_id, o.rows) for o in first.outputs] == [("u1", "a1", ("u1",))]
    dup = graph.apply(CFG, state, gift("g1", "u1", "a1", 5 * HOUR))
    late = graph.apply(CFG, state, gift("g2", "u1", "a2", 3 * HOUR))
    assert dup.outputs == late.outputs == ()
    assert dup.rejects == (Reject("duplicate", "applied already", "g1"),)
    assert [r.reason for r in late.rejects] == ["late"]
    y2000 = gift("g0", "u9", "a9", 946_684_800_001 - T0)  # before GraphConfig.epoch_ms
    refused = graph.apply(CFG, state_of([]), y2000)
    assert [(r.reason, r.event_id) for r in refused.rejects] == [("validation_error", "g0")]
    assert refused.state.graph.num_gifts == 0 and "g0" not in refused.state.seen
    # g3 moves the watermark an hour past g1: g1's id leaves u1's row, which changes too
    moved = graph.apply(CFG, state, gift("g3", "u2", "a1", 6 * HOUR + 1))
    assert moved.outputs[0].rows == ("u1", "u2") and state.row("u1")[1] == {}


def test_graph_codec_round_trips_rows_and_the_whole_state() -> None:
    items = random_gifts(60, seed=2, n_users=8, n_authors=5)
    state, applied = state_of([]), []
    for g in items:
        if graph.apply(CFG, state, g).outputs:
            applied.append(g)
    assert 0 < len(applied) < len(items)  # some late ones too
    for _, row in state.rows():
        assert graph.CODEC.loads(graph.CODEC.dumps(row)) == row
    again = copy(state)
    assert again == state
    assert again.graph.fingerprint() == build(applied, CFG.graph).fingerprint()
    assert sorted(again.seen) == sorted(state.seen) and len(state.seen) > 0


def test_modules_expose_their_component() -> None:
    for module, name in ((graph, "graph"), (serving, "serving"), (refresh, "refresh")):
        component = module.COMPONENT
        assert isinstance(component, Component) and component.name == name
        assert component.register is module.register
    assert serving.COMPONENT.codec is None and refresh.COMPONENT.codec is None
    assert graph.COMPONENT.codec is graph.CODEC


@pytest.mark.parametrize("n", [3, 7])
def test_refresh_buffer_is_bounded_and_deduplicated(n: int) -> None:
    from mmbee.state.examples import ExampleBuffer

    cfg = refresh.RefreshConfig(max_examples=5)
    examples = [example(f"e{i}", i) for i in range(n)]
    buf = ExampleBuffer(cfg.max_examples)
    for m in examples + examples[-2:]:  # two redelivered while still buffered
        buf = refresh.apply(cfg, buf, m).state
    assert [m.event_id for m in buf.examples] == [m.event_id for m in examples[-5:]]
    assert buf.new == n


def example(event_id: str, i: int) -> TrainingExample:
    return TrainingExample(event_id=event_id, ts_ms=T0 + i, user_id="u1", author_id="a1",
                           label_watch=1, label_comment=0, label_gift=i % 2,
                           emitted_at_ms=T0 + HOUR)  # fmt: skip
