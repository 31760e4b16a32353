"""The codec: valid messages decode; every kind of bad input becomes a Rejected with a reason."""

from __future__ import annotations

import json

import pytest

from mmbee.schemas import CommentEvent, FrameEvent, GiftEvent
from mmbee.streams.codec import EventCodec, Rejected

CODEC = EventCodec(frame_dim=8, text_dim=4)
GIFT = GiftEvent(
    event_id="g1", ts_ms=1_700_000_000_000, user_id="u1", author_id="a1", live_id="l1", gift_value=5
)


def gift_json(**changes: object) -> bytes:
    obj = json.loads(GIFT.model_dump_json())
    obj.update(changes)
    return json.dumps(obj).encode()


def test_round_trip_and_keys() -> None:
    assert CODEC.decode(GiftEvent, CODEC.encode(GIFT)) == GIFT
    assert CODEC.decode_topic("live.gifts", CODEC.encode(GIFT)) == GIFT
    assert CODEC.key_of("live.gifts", GIFT) == b"a1"
    assert CODEC.key_of("dlq", GIFT) is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not utf-8", "decode_error"),
        (b"{truncated", "decode_error"),
        (b"", "decode_error"),
        (None, "decode_error"),
        (b"[1, 2, 3]", "validation_error"),
        (gift_json(gift_value="lots"), "validation_error"),
        (gift_json(gift_value=-1), "validation_error"),
        (gift_json(ts_ms=12), "validation_error"),
        (gift_json(colour="red"), "validation_error"),
        (gift_json(event_id=""), "validation_error"),
        (gift_json(event_id="x" * 500), "oversized"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(raw: bytes | None, reason: str) -> None:
    got = CODEC.decode(GiftEvent, raw)
    assert isinstance(got, Rejected), got
    assert got.reason == reason and got.detail


def test_nan_and_wrong_width_embeddings() -> None:
    base = {"event_id": "f1", "ts_ms": 1_700_000_000_000, "live_id": "l", "author_id": "a"}
    nan = json.dumps({**base, "embedding": [float("nan")] * 8}).encode()  # NaN token in JSON
    short = json.dumps({**base, "embedding": [0.5] * 7}).encode()
    for raw in (nan, short):
        got = CODEC.decode(FrameEvent, raw)
        assert isinstance(got, Rejected) and got.reason == "validation_error"
        assert got.event_id == "f1"  # recovered for the dead letter
    ok = CODEC.decode(FrameEvent, json.dumps({**base, "embedding": [0.5] * 8}).encode())
    assert isinstance(ok, FrameEvent)


def test_oversized_message_and_text() -> None:
    big = gift_json(live_id="l" * 10)
    got = CODEC.decode(GiftEvent, big, max_bytes=20)
    assert isinstance(got, Rejected) and got.reason == "oversized" and got.event_id == "g1"
    long_text = json.dumps(
        {
            "event_id": "c1",
            "ts_ms": 1_700_000_000_000,
            "user_id": "u",
            "author_id": "a",
            "live_id": "l",
            "text": "x" * 501,
        }
    ).encode()
    got = CODEC.decode(CommentEvent, long_text)
    assert isinstance(got, Rejected) and got.reason == "oversized"
