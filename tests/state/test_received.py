"""`mmbee.state.received`: the exact redelivery test, pure."""

from __future__ import annotations

import pytest

from mmbee.schemas import WatchEvent
from mmbee.schemas.serving import UserActivity
from mmbee.state.received import Received, ReceivedRows, origin_of, received_key

G = "live.gifts:3"


def test_taken_and_finished_offsets_are_redeliveries_open_and_new_ones_are_not() -> None:
    r = Received()
    assert not r.redelivered(G, 0)
    for o in (4, 5, 6, 9):
        r.take(G, o)
    r.finish(G, 5)
    r.finish(G, 9)
    assert [o for o in range(12) if r.redelivered(G, o)] == [0, 1, 2, 3, 5, 7, 8, 9]
    assert not r.redelivered("live.gifts:4", 0)  # origins are separate
    r.take(G, 4)  # still open (e.g. loaded from a row that listed it open): taken again
    with pytest.raises(ValueError, match="finished before"):
        r.take(G, 5)
    r.finish(G, 4)
    r.finish(G, 6)
    assert r.open == {} and r.high == {G: 9}


def test_dumps_loads_keep_high_and_open() -> None:
    r = Received()
    for o in (7, 8, 10):
        r.take(G, o)
    r.finish(G, 8)
    r.take("live.watch:0", 2)
    r.finish("live.watch:0", 2)
    raw = r.dumps()
    assert raw == b'{"live.gifts:3":[10,[[7,7],[10,10]]],"live.watch:0":[2,[]]}'
    again = Received.loads(raw)
    assert again.to_json() == r.to_json()
    assert [o for o in range(12) if again.redelivered(G, o)] == [0, 1, 2, 3, 4, 5, 6, 8, 9]


def test_open_offsets_are_stored_as_runs() -> None:
    r = Received()
    for o in (*range(3, 9), 11, 12, 20):
        r.take(G, o)
    r.finish(G, 5)
    assert r.to_json() == {G: [20, [[3, 4], [6, 8], [11, 12], [20, 20]]]}
    assert Received.loads(r.dumps()).open == r.open


def test_origin_is_the_forwarded_source_else_the_message_itself() -> None:
    gift = UserActivity(kind="gift", event_id="g1", ts_ms=1_746_000_000_000, user_id="u1",
                        author_id="a1", live_id="l1", gift_value=1.0, source=G,
                        source_offset=42)  # fmt: skip
    assert origin_of(gift, "user.activity", 0, 7) == (G, 42)
    bare = gift.model_copy(update={"source": None, "source_offset": None})
    assert origin_of(bare, "user.activity", 0, 7) == ("user.activity:0", 7)
    watch = WatchEvent(event_id="w1", ts_ms=1_746_000_000_000, user_id="u1", author_id="a1",
                       live_id="l1", action="enter")  # fmt: skip
    assert origin_of(watch, "live.watch", 1, 3) == ("live.watch:1", 3)


def test_rows_store_received_with_extra_fields_under_a_tilde_key() -> None:
    table: dict[bytes, bytes] = {}
    rows = ReceivedRows(table)  # type: ignore[arg-type]
    rows.of(1).take(G, 5)
    rows.write(1, watermark_ms=123, max_ts=456)
    assert list(table) == [received_key(1)] == [b"~received~1"]
    rows.forget([1])
    assert 1 not in rows.parts
    got, extra = rows.load(1)
    assert extra == {"watermark_ms": 123, "max_ts": 456} and got.to_json() == {G: [5, [[5, 5]]]}
    assert rows.of(1) is got
    empty, none = rows.load(2)
    assert empty.to_json() == {} and none == {}
