"""The one codec of mmbee's topics: raw Kafka bytes <-> validated pydantic models, never raising.

Faust topics carry raw bytes (`value_serializer="raw"`); agents decode with `EventCodec.decode`,
which returns either the validated model or a `Rejected` with the dead-letter reason, so a bad
message reaches the DLQ with its original bytes instead of crashing inside Faust's own
deserialiser. Embedding widths come from the settings through pydantic's validation context.

Validation is strict, as the published JSON Schema (`mmbee schemas export`) is: no coercion
between strings, numbers and booleans (`"gift_value": "2"` and `"ts_ms": true` are refused), an
integer field takes a JSON integer (`1.0` is refused: the one place the validator is narrower
than the schema, which cannot tell `1.0` from `1`), a number field takes any JSON number.

Example:
    >>> codec = EventCodec(frame_dim=4, text_dim=3)
    >>> from mmbee.schemas import GiftEvent
    >>> codec.decode(GiftEvent, b"{not json").reason
    'decode_error'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mmbee.schemas.events import DeadLetterReason
from mmbee.schemas.topics import TOPICS, TopicSpec

__all__ = ["Rejected", "EventCodec", "describe_errors"]

M = TypeVar("M", bound=BaseModel)

_OVERSIZE_TYPES = frozenset({"string_too_long", "too_long", "bytes_too_long"})
_DECODE_TYPES = frozenset({"json_invalid", "json_type"})


@dataclass(frozen=True)
class Rejected:
    """Why raw bytes did not decode into a model; `event_id` is recovered when the JSON allows.

    Example:
        >>> Rejected("validation_error", "ts_ms: too small", "e1").reason
        'validation_error'
    """

    reason: DeadLetterReason
    detail: str
    event_id: str | None = None


def describe_errors(exc: ValidationError, limit: int = 5) -> str:
    """A compact one-line summary of a pydantic ValidationError (field path: message)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<message>"
        parts.append(f"{loc}: {err.get('msg', '')}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"(+{more} more)")
    return "; ".join(parts)


def _event_id_of(raw: bytes) -> str | None:
    """The `event_id` (or `request_id`) of a rejected JSON object, if it has a usable one."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    value = obj.get("event_id", obj.get("request_id"))
    return value[:256] if isinstance(value, str) and value else None


class EventCodec:
    """Validates raw topic values against the contract (`mmbee.schemas`) and serialises models.

    Args:
        frame_dim: expected width of frame embeddings (validation context `frame_dim`).
        text_dim: expected width of text embeddings (validation context `text_dim`).

    Example:
        >>> from mmbee.schemas import GiftEvent
        >>> codec = EventCodec()
        >>> g = GiftEvent(event_id="g", ts_ms=1_700_000_000_000, user_id="u", author_id="a",
        ...               live_id="l", gift_value=1.0)
        >>> codec.decode(GiftEvent, codec.encode(g)) == g
        True
    """

    def __init__(self, frame_dim: int = 1280, text_dim: int = 384) -> None:
        self.frame_dim = frame_dim
        self.text_dim = text_dim
        self.context: dict[str, Any] = {"frame_dim": frame_dim, "text_dim": text_dim}

    def decode(
        self, model: type[M], raw: bytes | None, *, max_bytes: int | None = None
    ) -> M | Rejected:
        """The validated `model` in `raw`, or a Rejected (decode_error / oversized /
        validation_error) with a reason a person can act on."""
        if raw is None:
            return Rejected("decode_error", "message has no value (tombstone)")
        if not isinstance(raw, bytes | bytearray | memoryview):
            return Rejected("decode_error", f"message value is {type(raw).__name__}, not bytes")
        raw = bytes(raw)
        if max_bytes is not None and len(raw) > max_bytes:
            return Rejected(
                "oversized", f"message is {len(raw)} bytes, at most {max_bytes}", _event_id_of(raw)
            )
        try:
            return model.model_validate_json(raw, strict=True, context=self.context)
        except ValidationError as exc:
            types = {e["type"] for e in exc.errors(include_url=False, include_input=False)}
            if types and types <= _DECODE_TYPES:
                return Rejected("decode_error", describe_errors(exc))
            reason: DeadLetterReason = (
                "oversized" if types and types <= _OVERSIZE_TYPES else "validation_error"
            )
            return Rejected(reason, describe_errors(exc), _event_id_of(raw))

    def decode_topic(self, name: str, raw: bytes | None) -> BaseModel | Rejected:
        """Decode a value of catalogue topic `name` (e.g. "live.frames") with its model and
        size limit."""
        spec: TopicSpec = TOPICS[name]
        return self.decode(spec.model, raw, max_bytes=spec.max_message_bytes)

    @staticmethod
    def encode(model: BaseModel) -> bytes:
        """The JSON bytes of a model (what producers put on a topic)."""
        return model.model_dump_json().encode()

    @staticmethod
    def key_of(name: str, model: BaseModel) -> bytes | None:
        """The message key of `model` on catalogue topic `name` (its key field), or None."""
        field = TOPICS[name].key
        if field == "none":
            return None
        return str(getattr(model, field)).encode()
