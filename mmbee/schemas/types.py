"""Field types shared by every topic model: ids, event times, embeddings on the wire."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import numpy as np
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


def encode_embedding(vec: np.ndarray | list[float]) -> str:
    """Encode a 1-d vector as base64 of little-endian float32 (the wire format of embeddings)."""
    arr = np.ascontiguousarray(np.asarray(vec, dtype="<f4").reshape(-1))
    return base64.b64encode(arr.tobytes()).decode("ascii")


def decode_embedding(b64: str) -> np.ndarray:
    """Decode an embedding wire string to a float32 numpy vector of shape (d,)."""
    return np.frombuffer(base64.b64decode(b64), dtype="<f4").astype(np.float32, copy=False)


def _to_b64(value: Any) -> Any:
    """Accept a list/tuple/ndarray of floats and turn it into the wire string."""
    if isinstance(value, list | tuple | np.ndarray):
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"embedding must be 1-d, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("embedding has non-finite values (NaN or inf)")
        return encode_embedding(arr)
    return value


def _embedding_type(ctx_key: str, default_dim: int) -> Any:
    """An embedding field whose expected width is `default_dim`, or `context[ctx_key]` when the
    validation context sets it (the codec passes the configured featurizer widths)."""

    def check(value: str, info: ValidationInfo) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"embedding is not valid base64: {exc}") from None
        if len(raw) % 4:
            raise ValueError(f"embedding byte length {len(raw)} is not a multiple of 4 (float32)")
        arr = np.frombuffer(raw, dtype="<f4")
        want = int((info.context or {}).get(ctx_key, default_dim))
        if arr.shape[0] != want:
            raise ValueError(f"embedding has length {arr.shape[0]}, expected {want}")
        if not np.isfinite(arr).all():
            raise ValueError("embedding has non-finite values (NaN or inf)")
        return value

    return Annotated[
        str,
        BeforeValidator(_to_b64),
        AfterValidator(check),
        Field(
            description=f"{default_dim} float32 values (width set by the featurizer), base64 "
            "little-endian; a JSON list of floats is accepted on input and converted",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]


FrameEmbedding = _embedding_type("frame_dim", FRAME_DIM)
"""A frame embedding on the wire (default width 1280)."""
TextEmbedding = _embedding_type("text_dim", TEXT_DIM)
"""A text embedding on the wire (default width 384)."""
