"""Shared fixtures: the real embedded broker (session-wide), settings pointing at it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmbee.settings import Settings
from mmbee.streams.broker import NoidaBroker, free_port

# Keep torch from fighting over the 2 cores of the CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NoidaBroker]:
    """A real noida-db Kafka-protocol broker on 127.0.0.1 with a temporary data dir."""
    b = NoidaBroker(tmp_path_factory.mktemp("broker"), free_port())
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def broker_settings(
    broker: NoidaBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> Settings:
    """Dev settings on the session broker, with a topic prefix unique to this test."""
    prefix = "t" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10] + "."
    return Settings(
        bootstrap_servers=broker.bootstrap,
        topic_prefix=prefix,
        app_id=prefix + "app",
        data_dir=tmp_path / "worker",
        partitions=4,
        web_port=free_port(),
    )
