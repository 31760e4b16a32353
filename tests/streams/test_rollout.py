"""`mmbee models announce|list` on the real embedded broker: an announcement carries the file's
sha256 and absolute path, the newest is the one marked served, a rollback is a newer
announcement of the old file, and a file no worker could serve is refused before anything is
published."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from mmbee.cli import main
from mmbee.scorer.gtr import GTRModel, config_for_variant, save_checkpoint
from mmbee.scorer.predict import ModelLoadError
from mmbee.settings import Settings
from mmbee.streams.rollout import announce, history
from mmbee.streams.topics import ensure_topics

pytestmark = [pytest.mark.broker]


def checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = config_for_variant("sim", dim=8, user_rows=16, author_rows=16, hidden=(8,))
    save_checkpoint(path, GTRModel(cfg), {"data": {"train_examples": 123}})
    return path


def test_announce_list_and_roll_back(broker_settings: Settings, tmp_path: Path) -> None:
    ensure_topics(broker_settings)
    old, new = checkpoint(tmp_path / "old.pt", 0), checkpoint(tmp_path / "new.pt", 1)
    clock = iter([1_800_000_000_000, 1_800_000_001_000, 1_800_000_002_000]).__next__
    v1 = announce(broker_settings, old, "v1", source="train", clock_ms=clock)
    v2 = announce(broker_settings, new, None, parent_version="v1", metrics={"auc": 0.8,
                  "bad": float("nan")}, clock_ms=clock)  # fmt: skip
    assert v1.sha256 == hashlib.sha256(old.read_bytes()).hexdigest()
    assert v1.path == str(old.resolve()) and v1.examples == 123 and v1.source == "train"
    assert v2.version == f"sha-{v2.sha256[:12]}" and v2.metrics == {"auc": 0.8}
    back = announce(broker_settings, old, "v1", clock_ms=clock)  # rollback: the old file again
    got = history(broker_settings, broker_settings.serving_model_name)
    assert got == [v1, v2, back]
    assert history(broker_settings, "another-model") == []


def test_a_file_that_cannot_be_served_is_refused(broker_settings: Settings, tmp_path: Path) -> None:
    ensure_topics(broker_settings)
    bad = tmp_path / "notes.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="notes.pt"):
        announce(broker_settings, bad, "v9")
    with pytest.raises(ModelLoadError):
        announce(broker_settings, tmp_path / "missing.pt", "v9")
    assert history(broker_settings) == []


def test_cli(broker_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    ensure_topics(broker_settings)
    monkeypatch.setenv("MMBEE_BOOTSTRAP_SERVERS", broker_settings.bootstrap_servers)
    monkeypatch.setenv("MMBEE_TOPIC_PREFIX", broker_settings.topic_prefix)
    ckpt = checkpoint(tmp_path / "m.pt", 0)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"x")

    def run(*argv: str) -> int:
        with pytest.raises(SystemExit) as done:
            main(list(argv))
        return int(done.value.code or 0)

    assert run("models", "list") == 0 and "no model announced" in capsys.readouterr().out
    assert run("models", "announce", str(ckpt), "--version", "v1") == 0
    assert "announced gtr v1" in capsys.readouterr().out
    assert run("models", "announce", str(bad)) == 2
    assert "refused" in capsys.readouterr().err
    assert run("models", "announce", str(ckpt), "--version", "v2", "--parent", "v1") == 0
    capsys.readouterr()
    assert run("models", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("  gtr v1 ") and lines[1].startswith("* gtr v2 ")
    assert "parent=v1" in lines[1] and str(ckpt.resolve()) in lines[1]
    assert run("models", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["version"] for m in listed] == ["v1", "v2"] and listed[1]["parent_version"] == "v1"
