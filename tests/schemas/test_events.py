"""The topic contract: round trips and rejection of bad input with a reason."""

from __future__ import annotations

import json
import math
import pickle
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
from mmbee.schemas.types import WireEmbedding

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


def test_validated_embeddings_carry_their_decoded_vector() -> None:
    vec = np.random.default_rng(0).normal(size=8).astype(np.float32)
    raw = json.dumps({"event_id": "f", "ts_ms": TS, "embedding": encode_embedding(vec), **IDS})
    f = FrameEvent.model_validate_json(raw, context={"frame_dim": 8})
    assert isinstance(f.embedding, WireEmbedding)
    assert np.array_equal(f.embedding.vector, vec) and not f.embedding.vector.flags.writeable
    assert decode_embedding(f.embedding) is f.embedding.vector  # not decoded a second time
    assert decode_embedding(str(f.embedding)).tolist() == vec.tolist()
    # the wire form is unchanged: plain base64 text in JSON, equal models, pickles
    assert json.loads(f.model_dump_json())["embedding"] == encode_embedding(vec)
    assert FrameEvent.model_validate_json(f.model_dump_json(), context={"frame_dim": 8}) == f
    assert pickle.loads(pickle.dumps(f)) == f
    # a WireEmbedding given in Python is still checked against the configured width
    with pytest.raises(ValidationError, match="expected 4"):
        FrameEvent.model_validate(
            {**f.model_dump(), "embedding": f.embedding}, context={"frame_dim": 4}
        )


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        ("AAA", "Incorrect padding"),
        ("AAAA AAAA", "not valid base64"),
        ("AAAA====", "not valid base64"),
        ("AAAAAAA=", "multiple of 4"),
        ("ÄAAAAAAA", "not valid base64"),
    ],
)
def test_malformed_embedding_text_is_rejected(wire: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        FrameEvent.model_validate_json(
            json.dumps({"event_id": "f", "ts_ms": TS, "embedding": wire, **IDS}),
            context={"frame_dim": 1},
        )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_one_non_finite_value_anywhere_is_rejected(bad: float) -> None:
    for at in (0, 383, 1279):
        vec = np.zeros(1280, np.float32)
        vec[at] = bad
        with pytest.raises(ValidationError, match="non-finite"):
            FrameEvent(event_id="f", ts_ms=TS, embedding=encode_embedding(vec), **IDS)
    huge = np.full(1280, np.finfo(np.float32).max, np.float32)  # finite: allowed by the contract
    assert FrameEvent(event_id="f", ts_ms=TS, embedding=encode_embedding(huge), **IDS).embedding


def test_embedding_json_schema_is_base64_text(tmp_path: Path) -> None:
    export_json_schemas(tmp_path)
    schema = json.loads((tmp_path / "live.frames.schema.json").read_text())
    field = schema["properties"]["embedding"]["anyOf"][0]
    assert field["type"] == "string" and field["contentEncoding"] == "base64"


def test_activity_origin_comes_whole_and_never_on_a_mark() -> None:
    from pydantic import ValidationError

    from mmbee.schemas.serving import AuthorActivity, UserActivity

    gift = dict(kind="gift", event_id="g1", ts_ms=1_746_000_000_000, user_id="u1",
                author_id="a1", live_id="l1", gift_value=1.0)  # fmt: skip
    ok = UserActivity(**gift, source="live.gifts:3", source_offset=0)  # type: ignore[arg-type]
    assert UserActivity.model_validate_json(ok.model_dump_json()) == ok
    assert UserActivity(**gift).source is None  # type: ignore[arg-type]
    watch = dict(kind="watch", event_id="w1", ts_ms=1_746_000_000_000, author_id="a1",
                 user_id="u1", live_id="l1")  # fmt: skip
    assert AuthorActivity(**watch, source="live.watch:0", source_offset=5).source_offset == 5  # type: ignore[arg-type]
    for model, fields in ((UserActivity, gift), (AuthorActivity, watch)):
        for bad, why in (
            ({"source": "live.gifts:3"}, "come together"),
            ({"source_offset": 3}, "come together"),
            ({"source": "live.gifts:3", "source_offset": -1}, "greater than or equal"),
            ({"source": "live.gifts", "source_offset": 1}, "pattern"),
            ({"source": "live.gifts:3", "source_offset": "1"}, "valid integer"),
        ):
            with pytest.raises(ValidationError, match=why):  # strict, as the codec reads
                model.model_validate_json(json.dumps({**fields, **bad}), strict=True)
        mark = {"kind": "mark", "marks": {"live.gifts:0": None}}
        with pytest.raises(ValidationError, match="a mark carries no source"):
            model.model_validate({**mark, "source": "live.gifts:3", "source_offset": 1})
