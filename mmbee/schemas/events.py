"""Pydantic models of every message on mmbee's Kafka topics: the only contract between agents.

Each model rejects bad input with a reason (pydantic's error message names the field and why).
Models are frozen and forbid unknown fields. Off the wire (`mmbee.streams.codec`) they validate
strictly, as their published JSON Schema says: no string/number/boolean coercion. Embeddings
travel as base64 float32 (`mmbee.schemas.types.encode_embedding`, base64 text only in JSON);
JPEG and PCM payloads are `bytes` (base64 in JSON).

Example:
    >>> g = GiftEvent(event_id="g1", ts_ms=1_700_000_000_000, user_id="u1", author_id="a1",
    ...               live_id="l1", gift_value=2.0)
    >>> GiftEvent.model_validate_json(g.model_dump_json()) == g
    True
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmbee.schemas.types import (
    MAX_TEXT_CHARS,
    EventId,
    FrameEmbedding,
    Id,
    TextEmbedding,
    TsMs,
)

__all__ = [
    "MAX_AUDIO_SECONDS",
    "AUDIO_SAMPLE_RATE_HZ",
    "MAX_JPEG_BYTES",
    "MAX_COMMENT_CHARS",
    "MAX_CANDIDATES",
    "Event",
    "FrameEvent",
    "AudioChunk",
    "AsrSegment",
    "CommentEvent",
    "GiftEvent",
    "WatchEvent",
    "ScoreRequest",
    "AuthorScore",
    "ScoreResponse",
    "DeadLetterReason",
    "DeadLetter",
    "SegmentClosed",
]

AUDIO_SAMPLE_RATE_HZ = 16_000
MAX_AUDIO_SECONDS = 30
MAX_JPEG_BYTES = 512 * 1024
MAX_COMMENT_CHARS = 500
MAX_CANDIDATES = 500
MAX_DEAD_LETTER_BYTES = 1024 * 1024

_STRICT = ConfigDict(
    extra="forbid",
    frozen=True,
    allow_inf_nan=False,
    ser_json_bytes="base64",
    val_json_bytes="base64",
)
"""Frozen, unknown fields rejected, NaN/inf rejected; `bytes` fields are raw bytes in Python and
base64 (URL-safe alphabet; the standard one is accepted too) in JSON."""


class Event(BaseModel):
    """Fields every event carries: a unique `event_id` and its event time `ts_ms`."""

    model_config = _STRICT

    event_id: EventId
    ts_ms: TsMs


class FrameEvent(Event):
    """One video frame of a live stream: either a JPEG image or a precomputed frame embedding.

    Topic `live.frames`, key `author_id`.
    """

    live_id: Id
    author_id: Id
    image_jpeg: bytes | None = Field(default=None, description="JPEG bytes (base64 in JSON)")
    embedding: FrameEmbedding | None = None

    @model_validator(mode="after")
    def _exactly_one_payload(self) -> Self:
        if (self.image_jpeg is None) == (self.embedding is None):
            raise ValueError("exactly one of image_jpeg or embedding must be set")
        if self.image_jpeg is not None:
            if len(self.image_jpeg) > MAX_JPEG_BYTES:
                raise ValueError(
                    f"image_jpeg is {len(self.image_jpeg)} bytes, at most {MAX_JPEG_BYTES}"
                )
            if not self.image_jpeg.startswith(b"\xff\xd8\xff"):
                raise ValueError("image_jpeg does not start with the JPEG SOI marker")
        return self


class AudioChunk(Event):
    """A chunk of a live stream's audio: 16 kHz mono signed 16-bit little-endian PCM, <= 30 s.

    Topic `live.audio`, key `author_id`. `ts_ms` is the time of the first sample.
    """

    live_id: Id
    author_id: Id
    sample_rate_hz: Literal[16000] = 16000
    pcm_s16le: bytes = Field(description="16 kHz mono int16 little-endian PCM (base64 in JSON)")

    @model_validator(mode="after")
    def _check_pcm(self) -> Self:
        n = len(self.pcm_s16le)
        if n == 0 or n % 2:
            raise ValueError(f"pcm_s16le must hold a positive even number of bytes, got {n}")
        if n > MAX_AUDIO_SECONDS * AUDIO_SAMPLE_RATE_HZ * 2:
            raise ValueError(
                f"audio chunk is {n / (2 * AUDIO_SAMPLE_RATE_HZ):.1f} s, at most "
                f"{MAX_AUDIO_SECONDS} s"
            )
        return self

    @property
    def duration_ms(self) -> int:
        """Length of the chunk in milliseconds."""
        return len(self.pcm_s16le) * 1000 // (2 * AUDIO_SAMPLE_RATE_HZ)


class AsrSegment(Event):
    """Transcribed speech of a live stream (Whisper output, or the simulator's speech script).

    Topic `live.asr`, key `author_id`. `ts_ms` is the start of the speech, `end_ms` its end.
    """

    live_id: Id
    author_id: Id
    end_ms: TsMs
    text: str = Field(max_length=MAX_TEXT_CHARS)
    language: str = Field(default="en", min_length=2, max_length=8)
    text_embedding: TextEmbedding | None = None
    audio_event_id: EventId | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end_ms < self.ts_ms:
            raise ValueError("end_ms is before ts_ms")
        return self


class CommentEvent(Event):
    """A viewer's comment in a live room. Topic `live.comments`, key `author_id`."""

    user_id: Id
    author_id: Id
    live_id: Id
    text: str = Field(min_length=1, max_length=MAX_COMMENT_CHARS)
    text_embedding: TextEmbedding | None = None


class GiftEvent(Event):
    """A viewer sends a gift to a streamer. Topic `live.gifts`, key `author_id`.

    `gift_value` is the price in the platform's unit (KuaiLive's `gift_price`), > 0.
    """

    user_id: Id
    author_id: Id
    live_id: Id
    gift_value: float = Field(gt=0, le=1e7)


class WatchEvent(Event):
    """A viewer enters or leaves a live room: the impression the GTR model scores.

    Topic `live.watch`, key `user_id`. `watch_ms` (time spent in the room) is set on `leave`.
    """

    user_id: Id
    author_id: Id
    live_id: Id
    action: Literal["enter", "leave"] = "enter"
    watch_ms: int | None = Field(default=None, ge=0, le=7 * 24 * 3600 * 1000)

    @model_validator(mode="after")
    def _watch_ms_on_leave(self) -> Self:
        if self.action == "enter" and self.watch_ms is not None:
            raise ValueError("watch_ms is only set on a 'leave' event")
        return self


class ScoreRequest(BaseModel):
    """Ask for gift probabilities of one viewer for candidate streamers.

    Topic `score.requests`, key `user_id`; also the body of `POST /score`.
    """

    model_config = _STRICT

    request_id: EventId
    user_id: Id
    candidate_author_ids: list[Id] = Field(min_length=1, max_length=MAX_CANDIDATES)
    ts_ms: TsMs

    @model_validator(mode="after")
    def _unique(self) -> Self:
        if len(set(self.candidate_author_ids)) != len(self.candidate_author_ids):
            raise ValueError("candidate_author_ids has duplicates")
        return self


class AuthorScore(BaseModel):
    """One candidate's score: P(gift to `author_id` within 1 h | impression now)."""

    model_config = _STRICT

    author_id: Id
    score: float = Field(ge=0.0, le=1.0)


class ScoreResponse(BaseModel):
    """Answer to a ScoreRequest. Topic `score.responses`, key `user_id`.

    On a bad request `error` says why and `scores` is empty.
    """

    model_config = _STRICT

    request_id: str = Field(max_length=256)
    user_id: str = Field(max_length=256)
    scores: list[AuthorScore] = Field(default_factory=list)
    model_version: str = ""
    latency_ms: float = Field(ge=0.0)
    ts_ms: int
    error: str | None = None


DeadLetterReason = Literal[
    "decode_error",
    "validation_error",
    "late",
    "duplicate",
    "unknown_id",
    "oversized",
    "processing_error",
]


class DeadLetter(BaseModel):
    """A message an agent could not apply, with the reason. Topic `mmbee.dlq`.

    `original` holds the message bytes as received (cut to 1 MiB, `truncated` says so).
    """

    model_config = _STRICT

    original: bytes
    truncated: bool = False
    source_topic: str = Field(max_length=255)
    partition: int | None = None
    offset: int | None = None
    agent: str = Field(max_length=128)
    reason: DeadLetterReason
    detail: str = Field(max_length=4000)
    event_id: str | None = Field(default=None, max_length=256)
    dead_lettered_at_ms: int

    @classmethod
    def wrap(
        cls,
        original: bytes,
        *,
        source_topic: str,
        agent: str,
        reason: DeadLetterReason,
        detail: str,
        now_ms: int,
        partition: int | None = None,
        offset: int | None = None,
        event_id: str | None = None,
    ) -> DeadLetter:
        """Build a DeadLetter, cutting oversized originals and details to the field limits."""
        cut = original[:MAX_DEAD_LETTER_BYTES]
        return cls(
            original=cut,
            truncated=len(cut) < len(original),
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            agent=agent,
            reason=reason,
            detail=detail[:4000],
            event_id=None if event_id is None else event_id[:256],
            dead_lettered_at_ms=now_ms,
        )


class SegmentClosed(BaseModel):
    """A closed content segment of one live stream: pooled features of a fixed event-time window.

    Topic `content.segments`, key `author_id`. Emitted by the segment agent when the watermark
    passes `end_ms` plus the allowed lateness; the content encoders read these. A pooled vector
    is None when the segment had no event of that modality.
    """

    model_config = _STRICT

    author_id: Id
    live_id: Id
    start_ms: TsMs
    end_ms: TsMs
    n_frames: int = Field(ge=0)
    n_comments: int = Field(ge=0)
    n_asr: int = Field(ge=0)
    frame_mean: FrameEmbedding | None = None
    comment_mean: TextEmbedding | None = None
    asr_mean: TextEmbedding | None = None
