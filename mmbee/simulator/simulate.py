"""`mmbee simulate`: generate a world from a preset and seed and write its log directory.

Example:
    >>> manifest = simulate(Path("logs/tiny"), preset_name="tiny", seed=0)  # doctest: +SKIP
    >>> manifest["counts"]["clicks"]  # doctest: +SKIP
    2219
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmbee.simulator.config import preset
from mmbee.simulator.logs import write_log
from mmbee.simulator.world import generate_world

__all__ = ["simulate"]


def simulate(
    outdir: Path | str,
    *,
    preset_name: str = "default",
    seed: int = 0,
    days: int | None = None,
    n_users: int | None = None,
    n_streamers: int | None = None,
    media: bool = False,
    text_embeddings: bool = False,
) -> dict[str, Any]:
    """Generate the world of `preset_name` (sizes and days overridable) and write it to `outdir`.

    Args:
        media: also render JPEG frames and espeak-ng speech (small worlds; needs espeak-ng).
        text_embeddings: also write `mmbee_text_embeddings.npy` with all-MiniLM-L6-v2 (the
            streams featurizer's model), so replay can attach `text_embedding` to comments and
            ASR segments without running the model per event.

    Returns:
        The manifest written to `outdir/mmbee_world.json`.
    """
    config = preset(preset_name, days=days, n_users=n_users, n_streamers=n_streamers)
    world = generate_world(config, seed)
    embed = None
    if text_embeddings:
        from mmbee.encoders.featurizers.text import TextEmbedder  # lazy: loads a model

        embed = TextEmbedder().encode
    renderer = None
    if media:
        from mmbee.simulator.media import MediaRenderer

        renderer = MediaRenderer()
    return write_log(
        world,
        Path(outdir),
        preset_name=preset_name,
        media=media,
        text_embedder=embed,
        media_renderer=renderer,
    )
