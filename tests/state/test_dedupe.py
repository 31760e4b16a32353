"""`DedupeWindow`: ids remembered by owner until event time moves a horizon past them."""

from __future__ import annotations

import doctest

from mmbee.state import dedupe
from mmbee.state.dedupe import DedupeWindow


def test_the_module_example_holds() -> None:
    assert doctest.testmod(dedupe).failed == 0


def test_expiry_reports_every_owner_whose_row_must_be_rewritten() -> None:
    w = DedupeWindow(horizon_ms=100)
    w.remember("u1", "a", 1_000, 1_000)
    w.remember("u2", "b", 1_010, 1_010)
    w.remember("u1", "c", 1_050, 1_050)
    assert w.of("u1") == {"a": 1_000, "c": 1_050} and len(w) == 3
    changed = w.remember("u3", "d", 1_200, 1_200)  # limit 1_100: a, b and c go
    assert changed == {"u1", "u2", "u3"}
    assert "a" not in w and "c" not in w and "d" in w
    assert w.of("u1") == {} and w.of("u3") == {"d": 1_200}


def test_load_from_rows_equals_remembering_them() -> None:
    w = DedupeWindow(horizon_ms=100)
    w.load([("u1", {"a": 1_000}), ("u2", {"b": 1_050})])
    assert "a" in w and "b" in w
    assert w.remember("u2", "c", 1_140, 1_140) == {"u1", "u2"}  # limit 1_040: a goes
    assert "a" not in w and w.of("u2") == {"b": 1_050, "c": 1_140}
    w.clear()
    assert len(w) == 0 and w.of("u2") == {}
