"""The contract between agents: pydantic models of every topic's messages, and the topic catalogue.

Imports nothing of mmbee's. Start with `events.py` (the models), then `topics.py` (which model
travels on which topic, keyed by what).
"""

from mmbee.schemas.events import (
    AsrSegment,
    AudioChunk,
    AuthorScore,
    CommentEvent,
    DeadLetter,
    DeadLetterReason,
    Event,
    FrameEvent,
    GiftEvent,
    ScoreRequest,
    ScoreResponse,
    SegmentClosed,
    WatchEvent,
)
from mmbee.schemas.topics import TOPICS, TopicSpec, co_partitioned_groups, topic_spec
from mmbee.schemas.types import (
    FRAME_DIM,
    TEXT_DIM,
    decode_embedding,
    encode_embedding,
)

__all__ = [
    "AsrSegment",
    "AudioChunk",
    "AuthorScore",
    "CommentEvent",
    "DeadLetter",
    "DeadLetterReason",
    "Event",
    "FrameEvent",
    "GiftEvent",
    "ScoreRequest",
    "ScoreResponse",
    "SegmentClosed",
    "WatchEvent",
    "TOPICS",
    "TopicSpec",
    "co_partitioned_groups",
    "topic_spec",
    "FRAME_DIM",
    "TEXT_DIM",
    "decode_embedding",
    "encode_embedding",
]
