"""Shared fixtures: the real broker (session-wide), settings pointing at it.

The session broker is Apache Kafka (`make kafka` installs it; a missing Kafka is an error, not a
skip). `pytest --broker=noida` runs the same tests on noida-db, the zero-Java option; the tests
of noida-db's own workarounds use `noida_broker`, which is always noida-db.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmbee.settings import Settings
from mmbee.streams.broker import KafkaBroker, NoidaBroker, free_port, make_broker

# Keep torch from fighting over the 2 cores of the CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=("kafka", "noida"),
        default="kafka",
        help="the session broker of the integration tests: Apache Kafka (default) or noida-db",
    )


@pytest.fixture(scope="session")
def broker(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[KafkaBroker | NoidaBroker]:
    """A real broker on 127.0.0.1 with a temporary data dir: Apache Kafka unless --broker=noida."""
    b = make_broker(
        pytestconfig.getoption("--broker"), tmp_path_factory.mktemp("broker"), free_port()
    )
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def noida_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NoidaBroker]:
    """A real noida-db broker, for the tests of what exists only because of it."""
    b = NoidaBroker(tmp_path_factory.mktemp("noida"), free_port())
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def broker_settings(
    broker: KafkaBroker | NoidaBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> Settings:
    """Dev settings on the session broker, with a topic prefix unique to this test."""
    prefix = "t" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10] + "."
    return Settings(
        bootstrap_servers=broker.bootstrap,
        broker_kind=broker.kind,
        topic_prefix=prefix,
        app_id=prefix + "app",
        data_dir=tmp_path / "worker",
        partitions=4,
        web_port=free_port(),
    )
