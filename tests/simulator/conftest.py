"""Shared simulator fixtures: one tiny world and its log directory, generated once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmbee.simulator.config import preset
from mmbee.simulator.logs import write_log
from mmbee.simulator.world import World, generate_world

TINY_SEED = 7


@pytest.fixture(scope="session")
def tiny_world() -> World:
    """The tiny preset's world at a fixed seed."""
    return generate_world(preset("tiny"), TINY_SEED)


@pytest.fixture(scope="session")
def tiny_log(tiny_world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world written as a log directory (treat as read-only)."""
    out = tmp_path_factory.mktemp("tiny_log")
    write_log(tiny_world, out, preset_name="tiny")
    return out
