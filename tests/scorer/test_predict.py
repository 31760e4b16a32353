"""Predict API: load once, batched scores equal the training path, atomic hot swap."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from mmbee.schemas import ScoreRequest
from mmbee.scorer.features import FeatureConfig, FeatureState, MemorySegmentStore
from mmbee.scorer.gtr import GTRModel, config_for_variant, default_content_config, save_checkpoint
from mmbee.scorer.predict import (
    ModelHolder,
    NoModelError,
    load_model,
    predict_snapshots,
    score_request,
)
from mmbee.scorer.train import rows_for

FEATURES = FeatureConfig(history=8, segments=4, expansion_n=5)
BUILD = {"features": {**FEATURES.__dict__}}


def checkpoint(path: Path, seed: int, variant: str = "sim_mfq_gie") -> Path:
    torch.manual_seed(seed)
    cfg = config_for_variant(
        variant,
        content_encoder="mean-pool",
        dim=8,
        user_rows=64,
        author_rows=64,
        hidden=(16,),
        content_config={"visual_dim": 8, "speech_dim": 4, "comment_dim": 4, "out_dim": 8},
    )
    save_checkpoint(path, GTRModel(cfg), {"build": BUILD})
    return path


@pytest.fixture
def world(stream_factory: Callable[..., list[tuple[int, BaseModel]]]) -> FeatureState:
    st = FeatureState(FEATURES, store=MemorySegmentStore(8, 4))
    for t, ev in stream_factory(7):
        st.apply(ev, at_ms=t)
    return st


def request_for(st: FeatureState, n: int = 3) -> tuple[ScoreRequest, list, object]:
    ts = max(st.users["u1"].history[-1].ts_ms, 0) + 1000
    authors = [f"a{i}" for i in range(n)]
    req = ScoreRequest(request_id="r1", user_id="u1", candidate_author_ids=authors, ts_ms=ts)
    user = st.user_side("u1", ts)
    sides = [st.author_side(a, None, ts) for a in authors]
    return req, sides, user


def test_scores_match_the_training_forward(world: FeatureState, tmp_path: Path) -> None:
    loaded = load_model(checkpoint(tmp_path / "a.pt", 0))
    req, sides, user = request_for(world)
    resp = score_request(loaded, req, user, sides, world.users["u1"], world.store)
    assert resp.error is None and resp.model_version == loaded.version
    assert [s.author_id for s in resp.scores] == req.candidate_author_ids
    snaps = [
        world.snapshot(f"x{i}", "u1", a, None, req.ts_ms)
        for i, a in enumerate(req.candidate_author_ids)
    ]
    from mmbee.scorer.dataset import collate

    expected = loaded.model.predict(collate(snaps, FEATURES, rows_for(loaded.model), world.store))
    assert np.allclose([s.score for s in resp.scores], expected.numpy(), atol=1e-6)
    assert np.allclose(predict_snapshots(loaded, snaps, world.store), expected.numpy(), atol=1e-6)
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_precomputed_content_scores_equal_the_full_forward(
    world: FeatureState, tmp_path: Path
) -> None:
    """Serving's path: encoder outputs computed earlier, passed as `content_embedding`. MFQ with
    its now path, and a wide term whose h_m columns are not zero, so every use of h_m counts."""
    torch.manual_seed(0)
    cfg = config_for_variant(
        "sim_mfq_gie", dim=8, user_rows=64, author_rows=64, hidden=(16,),
        content_config=default_content_config("mfq", 8, 4) | {"d_model": 8, "out_dim": 8},
    )  # fmt: skip
    model = GTRModel(cfg)
    assert model.content is not None and getattr(model.content, "now", None) is not None
    assert model.wide is not None
    with torch.no_grad():
        model.wide.weight.normal_()  # h_m's and h_g's columns included
    loaded = load_model(save_checkpoint_to(tmp_path / "mfq.pt", model))
    assert loaded.model.content is not None and type(loaded.model.content) is type(model.content)
    req, sides, user = request_for(world, n=4)
    snaps = [
        world.snapshot(f"x{i}", "u1", a, None, req.ts_ms)
        for i, a in enumerate(req.candidate_author_ids)
    ]
    from mmbee.scorer.dataset import collate

    full = collate(snaps, FEATURES, rows_for(loaded.model), world.store)
    assert full.content is not None and full.content_index is not None
    expected = loaded.model.predict(full).numpy()
    with torch.no_grad():
        content = loaded.model.content(full.content).embedding[full.content_index]  # (N, D_enc)
    got = predict_snapshots(loaded, snaps, world.store, content=content)
    assert np.allclose(got, expected, atol=1e-6)
    resp = score_request(loaded, req, user, sides, world.users["u1"], None, content=content)
    assert np.allclose([s.score for s in resp.scores], expected, atol=1e-6)
    moved = predict_snapshots(loaded, snaps, world.store, content=torch.roll(content, 1, dims=0))
    assert not np.allclose(moved, expected, atol=1e-6), "the given embeddings are the ones used"
    with pytest.raises(ValueError, match="rows"):
        predict_snapshots(loaded, snaps, world.store, content=content[:2])


def save_checkpoint_to(path: Path, model: GTRModel) -> Path:
    save_checkpoint(path, model, {"build": BUILD})
    return path


def test_bad_requests_get_an_error_response(world: FeatureState, tmp_path: Path) -> None:
    loaded = load_model(checkpoint(tmp_path / "a.pt", 0))
    req, sides, user = request_for(world)
    resp = score_request(loaded, req, user, sides[:-1], None, world.store)
    assert resp.error and resp.scores == []
    resp = score_request(loaded, req, world.user_side("u2", req.ts_ms), sides, None, world.store)
    assert resp.error and "u2" in resp.error
    with pytest.raises(NoModelError):
        ModelHolder().current()


def test_hot_swap_under_concurrent_requests(world: FeatureState, tmp_path: Path) -> None:
    paths = [checkpoint(tmp_path / f"m{i}.pt", seed=i) for i in range(2)]
    models = [load_model(p, version=f"v{i}") for i, p in enumerate(paths)]
    req, sides, user = request_for(world, n=3)
    expected = {
        m.version: [s.score for s in score_request(m, req, user, sides, None, world.store).scores]
        for m in models
    }
    assert expected["v0"] != expected["v1"]
    holder = ModelHolder(models[0])
    seen: dict[str, int] = {"v0": 0, "v1": 0}
    errors: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            current = holder.current()
            resp = score_request(current, req, user, sides, None, world.store)
            got = [s.score for s in resp.scores]
            if not np.allclose(got, expected[resp.model_version], atol=1e-6):
                errors.append(resp.model_version)
            seen[resp.model_version] += 1

    threads = [threading.Thread(target=client) for _ in range(3)]
    for th in threads:
        th.start()
    for i in range(20):  # reload from disk each time: a fresh model object per swap
        holder.load(paths[i % 2], version=f"v{i % 2}")
    stop.set()
    for th in threads:
        th.join()
    assert not errors, errors
    assert seen["v0"] > 0 and seen["v1"] > 0 and holder.swaps == 20
