"""Field types shared by every topic model: ids, event times, embeddings on the wire.

Embeddings travel as base64 of little-endian float32. Validating one decodes it (to check its
width and finiteness), so the validators hand the decoded vector on: a validated embedding field
holds a `WireEmbedding`, a `str` (the wire text, unchanged) that also carries `.vector`, and
`decode_embedding` returns that vector without decoding the text a second time.

Example:
    >>> wire = encode_embedding([0.5, -1.0])
    >>> wire, decode_embedding(wire).tolist()
    ('AAAAPwAAgL8=', [0.5, -1.0])
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
from typing import Annotated, Any

import numpy as np
import pybase64
from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo

__all__ = [
    "FRAME_DIM",
    "TEXT_DIM",
    "MAX_ID_LEN",
    "MAX_TEXT_CHARS",
    "TS_MIN_MS",
    "TS_MAX_MS",
    "Id",
    "EventId",
    "TsMs",
    "FrameEmbedding",
    "TextEmbedding",
    "WireEmbedding",
    "decode_embedding",
    "encode_embedding",
]

FRAME_DIM = 1280
"""Frame embedding width: EfficientNet-Lite0's pooled features (the default frame featurizer)."""
TEXT_DIM = 384
"""Text embedding width: all-MiniLM-L6-v2 (the default text featurizer)."""
MAX_ID_LEN = 64
MAX_EVENT_ID_LEN = 128

MAX_TEXT_CHARS = 2000
TS_MIN_MS = 946_684_800_000
"""2000-01-01T00:00:00Z: anything earlier is a unit or clock bug, not an event."""
TS_MAX_MS = 4_102_444_800_000
"""2100-01-01T00:00:00Z."""

_ID_PATTERN = r"^[A-Za-z0-9_.:\-]+$"

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN, pattern=_ID_PATTERN)]
"""A user, author (streamer) or live-room id: 1..64 chars of [A-Za-z0-9_.:-]."""
EventId = Annotated[str, Field(min_length=1, max_length=MAX_EVENT_ID_LEN, pattern=_ID_PATTERN)]
"""Globally unique id of one event; re-delivered or re-sent copies carry the same id."""
TsMs = Annotated[int, Field(ge=TS_MIN_MS, lt=TS_MAX_MS, strict=False)]
"""Event time in milliseconds since the Unix epoch (UTC), within 2000..2100."""


class WireEmbedding(str):
    """An embedding's wire text (base64 of little-endian float32) carrying its decoded vector.

    Made only by `encode_embedding` and by the schema validators, so `vector` always equals the
    decoded text; it is read-only. Everything that takes a `str` takes it (JSON output is the
    plain text); it is what a validated embedding field of a model holds.

    Example:
        >>> w = encode_embedding([1.0, 2.0])
        >>> isinstance(w, str), w.vector.dtype, w.vector.flags.writeable
        (True, dtype('float32'), False)
    """

    vector: np.ndarray
    """(d,) float32, read-only."""

    def __new__(cls, wire: str, vector: np.ndarray) -> WireEmbedding:
        obj = super().__new__(cls, wire)
        obj.vector = vector
        return obj

    def __reduce__(self) -> tuple[Any, tuple[str, np.ndarray]]:
        return WireEmbedding, (str(self), self.vector)


_WIRE_DTYPE = np.dtype("<f4")  # little-endian float32 (numpy's float32 on x86 and ARM)


def _vector(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=_WIRE_DTYPE)  # (d,) read-only


def encode_embedding(vec: np.ndarray | list[float]) -> WireEmbedding:
    """Encode a 1-d vector as base64 of little-endian float32 (the wire format of embeddings).

    The result is the wire text; it also carries the float32 vector (`WireEmbedding.vector`).
    """
    raw = np.ascontiguousarray(np.asarray(vec, dtype="<f4").reshape(-1)).tobytes()  # a copy
    return WireEmbedding(pybase64.b64encode(raw).decode("ascii"), _vector(raw))


def decode_embedding(b64: str) -> np.ndarray:
    """Decode an embedding wire string to a float32 numpy vector of shape (d,) (read-only).

    A validated field (a `WireEmbedding`) is not decoded again: its vector is returned."""
    if isinstance(b64, WireEmbedding):
        return b64.vector
    return _vector(pybase64.b64decode(b64))


def _base64_error(value: str) -> str:
    """Why `value` is not strict base64 (standard alphabet, padded); the standard library words
    most errors better than pybase64 ("Incorrect padding", ...)."""
    why = "rejected"
    try:
        pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        why = str(exc)
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as std:
        why = str(std)
    return f"embedding is not valid base64: {why}"


@functools.lru_cache(maxsize=16)
def _tiny_weights(dim: int) -> np.ndarray:
    out = np.full(dim, 2.0**-64, dtype=np.float32)  # (d,)
    out.flags.writeable = False
    return out


def _to_b64(value: Any, info: ValidationInfo) -> Any:
    """Accept a list/tuple/ndarray of floats built in Python and turn it into the wire string.

    On the wire (JSON input) an embedding is base64 text only, as the published schema says: a
    JSON list is refused, not converted."""
    if type(value) is str:  # the wire form (every message off a topic): nothing to do
        return value
    if info.mode == "json":
        if isinstance(value, list):
            raise ValueError("embedding must be base64 text on the wire, not a JSON list")
        return value  # not a string: the str validator refuses it, strictly
    if isinstance(value, list | tuple | np.ndarray):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as exc:  # e.g. an int beyond float range
            raise ValueError(f"embedding is not a vector of floats: {exc}") from None
        if arr.ndim != 1:
            raise ValueError(f"embedding must be 1-d, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("embedding has non-finite values (NaN or inf)")
        return encode_embedding(arr)
    return value


def _embedding_type(ctx_key: str, default_dim: int) -> Any:
    """An embedding field whose expected width is `default_dim`, or `context[ctx_key]` when the
    validation context sets it (the codec passes the configured featurizer widths)."""

    # the hot path of every content event: names bound here, no helper calls
    b64decode, frombuffer, isfinite, new_str = (
        pybase64.b64decode,
        np.frombuffer,
        math.isfinite,
        str.__new__,
    )

    def check(value: str, info: ValidationInfo) -> WireEmbedding:
        if type(value) is WireEmbedding:  # made by encode_embedding or validated before
            wire = value
            arr = wire.vector
        else:
            try:
                raw = b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(_base64_error(value)) from None
            if len(raw) % 4:
                raise ValueError(
                    f"embedding byte length {len(raw)} is not a multiple of 4 (float32)"
                )
            arr = frombuffer(raw, dtype=_WIRE_DTYPE)  # (d,) read-only
            wire = new_str(WireEmbedding, value)
            wire.vector = arr
        context = info.context
        want = default_dim if context is None else int(context.get(ctx_key, default_dim))
        if arr.shape[0] != want:
            raise ValueError(f"embedding has length {arr.shape[0]}, expected {want}")
        # One BLAS pass instead of isfinite + all: the sum of the values scaled by 2**-64
        # cannot overflow (|x| * 2**-64 < 2**65, d terms), so it is finite exactly when every
        # value is.
        if not isfinite(float(arr.dot(_tiny_weights(want)))):
            raise ValueError("embedding has non-finite values (NaN or inf)")
        return wire

    return Annotated[
        str,
        BeforeValidator(_to_b64),
        AfterValidator(check),
        Field(
            description=f"{default_dim} float32 values (width set by the featurizer), base64 "
            "little-endian",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]


FrameEmbedding = _embedding_type("frame_dim", FRAME_DIM)
"""A frame embedding on the wire (default width 1280)."""
TextEmbedding = _embedding_type("text_dim", TEXT_DIM)
"""A text embedding on the wire (default width 384)."""
