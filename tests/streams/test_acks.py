"""Acks leave in arrival order per partition, whatever order the events finish in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmbee.streams.acks import AckSequencer


def test_a_finished_event_waits_for_earlier_ones_of_its_partition_only() -> None:
    seq = AckSequencer()
    for item, key in [("a0", "p0"), ("b0", "p1"), ("a1", "p0"), ("a2", "p0")]:
        seq.track(key, item)
    assert seq.done("p0", "a2") == []
    assert seq.done("p1", "b0") == ["b0"]  # another partition is not held back
    assert seq.done("p0", "a0") == ["a0"]
    assert seq.done("p0", "a1") == ["a1", "a2"]
    assert len(seq) == 0


def test_forget_drops_revoked_partitions() -> None:
    seq = AckSequencer()
    seq.track("p0", "x")
    seq.track("p1", "y")
    seq.forget({"p0"})
    assert seq.waiting("p0") == 0 and len(seq) == 1
    with pytest.raises(KeyError):
        seq.done("p0", "x")


@given(st.permutations(list(range(30))), st.lists(st.integers(0, 2), min_size=30, max_size=30))
def test_release_order_is_arrival_order(finish: list[int], keys: list[int]) -> None:
    seq = AckSequencer()
    items = [f"e{i}" for i in range(30)]
    for i, item in enumerate(items):
        seq.track(keys[i], item)
    released: list[str] = []
    for i in finish:
        released += seq.done(keys[i], items[i])
    assert sorted(released) == sorted(items)
    for k in set(keys):
        mine = [it for i, it in enumerate(items) if keys[i] == k]
        assert [r for r in released if r in mine] == mine


@given(st.permutations(list(range(30))), st.lists(st.integers(0, 2), min_size=30, max_size=30),
       st.integers(1, 7))  # fmt: skip
def test_done_many_releases_like_done_one_by_one(
    finish: list[int], keys: list[int], step: int
) -> None:
    one, many = AckSequencer(), AckSequencer()
    items = [f"e{i}" for i in range(30)]
    for i, item in enumerate(items):
        one.track(keys[i], item)
        many.track(keys[i], item)
    for at in range(0, 30, step):
        group = finish[at : at + step]
        singly = [r for i in group for r in one.done(keys[i], items[i])]
        together = many.done_many([(keys[i], items[i]) for i in group])
        for k in set(keys):  # per partition the same items, in the same (arrival) order
            assert [r for r in together if keys[items.index(r)] == k] == [
                r for r in singly if keys[items.index(r)] == k
            ]
        assert sorted(together) == sorted(singly)
    assert len(one) == len(many) == 0
    with pytest.raises(KeyError):
        many.done_many([(keys[0], items[0])])


def test_items_of_a_forgotten_partition_are_skipped_only_when_asked() -> None:
    seq = AckSequencer()
    seq.track(("t", 0), "a")
    seq.track(("t", 1), "b")
    seq.forget({("t", 0)})  # revoked while the agent awaited a write for "a"
    with pytest.raises(KeyError, match="not tracked"):
        seq.done_many([(("t", 0), "a")])
    assert seq.done_many([(("t", 0), "a"), (("t", 1), "b")], forgotten=True) == ["b"]
    assert len(seq) == 0
