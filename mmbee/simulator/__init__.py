"""A seeded synthetic live-streaming world with ground truth, KuaiLive-schema logs, and replay.

Reading order: `config.py` (sizes, presets, calibration knobs) -> `content.py` (categories,
moments, which modality shows the moment per category, text templates, frame latents) ->
`world.py` (the generative model) -> `logs.py` (writer) -> `reader.py` (checking reader,
event-time merge, the offline event API) -> `calibration.py` (report vs KuaiLive) ->
`replay.py` (into Kafka) -> `media.py` (JPEG frames, espeak-ng speech). docs/simulator.md
describes the model, the files and the figures.

Offline training uses only the reader:
    >>> from mmbee.simulator import iter_events, read_truth  # doctest: +SKIP
    >>> for topic, event in iter_events("logs/demo"): ...  # doctest: +SKIP
"""

from mmbee.simulator.calibration import TARGETS, calibration_report, format_report
from mmbee.simulator.config import PRESETS, Calibration, WorldConfig, preset
from mmbee.simulator.content import MOMENTS, SIGNAL_MODALITY, expand_frame_latents
from mmbee.simulator.reader import (
    BadRow,
    LogBundle,
    LogError,
    count_events,
    event_id,
    iter_encoded,
    iter_events,
    read_communities,
    read_hidden_state,
    read_log,
    read_truth,
)
from mmbee.simulator.replay import ReplayStats, replay_log
from mmbee.simulator.simulate import simulate
from mmbee.simulator.world import World, generate_world

__all__ = [
    "TARGETS",
    "calibration_report",
    "format_report",
    "PRESETS",
    "Calibration",
    "WorldConfig",
    "preset",
    "MOMENTS",
    "SIGNAL_MODALITY",
    "expand_frame_latents",
    "BadRow",
    "LogBundle",
    "LogError",
    "count_events",
    "event_id",
    "iter_encoded",
    "iter_events",
    "read_communities",
    "read_hidden_state",
    "read_log",
    "read_truth",
    "ReplayStats",
    "replay_log",
    "simulate",
    "World",
    "generate_world",
]
