"""Streams test fixtures; shared helpers live in `streamkit.py` (importable from these tests)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streamkit import WorkerProcess  # noqa: E402

from mmbee.settings import Settings  # noqa: E402


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes; every one still running is killed at the end of the test."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, entry: tuple[str, ...] = ("-m", "mmbee")) -> WorkerProcess:
        w = WorkerProcess(settings, tmp_path / f"worker{len(started)}.log", entry)
        started.append(w)
        return w

    yield start
    for w in started:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            w.kill()
