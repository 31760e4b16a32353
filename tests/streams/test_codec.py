"""The codec: valid messages decode; every kind of bad input becomes a Rejected with a reason;
what the published JSON Schema refuses, the codec refuses (no coercion)."""

from __future__ import annotations

import base64
import copy
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from mmbee.schemas import (
    TOPICS,
    CommentEvent,
    DeadLetter,
    DeadLetterReason,
    FrameEvent,
    GiftEvent,
    encode_embedding,
)
from mmbee.schemas.topics import export_json_schemas
from mmbee.streams.codec import EventCodec, Rejected

CODEC = EventCodec(frame_dim=8, text_dim=4)
TS = 1_700_000_000_000
GIFT = GiftEvent(event_id="g1", ts_ms=TS, user_id="u1", author_id="a1", live_id="l1", gift_value=5)


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
    wire = str(encode_embedding(np.full(8, 0.5, np.float32)))
    ok = CODEC.decode(FrameEvent, json.dumps({**base, "embedding": wire}).encode())
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


# --- strictness: the validator refuses whatever the published JSON Schema refuses -----------


@pytest.mark.parametrize(
    "changes",
    [
        {"gift_value": "2"},  # number as string: it was accepted and applied as a gift
        {"gift_value": True},
        {"gift_value": None},
        {"gift_value": [2]},
        {"ts_ms": "1700000000000"},
        {"ts_ms": True},
        {"ts_ms": 1_700_000_000_000.5},
        {"user_id": 7},
        {"user_id": False},
    ],
)
def test_no_coercion_between_strings_numbers_and_booleans(changes: dict[str, object]) -> None:
    raw = gift_json(**changes)
    assert not schema_accepts("live.gifts", json.loads(raw))
    got = CODEC.decode(GiftEvent, raw)
    assert isinstance(got, Rejected) and got.reason == "validation_error" and got.detail
    assert got.event_id == "g1"


@pytest.mark.parametrize("value", [2, 2.5, 10_000_000])
def test_a_json_integer_is_a_number(value: float) -> None:
    raw = gift_json(gift_value=value)
    assert schema_accepts("live.gifts", json.loads(raw))
    assert CODEC.decode(GiftEvent, raw) == GIFT.model_copy(update={"gift_value": value})


def test_integers_are_written_as_integers() -> None:
    # the one narrowing against the schema (documented in mmbee/streams/codec.py): a JSON
    # Schema "integer" also matches 1.0; the codec wants an integer written as one
    raw = gift_json(ts_ms=1_700_000_000_000.0)
    assert schema_accepts("live.gifts", json.loads(raw))
    got = CODEC.decode(GiftEvent, raw)
    assert isinstance(got, Rejected) and "integer" in got.detail


def test_embeddings_are_base64_text_on_the_wire() -> None:
    base = {"event_id": "f1", "ts_ms": TS, "live_id": "l", "author_id": "a"}
    as_list = json.dumps({**base, "embedding": [0.5] * 8}).encode()
    assert not schema_accepts("live.frames", json.loads(as_list))
    got = CODEC.decode(FrameEvent, as_list)
    assert isinstance(got, Rejected) and "base64" in got.detail
    # an integer beyond the float range in a list escaped the codec as OverflowError
    huge = json.dumps({**base, "embedding": [10**400] * 8}).encode()
    got = CODEC.decode(FrameEvent, huge)
    assert isinstance(got, Rejected) and got.reason == "validation_error"
    with pytest.raises(ValidationError, match="not a vector of floats"):
        FrameEvent.model_validate({**base, "embedding": [10**400] * 8}, context=CODEC.context)


# --- every topic: a valid message, its published schema, and Hypothesis around them ---------

F8 = str(encode_embedding(np.arange(8, dtype=np.float32)))
T4 = str(encode_embedding(np.ones(4, dtype=np.float32)))
B64 = base64.b64encode
IDS = {"user_id": "u1", "author_id": "a1", "live_id": "l1"}
VALID: dict[str, dict[str, Any]] = {
    "live.frames": {"event_id": "f1", "ts_ms": TS, "live_id": "l1", "author_id": "a1",
                    "embedding": F8},
    "live.audio": {"event_id": "au1", "ts_ms": TS, "live_id": "l1", "author_id": "a1",
                   "sample_rate_hz": 16000, "pcm_s16le": B64(b"\x01\x00" * 64).decode()},
    "live.asr": {"event_id": "s1", "ts_ms": TS, "end_ms": TS + 900, "live_id": "l1",
                 "author_id": "a1", "text": "hello", "language": "en", "text_embedding": T4},
    "live.comments": {"event_id": "c1", "ts_ms": TS, "text": "hi", "text_embedding": T4, **IDS},
    "live.gifts": json.loads(GIFT.model_dump_json()),
    "live.watch": {"event_id": "w1", "ts_ms": TS, "action": "leave", "watch_ms": 5_000, **IDS},
    "content.segments": {"author_id": "a1", "live_id": "l1", "start_ms": TS,
                         "end_ms": TS + 10_000, "n_frames": 2, "n_comments": 1, "n_asr": 0,
                         "frame_mean": F8, "comment_mean": T4, "asr_mean": None},
    "score.requests": {"request_id": "r1", "user_id": "u1", "candidate_author_ids": ["a1", "a2"],
                       "ts_ms": TS},
    "score.responses": {"request_id": "r1", "user_id": "u1", "model_version": "v1",
                        "scores": [{"author_id": "a1", "score": 0.25}], "latency_ms": 1.5,
                        "ts_ms": TS, "error": None},
    "train.examples": {"event_id": "w1", "ts_ms": TS, "user_id": "u1", "author_id": "a1",
                       "history": [[TS - 5, "a2", 2]], "user_gift_value": 3.0,
                       "segment_starts": [TS - 10_000], "expansions": {"a2a": [["a3", 0.5]]},
                       "label_watch": 1, "label_comment": 0, "label_gift": 1, "gift_value": 2.0,
                       "emitted_at_ms": TS + 3_600_001},
    "graph.user_expansions": {"user_id": "u1", "built_at_ms": TS, "u2a2a": [["a2", 0.5]],
                              "u2a2u": [["u2", 1]]},
    "graph.author_expansions": {"author_id": "a1", "built_at_ms": TS, "a2a": [["a2", 0.25]]},
    "user.activity": {"kind": "gift", "event_id": "g1", "ts_ms": TS, "gift_value": 2.0, **IDS},
    "author.activity": {"kind": "watch", "event_id": "w1", "ts_ms": TS, **IDS},
    "author.state": {"author_id": "a1", "as_of_ms": TS, "base_ms": TS - 10, "base_watches": 1,
                     "watch_ts": [TS - 5, TS], "gift_ts": [TS]},
    "model.versions": {"model_name": "gtr", "version": "v1", "path": "/models/v1.pt",
                       "sha256": "0" * 64, "created_at_ms": TS, "examples": 10,
                       "metrics": {"auc": 0.7}},
    "dlq": json.loads(DeadLetter.wrap(b"\x00junk", source_topic="mmbee.live.gifts", agent="graph",
                                      reason="decode_error", detail="not JSON",
                                      now_ms=TS).model_dump_json()),
}  # fmt: skip
REASONS = frozenset(get_args(DeadLetterReason))
_SCHEMAS: dict[str, dict[str, Any]] = {}


def schema_of(topic: str) -> dict[str, Any]:
    """The published JSON Schema of `topic`, as `mmbee schemas export` writes it."""
    if not _SCHEMAS:
        with tempfile.TemporaryDirectory() as tmp:
            for path in export_json_schemas(Path(tmp)):
                _SCHEMAS[path.name.removesuffix(".schema.json")] = json.loads(path.read_text())
    return _SCHEMAS[topic]


def schema_accepts(topic: str, instance: object) -> bool:
    """Whether parsed JSON `instance` is valid against the topic's published schema."""
    schema = schema_of(topic)
    return _valid(instance, schema, schema)


def _json_type(x: object) -> str | None:
    """The narrowest JSON Schema type of a parsed JSON value (None: not JSON, e.g. NaN)."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "boolean"
    if isinstance(x, int):
        return "integer"
    if isinstance(x, float):
        if not math.isfinite(x):
            return None
        return "integer" if x.is_integer() else "number"
    return {str: "string", list: "array", dict: "object"}.get(type(x))


def _same(x: object, y: object) -> bool:
    """JSON equality (true is not 1)."""
    return x == y and (_json_type(x) == "boolean") == (_json_type(y) == "boolean")


def _ecma(pattern: str) -> str:
    """An ECMA-262 pattern for Python's re: `$` is the end of the text, not before a newline."""
    return (
        pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern
    )


def _valid(x: object, s: dict[str, Any], root: dict[str, Any]) -> bool:  # noqa: C901
    """Validate against the part of JSON Schema 2020-12 that pydantic's exports use (`format`
    and `contentEncoding` are annotations, as the specification says; an unknown keyword fails
    the test so that this checker grows with the schemas)."""
    unknown = set(s) - _KEYWORDS
    assert not unknown, f"the schema checker does not know {unknown}"
    jt = _json_type(x)
    if jt is None:
        return False
    if "$ref" in s and not _valid(x, root["$defs"][s["$ref"].removeprefix("#/$defs/")], root):
        return False
    if "anyOf" in s and not any(_valid(x, sub, root) for sub in s["anyOf"]):
        return False
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if jt not in types and not (jt == "integer" and "number" in types):
            return False
    if "enum" in s and not any(_same(x, e) for e in s["enum"]):
        return False
    if "const" in s and not _same(x, s["const"]):
        return False
    if jt in ("integer", "number"):
        assert isinstance(x, int | float)
        if x < s.get("minimum", -math.inf) or x > s.get("maximum", math.inf):
            return False
        if x <= s.get("exclusiveMinimum", -math.inf) or x >= s.get("exclusiveMaximum", math.inf):
            return False
    if isinstance(x, str):
        if not s.get("minLength", 0) <= len(x) <= s.get("maxLength", math.inf):
            return False
        if "pattern" in s and not re.search(_ecma(s["pattern"]), x):
            return False
    if isinstance(x, list):
        if not s.get("minItems", 0) <= len(x) <= s.get("maxItems", math.inf):
            return False
        prefix = s.get("prefixItems", [])
        if not all(_valid(v, sub, root) for v, sub in zip(x, prefix, strict=False)):
            return False
        if "items" in s and not all(_valid(v, s["items"], root) for v in x[len(prefix) :]):
            return False
    if isinstance(x, dict):
        if any(k not in x for k in s.get("required", [])) or len(x) > s.get("maxProperties", 1e9):
            return False
        props, patterns = s.get("properties", {}), s.get("patternProperties", {})
        extra = s.get("additionalProperties", True)
        for k, v in x.items():
            if "propertyNames" in s and not _valid(k, s["propertyNames"], root):
                return False
            subs = [props[k]] if k in props else []
            subs += [sub for pat, sub in patterns.items() if re.search(_ecma(pat), k)]
            if not subs and extra is not True:
                subs = [extra] if extra is not False else []
                if not subs:
                    return False
            if not all(_valid(v, sub, root) for sub in subs):
                return False
    return True


_KEYWORDS = frozenset(
    "$id $ref $defs anyOf type enum const minimum maximum exclusiveMinimum exclusiveMaximum "
    "minLength maxLength pattern minItems maxItems prefixItems items required maxProperties "
    "properties patternProperties additionalProperties propertyNames format contentEncoding "
    "title description default x-kafka-key".split()
)


def _decoded(topic: str, raw: bytes) -> BaseModel | Rejected:
    """Decode like an agent: nothing may escape, and a rejection carries a reason."""
    got = CODEC.decode_topic(topic, raw)
    if isinstance(got, Rejected):
        assert got.reason in REASONS and got.detail.strip(), got
    else:
        assert isinstance(got, TOPICS[topic].model)
    return got


@pytest.mark.parametrize("topic", sorted(TOPICS))
def test_every_topic_has_a_valid_sample_that_both_accept(topic: str) -> None:
    assert set(VALID) == set(TOPICS)
    obj = VALID[topic]
    assert schema_accepts(topic, obj)
    got = _decoded(topic, json.dumps(obj).encode())
    assert not isinstance(got, Rejected), got
    assert _decoded(topic, CODEC.encode(got)) == got  # what the codec writes, it reads


@pytest.mark.parametrize("topic", sorted(TOPICS))
def test_an_oversized_message_is_rejected_as_oversized(topic: str) -> None:
    limit = TOPICS[topic].max_message_bytes
    obj = {**VALID[topic], "padding": "x" * limit}
    got = _decoded(topic, json.dumps(obj).encode())
    assert isinstance(got, Rejected) and got.reason == "oversized"


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, -1, 10**400, 2**63, 1.0, 1e300, math.nan, math.inf, -math.inf])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "2", "1700000000000", "NaN", "true", "null", "x" * 5000, F8, T4])
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def _as_string(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v)


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, bytes, dict[str, Any]]:
    """(topic, raw, parsed): a topic's valid message with one field changed, dropped or added."""
    topic = draw(st.sampled_from(sorted(TOPICS)))
    obj = copy.deepcopy(VALID[topic])
    fields = sorted(set(obj) | set(TOPICS[topic].model.model_fields))
    name = draw(st.sampled_from(fields) | st.text(min_size=1, max_size=12))
    how = draw(st.sampled_from(["replace", "stringify", "drop", "swap", "nest", "grow"]))
    old = obj.get(name)
    if how == "drop":
        obj.pop(name, None)
    elif how == "stringify":  # number as string, string as number where it parses
        obj[name] = _as_string(old) if not isinstance(old, str) else draw(_json)
    elif how == "swap":  # the same value with another field's type
        obj[name] = obj.get(draw(st.sampled_from(fields)))
    elif how == "nest":
        obj[name] = [old] if draw(st.booleans()) else {"value": old}
    elif how == "grow":
        obj[name] = (_as_string(old) if old is not None else "") + "y" * draw(
            st.sampled_from([1, 64, 300, 5000])
        )
    else:
        obj[name] = draw(_json)
    return topic, json.dumps(obj).encode(), obj


@settings(max_examples=400, deadline=None)
@given(near_valid())
def test_near_valid_json_is_decoded_or_rejected_with_a_reason(
    case: tuple[str, bytes, dict[str, Any]],
) -> None:
    topic, raw, obj = case
    got = _decoded(topic, raw)
    if not schema_accepts(topic, obj):  # the validator never accepts what the schema refuses
        assert isinstance(got, Rejected), (topic, obj)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(TOPICS)),
    st.binary(max_size=256)
    | st.text(max_size=64).map(str.encode)
    | _json.map(lambda v: json.dumps(v).encode()),
)
def test_arbitrary_bytes_never_escape_the_codec(topic: str, raw: bytes) -> None:
    got = _decoded(topic, raw)
    if isinstance(got, Rejected):
        return
    assert schema_accepts(topic, json.loads(raw))
