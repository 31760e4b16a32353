"""Calibration against KuaiLive's published aggregates.

The default preset (10,000 users, 2,000 streamers, one day: the bench scale) is generated,
written and reported in about 10 s here; every statistic must lie within the tolerance stated
in `calibration.TARGETS` (and in docs/simulator.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmbee.cli import main
from mmbee.simulator.calibration import TARGETS, calibration_report, format_report, gini
from mmbee.simulator.config import preset
from mmbee.simulator.logs import write_log
from mmbee.simulator.world import generate_world


def test_gini_known_values() -> None:
    assert gini(np.ones(10)) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 1.0])) == pytest.approx(0.75)
    x = np.random.default_rng(0).pareto(1.5, 100_000) + 1
    assert gini(x) == pytest.approx(1 / (2 * 1.5 - 1), abs=0.03)


@pytest.fixture(scope="module")
def default_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("default_log")
    write_log(generate_world(preset("default"), 0), out, preset_name="default")
    return out


def test_default_preset_matches_kuailive(default_log: Path) -> None:
    report = calibration_report(default_log)
    misses = {
        k: (report.stats[k], (t.lo, t.hi)) for k, t in TARGETS.items() if not t.ok(report.stats[k])
    }
    assert not misses, format_report(report)
    assert report.stats["gifts"] > 1500


def test_report_json_cli(default_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["simulate", "--report", str(default_log), "--json"])
    assert done.value.code == 0
    body = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(body)[: len(TARGETS)] == list(TARGETS)
    with pytest.raises(SystemExit):
        main(["simulate", "--report", str(default_log)])
    text = capsys.readouterr().out
    assert "gini_users" in text and "target" in text
