"""Media mode: frames as small rendered JPEGs, speech as real audio from Debian's espeak-ng.

Frames depend on category (background and props), streamer style (the host's colour) and, for
categories whose signal modality is visual, the hidden moment (PK split screen, music notes,
coins, hearts, a dimmed "BRB" screen). Each distinct picture is stored once in
`media/frames.jpg.bin`; `mmbee_frames.csv` points at it (jpeg_offset, jpeg_bytes). Speech is
synthesised per sentence with espeak-ng (cached), resampled to 16 kHz mono int16, and stored
once per distinct script in `media/speech.pcm.bin` (audio_offset, audio_bytes in
`mmbee_speech.csv`). Meant for small worlds (tiny, demo): the frame encoder and the Whisper agent
then run on real pixels and real speech.

Example:
    >>> r = MediaRenderer()  # doctest: +SKIP
    >>> r.frame_jpeg(category=2, moment=1, style_cluster=3, variant=0)[:3]  # doctest: +SKIP
    b'\\xff\\xd8\\xff'
"""

from __future__ import annotations

import io
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmbee.simulator.content import CATEGORIES, SIGNAL_MODALITY, TextCatalogue
from mmbee.simulator.world import World

if TYPE_CHECKING:
    from PIL import ImageDraw

__all__ = ["MediaError", "MediaRenderer", "FRAME_SIZE", "N_VARIANTS", "SAMPLE_RATE_HZ"]

FRAME_SIZE = 128
N_VARIANTS = 4
SAMPLE_RATE_HZ = 16_000
_ESPEAK_RATE_HZ = 22_050
_GAP_S = 0.2

_CAT_COLOURS = [
    (40, 40, 90),  # game: dark blue
    (120, 40, 110),  # music: purple
    (200, 90, 60),  # dance: orange
    (90, 140, 170),  # chat: light blue
    (70, 150, 70),  # outdoor: green
    (210, 190, 140),  # cooking: beige
    (220, 220, 225),  # shopping: light grey
    (30, 80, 50),  # education: blackboard green
]
_STYLE_COLOURS = [
    (230, 60, 60),
    (60, 200, 90),
    (70, 110, 230),
    (240, 200, 40),
    (200, 80, 220),
    (60, 210, 210),
    (250, 140, 40),
    (250, 250, 250),
]


class MediaError(RuntimeError):
    """Media mode cannot run here (espeak-ng or Pillow missing, or synthesis failed)."""


class MediaRenderer:
    """Renders frame JPEGs and synthesises speech PCM for a world.

    Args:
        espeak: the espeak-ng executable (default: found on PATH).
        voice, words_per_minute: espeak-ng voice and speed.
        jpeg_quality: JPEG quality of the frames.
    """

    def __init__(
        self,
        espeak: str | None = None,
        voice: str = "en-us",
        words_per_minute: int = 165,
        jpeg_quality: int = 85,
    ) -> None:
        self.espeak = espeak or shutil.which("espeak-ng")
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.jpeg_quality = jpeg_quality
        self._speech_cache: dict[str, np.ndarray] = {}

    # ---- frames -------------------------------------------------------------------------------
    def frame_jpeg(self, category: int, moment: int, style_cluster: int, variant: int) -> bytes:
        """One frame picture as JPEG bytes (deterministic in its arguments)."""
        return _render_frame(category, moment, style_cluster, variant, self.jpeg_quality)

    def write_frames(self, world: World, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Write every distinct frame picture once into `path`; return per frame row
        (offset, length) into it, rows in the world's frame order."""
        seg = world.frame_segment
        ses = world.segment_session[seg]
        streamer = world.session_streamer[ses]
        cat = world.streamer_category[streamer]
        visual = np.array([SIGNAL_MODALITY[c] == "visual" for c in CATEGORIES])[cat]
        moment = np.where(visual, world.segment_moment[seg], 0)
        cluster = world.streamer_style_cluster[streamer]
        variant = (seg * 2654435761) % N_VARIANTS
        key = ((cat * 8 + moment) * 16 + cluster) * N_VARIANTS + variant
        uniq, inv = np.unique(key, return_inverse=True)
        offsets = np.zeros(uniq.size, np.int64)
        lengths = np.zeros(uniq.size, np.int64)
        with open(path, "wb") as f:
            pos = 0
            for i, k in enumerate(uniq.tolist()):
                rest, v = divmod(k, N_VARIANTS)
                rest, cl = divmod(rest, 16)
                c, m = divmod(rest, 8)
                jpeg = self.frame_jpeg(c, m, cl, v)
                f.write(jpeg)
                offsets[i], lengths[i] = pos, len(jpeg)
                pos += len(jpeg)
        return offsets[inv], lengths[inv]

    # ---- speech -------------------------------------------------------------------------------
    def synthesize(self, text: str) -> np.ndarray:
        """16 kHz mono int16 speech of `text` (espeak-ng), cached per text."""
        cached = self._speech_cache.get(text)
        if cached is not None:
            return cached
        if self.espeak is None:
            raise MediaError(
                "media mode needs Debian's espeak-ng for speech: apt-get install espeak-ng "
                "(or run without --media: speech then travels as AsrSegment text)"
            )
        proc = subprocess.run(
            [self.espeak, "-v", self.voice, "-s", str(self.words_per_minute), "--stdout", text],
            capture_output=True,
            check=False,
            timeout=60,
        )
        if proc.returncode != 0 or len(proc.stdout) <= 44:
            raise MediaError(f"espeak-ng failed ({proc.returncode}): {proc.stderr.decode()[:300]}")
        pcm = _resample_to_16k(np.frombuffer(proc.stdout[44:], dtype="<i2"))
        self._speech_cache[text] = pcm
        return pcm

    def script_pcm(self, catalogue: TextCatalogue, text_id: int) -> np.ndarray:
        """The PCM of one speech script: catchphrase (if any), a short pause, the sentence."""
        catch, sentence = catalogue.speech_parts(text_id)
        parts = [self.synthesize(catalogue.sentences[sentence])]
        if catch >= 0:
            gap = np.zeros(int(_GAP_S * SAMPLE_RATE_HZ), np.int16)
            parts = [self.synthesize(catalogue.catchphrases[catch]), gap, *parts]
        return np.concatenate(parts)

    def write_speech(
        self, world: World, catalogue: TextCatalogue, path: Path
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Write each distinct script's audio once into `path`; return per speech row
        (offset, length in bytes, duration in ms)."""
        uniq, inv = np.unique(world.speech_text, return_inverse=True)
        offsets = np.zeros(uniq.size, np.int64)
        lengths = np.zeros(uniq.size, np.int64)
        with open(path, "wb") as f:
            pos = 0
            for i, tid in enumerate(uniq.tolist()):
                pcm = self.script_pcm(catalogue, tid).astype("<i2").tobytes()
                f.write(pcm)
                offsets[i], lengths[i] = pos, len(pcm)
                pos += len(pcm)
        durations = lengths * 1000 // (2 * SAMPLE_RATE_HZ)
        return offsets[inv], lengths[inv], durations[inv]


def _lowpass_taps(cutoff: float, n: int = 101) -> np.ndarray:
    """Hamming-windowed sinc low-pass FIR, cutoff as a fraction of the sample rate."""
    t = np.arange(n) - (n - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * t) * np.hamming(n)
    return h / h.sum()


def _resample_to_16k(x: np.ndarray) -> np.ndarray:
    """22.05 kHz int16 -> 16 kHz int16: low-pass at 7.6 kHz, then linear interpolation."""
    y = np.convolve(x.astype(np.float64), _lowpass_taps(7600.0 / _ESPEAK_RATE_HZ), mode="same")
    n_out = int(len(y) * SAMPLE_RATE_HZ / _ESPEAK_RATE_HZ)
    t = np.arange(n_out) * (_ESPEAK_RATE_HZ / SAMPLE_RATE_HZ)
    z = np.interp(t, np.arange(len(y)), y)
    return np.clip(np.rint(z), -32768, 32767).astype(np.int16)


@lru_cache(maxsize=4096)
def _render_frame(category: int, moment: int, cluster: int, variant: int, quality: int) -> bytes:
    try:
        from PIL import Image, ImageDraw
    except ModuleNotFoundError:  # pragma: no cover - pillow is a dependency
        raise MediaError("media mode needs Pillow (pip install pillow)") from None
    s = FRAME_SIZE
    img = Image.new("RGB", (s, s), _CAT_COLOURS[category])
    d = ImageDraw.Draw(img)
    rng = np.random.default_rng(((category * 8 + moment) * 16 + cluster) * 16 + variant)
    # background gradient band and category props
    base = np.array(_CAT_COLOURS[category])
    for y in range(0, s, 8):
        shade = tuple(int(v) for v in np.clip(base * (0.7 + 0.3 * y / s), 0, 255))
        d.rectangle([0, y, s, y + 7], fill=shade)
    _draw_props(d, category, s)
    # the host: head and body in the style colour, position jittered by the variant
    cx = int(s * 0.5 + rng.integers(-10, 11))
    col = _STYLE_COLOURS[cluster]
    d.ellipse([cx - 12, 34, cx + 12, 58], fill=(240, 205, 170))
    d.rectangle([cx - 18, 58, cx + 18, 104], fill=col)
    # moment overlay (only drawn for categories whose signal is visual)
    _draw_moment(d, moment, s, rng)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _draw_props(draw: ImageDraw.ImageDraw, category: int, s: int) -> None:
    name = CATEGORIES[category]
    if name == "game":
        draw.rectangle([8, 100, 48, 120], fill=(20, 20, 20))
        draw.ellipse([14, 104, 24, 114], fill=(200, 0, 0))
    elif name == "music":
        draw.rectangle([100, 40, 104, 110], fill=(30, 30, 30))
        draw.ellipse([94, 30, 110, 46], fill=(90, 90, 90))
    elif name == "dance":
        draw.rectangle([0, 112, s, s], fill=(120, 60, 30))
    elif name == "chat":
        draw.ellipse([76, 8, 124, 36], fill=(255, 255, 255))
    elif name == "outdoor":
        draw.ellipse([96, 6, 120, 30], fill=(255, 220, 60))
        draw.polygon([(0, 110), (40, 70), (80, 110)], fill=(60, 100, 60))
    elif name == "cooking":
        draw.ellipse([70, 96, 122, 116], fill=(50, 50, 50))
    elif name == "shopping":
        draw.rectangle([90, 80, 122, 118], fill=(210, 120, 160))
    else:  # education
        draw.rectangle([6, 6, 60, 40], fill=(15, 50, 30), outline=(200, 200, 200))


def _draw_moment(draw: ImageDraw.ImageDraw, moment: int, s: int, rng: np.random.Generator) -> None:
    if moment == 1:  # pk_battle: split red / blue bars and a VS badge
        draw.rectangle([0, 0, s // 2, 10], fill=(230, 30, 30))
        draw.rectangle([s // 2, 0, s, 10], fill=(30, 60, 230))
        draw.line([s // 2, 0, s // 2, s], fill=(255, 255, 255), width=3)
        draw.text((s // 2 - 8, 14), "VS", fill=(255, 255, 0))
    elif moment == 2:  # song_request: music notes
        for _ in range(5):
            x, y = (int(v) for v in rng.integers(5, s - 15, 2))
            draw.ellipse([x, y + 8, x + 7, y + 14], fill=(255, 255, 255))
            draw.line([x + 6, y, x + 6, y + 11], fill=(255, 255, 255), width=2)
    elif moment == 3:  # lucky_draw: gold coins and a WIN banner
        for _ in range(8):
            x, y = (int(v) for v in rng.integers(0, s - 12, 2))
            draw.ellipse([x, y, x + 11, y + 11], fill=(255, 200, 0))
        draw.rectangle([30, 112, 98, 126], fill=(200, 0, 0))
        draw.text((52, 113), "WIN", fill=(255, 255, 0))
    elif moment == 4:  # thank_you: pink hearts
        for _ in range(6):
            x, y = (int(v) for v in rng.integers(0, s - 14, 2))
            draw.ellipse([x, y, x + 7, y + 7], fill=(255, 100, 160))
            draw.ellipse([x + 6, y, x + 13, y + 7], fill=(255, 100, 160))
            draw.polygon([(x, y + 4), (x + 13, y + 4), (x + 6, y + 13)], fill=(255, 100, 160))
    elif moment == 5:  # break: dimmed screen with BRB
        draw.rectangle([0, 40, s, 88], fill=(20, 20, 20))
        draw.text((s // 2 - 10, 58), "BRB", fill=(255, 255, 255))
