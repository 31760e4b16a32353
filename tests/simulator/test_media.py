"""Media mode: rendered JPEG frames (moment drawn only for visual categories) and espeak speech."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from PIL import Image

from mmbee.schemas.events import AudioChunk, FrameEvent
from mmbee.settings import Settings
from mmbee.simulator.config import WorldConfig
from mmbee.simulator.content import CATEGORIES, SIGNAL_MODALITY
from mmbee.simulator.logs import write_log
from mmbee.simulator.media import FRAME_SIZE, MediaError, MediaRenderer
from mmbee.simulator.reader import iter_events, read_log
from mmbee.simulator.replay import replay_log
from mmbee.simulator.world import generate_world
from mmbee.streams.topics import ensure_topics

HAS_ESPEAK = shutil.which("espeak-ng") is not None


def _pixels(jpeg: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.size == (FRAME_SIZE, FRAME_SIZE)
    return np.asarray(img.convert("RGB"), dtype=np.float64)


def test_frames_depend_on_category_and_moment() -> None:
    r = MediaRenderer()
    assert r.frame_jpeg(0, 1, 2, 0) == r.frame_jpeg(0, 1, 2, 0)  # deterministic
    game, dance = _pixels(r.frame_jpeg(0, 0, 2, 0)), _pixels(r.frame_jpeg(2, 0, 2, 0))
    assert np.abs(game - dance).mean() > 20
    for moment in range(1, 6):
        normal = _pixels(r.frame_jpeg(2, 0, 2, 0))
        special = _pixels(r.frame_jpeg(2, moment, 2, 0))
        assert np.abs(normal - special).mean() > 2, moment


def test_missing_espeak_gives_a_clear_message() -> None:
    r = MediaRenderer()
    r.espeak = None
    with pytest.raises(MediaError, match="espeak-ng"):
        r.synthesize("hello")


MEDIA_WORLD = WorldConfig(n_users=30, n_streamers=4, n_communities=2)


@pytest.fixture(scope="module")
def media_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("media_log")
    write_log(generate_world(MEDIA_WORLD, 1), out, media=True, media_renderer=MediaRenderer())
    return out


@pytest.mark.skipif(not HAS_ESPEAK, reason="Debian's espeak-ng is not installed")
def test_media_log_yields_jpeg_and_audio(media_log: Path) -> None:
    w = generate_world(MEDIA_WORLD, 1)
    tmp_path = media_log
    b = read_log(tmp_path)
    assert b.bad_rows == []
    frames = audio = 0
    visual = {i for i, c in enumerate(CATEGORIES) if SIGNAL_MODALITY[c] == "visual"}
    assert visual
    for topic, e in iter_events(b):
        if isinstance(e, FrameEvent):
            assert e.image_jpeg is not None and e.embedding is None
            _pixels(e.image_jpeg)
            frames += 1
        elif isinstance(e, AudioChunk):
            pcm = np.frombuffer(e.pcm_s16le, dtype="<i2")
            assert 0.5 < pcm.size / 16_000 < 12 and np.abs(pcm).max() > 1000
            audio += 1
        assert topic != "live.asr"  # speech travels as audio in media mode
    assert frames == w.frame_ts.size and audio == w.speech_start.size
    # the same log still offers the embedding and text forms
    kinds = {t for t, _ in iter_events(b, frames="embedding", speech="text")}
    assert "live.asr" in kinds and "live.audio" not in kinds
    # distinct pictures and scripts are stored once
    assert (tmp_path / "media" / "frames.jpg.bin").stat().st_size < 4000 * frames


@pytest.mark.broker
@pytest.mark.skipif(not HAS_ESPEAK, reason="Debian's espeak-ng is not installed")
def test_media_log_replays_through_broker(media_log: Path, broker_settings: Settings) -> None:
    stats = replay_log(media_log, broker_settings, progress=False, prepare_topics=ensure_topics)
    assert stats.per_topic["live.audio"] > 0 and stats.per_topic["live.frames"] > 0
    assert stats.per_topic["live.asr"] == 0
    consumer = KafkaConsumer(
        bootstrap_servers=broker_settings.bootstrap_list(),
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        max_partition_fetch_bytes=2 * 1024 * 1024,
        fetch_max_bytes=8 * 1024 * 1024,
        # noida-db answers a fetch with everything it has, ignoring both limits above
        receive_message_max_bytes=1024 * 1024 * 1024,
    )
    try:
        topic = broker_settings.topic("live.audio")
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning()
        got = []
        for msg in consumer:
            got.append(AudioChunk.model_validate_json(msg.value))
            if len(got) == stats.per_topic["live.audio"]:
                break
    finally:
        consumer.close()
    assert len(got) == stats.per_topic["live.audio"]
    assert all(a.duration_ms > 500 for a in got)
