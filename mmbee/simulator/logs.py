"""Write a generated world as a KuaiLive-schema log directory plus mmbee's side files.

Layout of a log directory (docs/simulator.md has every column):

    user.csv streamer.csv room.csv click.csv gift.csv comment.csv like.csv   KuaiLive schema
    mmbee_world.json            manifest: config, seed, log id, content map, counts
    mmbee_texts.csv             text_id, text: every comment / speech text
    mmbee_comment_text.csv      comment_row, text_id (row = 0-based data row of comment.csv)
    mmbee_speech.csv            live_id, streamer_id, start_timestamp, end_timestamp, text_id
    mmbee_frames.csv            live_id, streamer_id, timestamp, latent (16 int8 as hex)
    mmbee_text_embeddings.npy   optional (n_texts, 384) float32 cache of the text embeddings
    media/                      media mode: frames.jpg.bin, speech.pcm.bin (+ offsets in csvs)
    truth/                      never read by models: impressions.csv (exact gift probability
                                per click row), moments.csv, users.csv, streamers.csv

KuaiLive ids are integers; the simulator's user, streamer and live ids are the World's array
indices. Every file is written in a fixed order with fixed formatting: the same world gives the
same bytes.

Example:
    >>> from mmbee.simulator.config import preset
    >>> from mmbee.simulator.world import generate_world
    >>> write_log(generate_world(preset("tiny"), 0), Path("/tmp/x"), preset_name="tiny")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from mmbee.simulator.content import (
    CATEGORIES,
    FRAME_PROJECTION_SEED,
    LATENT_DIM,
    LATENT_SCALE,
    MOMENTS,
    SIGNAL_MODALITY,
    text_catalogue,
)
from mmbee.simulator.world import World

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "KUAILIVE_FILES",
    "write_log",
    "log_id_for",
    "p_date",
]

FORMAT_VERSION = 1
MANIFEST = "mmbee_world.json"
KUAILIVE_FILES = (
    "user.csv",
    "streamer.csv",
    "room.csv",
    "click.csv",
    "gift.csv",
    "comment.csv",
    "like.csv",
)


def log_id_for(seed: int, config_json: str) -> str:
    """Short stable id of a world (prefix of every event id it replays as)."""
    return "sim" + hashlib.sha256(f"{seed}|{config_json}".encode()).hexdigest()[:8]


def p_date(ts_ms: np.ndarray, tz_offset_hours: int) -> np.ndarray:
    """KuaiLive's `p_date` (local date as the integer YYYYMMDD) of epoch-ms timestamps."""
    tz_ms = tz_offset_hours * 3_600_000
    days = (np.asarray(ts_ms, np.int64) + tz_ms) // 86_400_000
    base = datetime(1970, 1, 1, tzinfo=UTC)
    cache: dict[int, int] = {}
    out = np.empty(days.shape, np.int64)
    for i, d in enumerate(days.tolist()):
        if d not in cache:
            cache[d] = int((base + timedelta(days=d)).strftime("%Y%m%d"))
        out[i] = cache[d]
    return out


def _write_rows(path: Path, header: Sequence[str], columns: Sequence[Any]) -> None:
    """Write a CSV of equal-length columns (numpy arrays or lists of str/int) with '\\n' ends."""
    n = len(columns[0]) if columns else 0
    cols = [c.tolist() if isinstance(c, np.ndarray) else list(c) for c in columns]
    for c in cols:
        if len(c) != n:
            raise ValueError(f"{path.name}: columns of different lengths")
    fmt = ",".join(["{}"] * len(cols))
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(",".join(header) + "\n")
        f.writelines(fmt.format(*row) + "\n" for row in zip(*cols, strict=True))


def _write_text_table(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV whose rows may hold text needing quotes (csv module, '\\n' line ends)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def write_log(
    world: World,
    outdir: Path,
    *,
    preset_name: str | None = None,
    media: bool = False,
    text_embedder: Callable[[list[str]], np.ndarray] | None = None,
    media_renderer: Any = None,
) -> dict[str, Any]:
    """Write `world` into `outdir` (created) and return the manifest.

    Args:
        preset_name: recorded in the manifest.
        media: also write rendered JPEG frames and espeak-ng speech (see `media.py`); needs
            `media_renderer` (a `media.MediaRenderer`).
        text_embedder: texts -> (n, d) float32; when given, writes the per-text embedding
            cache `mmbee_text_embeddings.npy` so replay can attach `text_embedding` cheaply.
    """
    outdir = Path(outdir)
    (outdir / "truth").mkdir(parents=True, exist_ok=True)
    cfg = world.config
    catalogue = text_catalogue()
    ses_str = world.session_streamer

    # ---- KuaiLive files ---------------------------------------------------------------------
    _write_rows(outdir / "user.csv", ["user_id"], [np.arange(world.n_users)])
    fans = np.rint(200.0 * world.streamer_popularity).astype(np.int64)
    _write_rows(
        outdir / "streamer.csv",
        ["streamer_id", "first_live_timestamp", "fans_user_num"],
        [np.arange(world.n_streamers), world.streamer_first_live_ms, fans],
    )
    R = world.session_start.size
    cat_names = np.array(CATEGORIES)[world.streamer_category[ses_str]]
    _write_rows(
        outdir / "room.csv",
        [
            "p_date",
            "live_id",
            "streamer_id",
            "live_type",
            "start_timestamp",
            "end_timestamp",
            "live_content_category",
            "live_name_id",
        ],
        [
            p_date(world.session_start, cfg.tz_offset_hours),
            np.arange(R),
            ses_str,
            np.ones(R, np.int64),
            world.session_start,
            world.session_end,
            cat_names.tolist(),
            world.session_title,
        ],
    )
    ids = ["user_id", "live_id", "streamer_id", "timestamp"]
    _write_rows(
        outdir / "click.csv",
        [*ids, "watch_live_time"],
        [
            world.click_user,
            world.click_session,
            ses_str[world.click_session],
            world.click_ts,
            world.click_watch_ms,
        ],
    )
    _write_rows(
        outdir / "gift.csv",
        [*ids, "gift_price"],
        [
            world.gift_user,
            world.gift_session,
            ses_str[world.gift_session],
            world.gift_ts,
            world.gift_price,
        ],
    )
    _write_rows(
        outdir / "comment.csv",
        ids,
        [
            world.comment_user,
            world.comment_session,
            ses_str[world.comment_session],
            world.comment_ts,
        ],
    )
    _write_rows(
        outdir / "like.csv",
        ids,
        [world.like_user, world.like_session, ses_str[world.like_session], world.like_ts],
    )

    # ---- side files -------------------------------------------------------------------------
    _write_text_table(
        outdir / "mmbee_texts.csv",
        ["text_id", "text"],
        [(i, t) for i, t in enumerate(catalogue.texts)],
    )
    _write_rows(
        outdir / "mmbee_comment_text.csv",
        ["comment_row", "text_id"],
        [np.arange(world.comment_ts.size), world.comment_text],
    )
    sp_ses = world.segment_session[world.speech_segment]
    fr_ses = world.segment_session[world.frame_segment]
    hexes = world.frame_latent.view(np.uint8).tobytes().hex()
    w = 2 * LATENT_DIM
    latent_hex = [hexes[i * w : (i + 1) * w] for i in range(world.frame_ts.size)]
    speech_cols: list[Any] = [
        sp_ses,
        ses_str[sp_ses],
        world.speech_start,
        world.speech_end,
        world.speech_text,
    ]
    speech_header = ["live_id", "streamer_id", "start_timestamp", "end_timestamp", "text_id"]
    frame_cols: list[Any] = [fr_ses, ses_str[fr_ses], world.frame_ts, latent_hex]
    frame_header = ["live_id", "streamer_id", "timestamp", "latent"]
    if media:
        if media_renderer is None:
            raise ValueError("media=True needs a media_renderer (mmbee.simulator.media)")
        (outdir / "media").mkdir(exist_ok=True)
        f_off, f_len = media_renderer.write_frames(world, outdir / "media" / "frames.jpg.bin")
        a_off, a_len, a_ms = media_renderer.write_speech(
            world, catalogue, outdir / "media" / "speech.pcm.bin"
        )
        # real audio: the speech ends when the audio does (within its segment)
        seg_end = world.segment_start[world.speech_segment] + cfg.segment_ms - 1
        speech_cols[3] = np.minimum(world.speech_start + np.maximum(a_ms, 1), seg_end)
        frame_cols += [f_off, f_len]
        frame_header += ["jpeg_offset", "jpeg_bytes"]
        speech_cols += [a_off, a_len]
        speech_header += ["audio_offset", "audio_bytes"]
    _write_rows(outdir / "mmbee_speech.csv", speech_header, speech_cols)
    _write_rows(outdir / "mmbee_frames.csv", frame_header, frame_cols)
    if text_embedder is not None:
        emb = np.asarray(text_embedder(list(catalogue.texts)), dtype="<f4")
        if emb.ndim != 2 or emb.shape[0] != len(catalogue.texts):
            raise ValueError(f"text_embedder returned shape {emb.shape}")
        with open(outdir / "mmbee_text_embeddings.npy", "wb") as f:
            np.save(f, emb, allow_pickle=False)

    # ---- truth (never read by models) --------------------------------------------------------
    moments = np.array(MOMENTS)
    _write_rows(
        outdir / "truth" / "impressions.csv",
        ["click_row", "p_gift_1h", "moment", "unit_rate"],
        [
            np.arange(world.click_ts.size),
            [repr(float(x)) for x in world.click_p.tolist()],
            moments[world.click_moment].tolist(),
            [repr(float(x)) for x in world.click_unit_rate.tolist()],
        ],
    )
    _write_rows(
        outdir / "truth" / "moments.csv",
        ["live_id", "segment_start", "moment"],
        [world.segment_session, world.segment_start, moments[world.segment_moment].tolist()],
    )
    _write_rows(
        outdir / "truth" / "users.csv",
        ["user_id", "community", "gift_propensity", "tier", "idol_streamer_id"],
        [
            np.arange(world.n_users),
            world.user_community,
            [repr(float(x)) for x in world.user_gamma.tolist()],
            world.user_tier,
            world.user_idol,
        ],
    )
    _write_rows(
        outdir / "truth" / "streamers.csv",
        ["streamer_id", "community", "category", "style_cluster", "popularity", "appeal"],
        [
            np.arange(world.n_streamers),
            world.streamer_community,
            np.array(CATEGORIES)[world.streamer_category].tolist(),
            world.streamer_style_cluster,
            [repr(float(x)) for x in world.streamer_popularity.tolist()],
            [repr(float(x)) for x in world.streamer_appeal.tolist()],
        ],
    )

    config_json = json.dumps(cfg.to_dict(), sort_keys=True)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "generator": "mmbee.simulator",
        "log_id": log_id_for(world.seed, config_json),
        "seed": world.seed,
        "preset": preset_name,
        "config": cfg.to_dict(),
        "start_ms": cfg.start_ms,
        "end_ms": cfg.end_ms,
        "tz_offset_hours": cfg.tz_offset_hours,
        "segment_ms": cfg.segment_ms,
        "media": media,
        "text_embeddings": text_embedder is not None,
        "categories": list(CATEGORIES),
        "moments": list(MOMENTS),
        "signal_modality": dict(SIGNAL_MODALITY),
        "frame_latent": {
            "dim": LATENT_DIM,
            "scale": LATENT_SCALE,
            "projection_seed": FRAME_PROJECTION_SEED,
            "embedding": "relu(latent @ N(0, 1/dim) projection), width 1280",
        },
        "id_scheme": {"user": "u{user_id}", "streamer": "a{streamer_id}", "live": "l{live_id}"},
        "counts": {
            "users": world.n_users,
            "streamers": world.n_streamers,
            "rooms": int(R),
            "clicks": int(world.click_ts.size),
            "gifts": int(world.gift_ts.size),
            "comments": int(world.comment_ts.size),
            "likes": int(world.like_ts.size),
            "frames": int(world.frame_ts.size),
            "speech": int(world.speech_start.size),
        },
    }
    (outdir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
