"""The topic contract: round trips and rejection of bad input with a reason."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mmbee.schemas import (
    TOPICS,
    AudioChunk,
    CommentEvent,
    DeadLetter,
    FrameEvent,
    GiftEvent,
    ScoreRequest,
    WatchEvent,
    co_partitioned_groups,
    decode_embedding,
    encode_embedding,
)
from mmbee.schemas.topics import export_json_schemas

TS = 1_700_000_000_000
IDS = {"live_id": "l1", "author_id": "a1"}


def _gift(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "g1", "ts_ms": TS, "user_id": "u1", "author_id": "a1", "live_id": "l1",
        "gift_value": 2.0,
    }  # fmt: skip
    base.update(kw)
    return base


def _reason(exc: ValidationError) -> str:
    return " ".join(f"{e['loc']} {e['msg']}" for e in exc.errors())


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"user_id": ""}, "at least 1 character"),
        ({"user_id": "u" * 65}, "at most 64 characters"),
        ({"user_id": "bad id!"}, "should match pattern"),
        ({"gift_value": 0}, "greater than 0"),
        ({"gift_value": -3.5}, "greater than 0"),
        ({"gift_value": math.nan}, "finite"),
        ({"ts_ms": 5}, "greater than or equal"),
        ({"ts_ms": 5_000_000_000_000}, "less than"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
        ({"gift_value": "lots"}, "valid number"),
    ],
)
def test_gift_rejects_with_reason(override: dict[str, object], why: str) -> None:
    with pytest.raises(ValidationError) as err:
        GiftEvent(**_gift(**override))
    assert why in _reason(err.value)


def test_gift_json_round_trip() -> None:
    g = GiftEvent(**_gift())
    assert GiftEvent.model_validate_json(g.model_dump_json()) == g


def test_nan_in_json_is_rejected() -> None:
    with pytest.raises(ValidationError):
        GiftEvent.model_validate_json(json.dumps(_gift()).replace("2.0", "NaN"))


@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=64))
def test_embedding_codec_round_trip(values: list[float]) -> None:
    vec = np.asarray(values, dtype=np.float32)
    assert np.array_equal(decode_embedding(encode_embedding(vec)), vec)


def test_frame_embedding_length_and_finiteness() -> None:
    ok = FrameEvent(event_id="f", ts_ms=TS, embedding=np.ones(1280), **IDS)
    assert decode_embedding(ok.embedding or "").shape == (1280,)
    with pytest.raises(ValidationError, match="expected 1280"):
        FrameEvent(event_id="f", ts_ms=TS, embedding=np.ones(384), **IDS)
    with pytest.raises(ValidationError, match="non-finite"):
        FrameEvent(event_id="f", ts_ms=TS, embedding=[math.inf] * 1280, **IDS)
    wire = encode_embedding(np.full(1280, np.nan))
    with pytest.raises(ValidationError, match="non-finite"):
        FrameEvent(event_id="f", ts_ms=TS, embedding=wire, **IDS)
    # the codec can configure other widths through the validation context
    FrameEvent.model_validate(
        {"event_id": "f", "ts_ms": TS, "embedding": [0.5] * 8, **IDS}, context={"frame_dim": 8}
    )


def test_frame_needs_exactly_one_payload() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        FrameEvent(event_id="f", ts_ms=TS, **IDS)
    with pytest.raises(ValidationError, match="JPEG"):
        FrameEvent(event_id="f", ts_ms=TS, image_jpeg=b"PNG....", **IDS)
    jpeg = b"\xff\xd8\xff\xe0" + b"\0" * 100
    f = FrameEvent(event_id="f", ts_ms=TS, image_jpeg=jpeg, **IDS)
    assert FrameEvent.model_validate_json(f.model_dump_json()).image_jpeg == jpeg


def test_audio_limits() -> None:
    one_s = np.zeros(16_000, dtype="<i2").tobytes()
    a = AudioChunk(event_id="a", ts_ms=TS, pcm_s16le=one_s, **IDS)
    assert a.duration_ms == 1000
    assert AudioChunk.model_validate_json(a.model_dump_json()) == a
    with pytest.raises(ValidationError, match="at most 30 s"):
        AudioChunk(event_id="a", ts_ms=TS, pcm_s16le=one_s * 31, **IDS)
    with pytest.raises(ValidationError, match="even number"):
        AudioChunk(event_id="a", ts_ms=TS, pcm_s16le=b"\0\0\0", **IDS)


def test_text_limits() -> None:
    c = dict(event_id="c", ts_ms=TS, user_id="u", **IDS)
    CommentEvent(text="hello", **c)
    with pytest.raises(ValidationError, match="at most 500"):
        CommentEvent(text="x" * 501, **c)
    with pytest.raises(ValidationError, match="at least 1"):
        CommentEvent(text="", **c)


def test_watch_and_score_request_rules() -> None:
    w = dict(event_id="w", ts_ms=TS, user_id="u", **IDS)
    WatchEvent(action="leave", watch_ms=1000, **w)
    with pytest.raises(ValidationError, match="only set on a 'leave'"):
        WatchEvent(action="enter", watch_ms=10, **w)
    with pytest.raises(ValidationError, match="duplicates"):
        ScoreRequest(request_id="r", user_id="u", candidate_author_ids=["a", "a"], ts_ms=TS)
    with pytest.raises(ValidationError, match="at least 1"):
        ScoreRequest(request_id="r", user_id="u", candidate_author_ids=[], ts_ms=TS)


def test_dead_letter_keeps_original_bytes_and_cuts_oversized() -> None:
    raw = b"\x00\xffnot json" * 10
    d = DeadLetter.wrap(raw, source_topic="t", agent="x", reason="decode_error", detail="bad",
                        now_ms=TS)  # fmt: skip
    assert DeadLetter.model_validate_json(d.model_dump_json()).original == raw
    big = DeadLetter.wrap(b"x" * (2 << 20), source_topic="t", agent="x", reason="oversized",
                          detail="", now_ms=TS)  # fmt: skip
    assert big.truncated and len(big.original) == 1 << 20


def test_topic_catalogue_is_consistent(tmp_path: Path) -> None:
    groups = co_partitioned_groups()
    assert "live.gifts" in groups["author_id"] and "live.watch" in groups["user_id"]
    for spec in TOPICS.values():
        if spec.key != "none":
            assert spec.key in spec.model.model_fields, spec.name
    files = export_json_schemas(tmp_path)
    assert len(files) == len(TOPICS)
    schema = json.loads((tmp_path / "live.gifts.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert schema["properties"]["gift_value"]["exclusiveMinimum"] == 0
