"""Featurizer throughput on real weights: Whisper real-time factor, text and frame embeddings/s.

Run:   OMP_NUM_THREADS=1 .venv/bin/python bench/featurizers.py
Import (bench/ is not a package; e.g. from bench/ingest.py):
    spec = importlib.util.spec_from_file_location("bench_featurizers", BENCH_DIR / "featurizers.py")
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    figures = module.measure()

Every figure is the median of 3 timed runs after one warm-up run. Baselines measured in the same
run: openai-whisper (PyTorch) on the same tiny.en weights for the Whisper RTF, batch size 1 for
text and frames. CTranslate2 gets as many threads as torch has (torch.get_num_threads(), which
follows OMP_NUM_THREADS). The last line printed is one JSON object.
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "tests" / "fixtures" / "speech" / "welcome.wav"

_WORDS = (
    "love this song",
    "hello from Brazil",
    "gg",
    "what game is this",
    "you sing so well",
    "666",
    "thanks for the stream",
    "can you play it again",
    "so funny haha",
    "where did you buy that",
    "first time here, nice vibes",
    "sending a rocket for you",
)


def _median_time(fn: Callable[[], object], runs: int = 3) -> float:
    fn()  # warm-up: lazy init, allocator, caches
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _speech(seconds_min: float = 10.0) -> np.ndarray:
    """The committed espeak-ng clip, repeated with 0.5 s pauses to at least `seconds_min`."""
    from mmbee.encoders.featurizers import pcm16_to_float32

    with wave.open(str(CLIP), "rb") as w:
        clip = pcm16_to_float32(w.readframes(w.getnframes()))
    pause = np.zeros(8_000, np.float32)
    parts: list[np.ndarray] = []
    while sum(len(p) for p in parts) < seconds_min * 16_000:
        parts += [clip, pause]
    return np.concatenate(parts)


def _comments(n: int, rng: np.random.Generator) -> list[str]:
    """Short comment-like texts (1-3 phrases), deterministic for a given generator."""
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        out.append(", ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), size=k)))
    return out


def _frames(n: int, rng: np.random.Generator) -> list[bytes]:
    """n 640x360 JPEG frames cut from real photos shipped by matplotlib and scikit-learn."""
    import matplotlib.cbook
    import sklearn.datasets
    from PIL import Image

    sources = [
        Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
        Path(sklearn.datasets.__file__).parent / "images" / "china.jpg",
        Path(sklearn.datasets.__file__).parent / "images" / "flower.jpg",
    ]
    photos = [Image.open(p).convert("RGB").resize((960, 720)) for p in sources]
    out = []
    for i in range(n):
        x, y = int(rng.integers(0, 320)), int(rng.integers(0, 360))
        frame = photos[i % len(photos)].crop((x, y, x + 640, y + 360))
        buf = io.BytesIO()
        frame.save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def _whisper_figures(threads: int) -> dict[str, float]:
    from mmbee.encoders.featurizers import build_recognizer

    audio = _speech()
    duration = len(audio) / 16_000
    out = {"speech_seconds": round(duration, 2)}
    with tempfile.TemporaryDirectory() as cache:
        for key, backend, model in (
            ("whisper_rtf_tiny", "faster-whisper", "tiny.en"),
            ("whisper_rtf_base", "faster-whisper", "base"),
            ("whisper_rtf_tiny_openai_baseline", "openai-whisper", "tiny.en"),
        ):
            asr = build_recognizer(backend, model, cache_dir=cache, threads=threads)  # type: ignore[arg-type]
            out[key] = round(_median_time(lambda a=asr: a.transcribe(audio)) / duration, 4)
    return out


def _text_figures(rng: np.random.Generator) -> dict[str, float]:
    from mmbee.encoders.featurizers import TextEmbedder

    texts = _comments(512, rng)
    emb = TextEmbedder(batch_size=64)
    single = [[t] for t in texts[:64]]
    return {
        "text_emb_per_s": round(len(texts) / _median_time(lambda: emb.encode(texts)), 1),
        "text_emb_per_s_batch1_baseline": round(
            len(single) / _median_time(lambda: [emb.encode(t) for t in single]), 1
        ),
    }


def _frame_figures(rng: np.random.Generator) -> dict[str, float]:
    from mmbee.encoders.featurizers import FrameEmbedder, FrameEmbedderConfig

    jpegs = _frames(32, rng)
    out: dict[str, float] = {}
    for name, prefix in (
        ("efficientnet-lite0", "frame_emb_per_s"),
        ("mobilenet-v2", "frame_emb_per_s_mobilenet_v2"),
    ):
        # the headline figure uses the worker's own batch size (FrameEmbedder's default, 4):
        # bigger batches are slower on CPU, so batch 32 is reported beside it, not as it
        for batch, suffix in ((FrameEmbedderConfig.batch_size, ""), (32, "_batch32")):
            emb = FrameEmbedder(name, batch_size=batch)
            out[prefix + suffix] = round(32 / _median_time(lambda e=emb: e.encode_jpeg(jpegs)), 1)
    emb = FrameEmbedder("efficientnet-lite0", batch_size=1)
    out["frame_emb_per_s_batch1_baseline"] = round(
        8 / _median_time(lambda: [emb.encode_jpeg([j]) for j in jpegs[:8]]), 1
    )
    return out


def measure(seed: int = 0) -> dict[str, Any]:
    """Measure every featurizer figure once (a few minutes on 2 cores); returns a flat dict.

    Keys: whisper_rtf_tiny, whisper_rtf_base (faster-whisper int8; processing seconds per
    second of speech), whisper_rtf_tiny_openai_baseline, text_emb_per_s (batch 64),
    text_emb_per_s_batch1_baseline, frame_emb_per_s (EfficientNet-Lite0 on 640x360 JPEGs,
    decode included, at the worker's batch size: FrameEmbedder's default, 4),
    frame_emb_per_s_batch32, frame_emb_per_s_batch1_baseline, the same two for MobileNetV2
    (frame_emb_per_s_mobilenet_v2[_batch32]), speech_seconds, threads,
    cpu, cpu_share (CPU seconds / wall seconds / threads: < 1 means other processes took the
    cores) and load_avg_1m [start, end].
    """
    import torch

    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    figures: dict[str, Any] = {"threads": threads, "cpu": platform.machine()}
    load_start = os.getloadavg()[0]
    wall0, cpu0 = time.perf_counter(), time.process_time()
    figures |= _whisper_figures(threads)
    figures |= _text_figures(rng)
    figures |= _frame_figures(rng)
    # Context for a shared box: the share of one core per thread this process actually got.
    figures["cpu_share"] = round(
        (time.process_time() - cpu0) / ((time.perf_counter() - wall0) * threads), 3
    )
    figures["load_avg_1m"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    return figures


def main() -> None:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    print(json.dumps(measure()))


if __name__ == "__main__":
    main()
