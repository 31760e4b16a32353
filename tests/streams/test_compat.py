"""`mmbee.streams.runtime.compat`: exact pins checked at start-up, and private reads that fail
loudly when an attribute moves instead of reading a default."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from mmbee.settings import Settings
from mmbee.streams.runtime import compat

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_pins_exactly_the_versions_the_patches_were_written_for() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^;\s]+)", dep)
        if m:
            pinned[m.group(1)] = m.group(2)
    for name, version in compat.PINS.items():
        assert pinned.get(name) == version, f"pyproject must pin {name}=={version}"


def test_the_installed_versions_are_the_pinned_ones() -> None:
    assert compat.installed_versions() == dict(compat.PINS)
    assert compat.check_versions(patches=True) == []


def test_another_version_is_refused_unless_the_patches_are_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        compat, "installed_versions", lambda: {**compat.PINS, "aiokafka": "0.15.0"}
    )
    with pytest.raises(compat.IncompatibleVersionError, match=r"aiokafka 0\.15\.0 \(pinned 0\.14\.0\)"):
        compat.check_versions(patches=True)
    with pytest.raises(compat.IncompatibleVersionError, match="MMBEE_FAUST_PATCHES=false"):
        compat.install(Settings(faust_patches=True))
    assert compat.check_versions(patches=False) == ["aiokafka 0.15.0 (pinned 0.14.0)"]


def test_with_the_patches_off_nothing_is_installed_over_faust(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        compat, "installed_versions", lambda: {**compat.PINS, "faust-streaming": "0.16.0"}
    )
    compat.install_inline_handoff()
    compat.install(Settings(faust_patches=False))
    assert not compat.inline_handoff_installed()
    compat.install_inline_handoff()  # as the rest of the suite expects it


def test_a_moved_private_attribute_raises_instead_of_reading_a_default() -> None:
    consumer = SimpleNamespace(_read_offset={"tp": 3})
    assert compat.read_offsets(consumer) == {"tp": 3}
    with pytest.raises(compat.CompatError, match="_committed_offset"):
        compat.committed_offsets(consumer)


def test_no_kafka_client_behind_a_consumer_that_is_not_faust_s_threaded_one() -> None:
    assert compat.kafka_client(SimpleNamespace()) is None


def test_the_working_set_module_example_holds() -> None:
    import doctest

    from mmbee.streams.runtime import workingset

    assert doctest.testmod(workingset).failed == 0


def test_the_worker_consumer_waits_at_most_the_configured_fetch_wait() -> None:
    import asyncio

    from mmbee.streams.app import build_app

    async def consumer_wait(settings: Settings) -> int:
        ctx = build_app(settings, components=[])
        thread = ctx.app.consumer._thread
        client = thread._create_worker_consumer(ctx.app.transport)  # what the thread starts
        try:
            return int(client._fetch_max_wait_ms)
        finally:
            await client.stop()

    assert asyncio.run(consumer_wait(Settings(store="memory://"))) == 100
    assert compat.installed_fetch_max_wait_ms() == 100
    assert asyncio.run(consumer_wait(Settings(store="memory://", consumer_fetch_max_wait_ms=7))) == 7
    compat.install_fetch_max_wait(100)  # as the rest of the suite expects it
