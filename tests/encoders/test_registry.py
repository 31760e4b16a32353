"""Registry and the contract every encoder keeps: shapes, padding/mask invariance, gradients, seeds,
batch composition, checkpoint round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from mmbee.encoders.base import SegmentBatch
from mmbee.encoders.batching import synthetic_batch
from mmbee.encoders.registry import (
    ENCODERS,
    build_encoder,
    encoder_from_state,
    encoder_state,
    load_encoder,
    make_config,
    save_encoder,
)

DV, DS, DT = 12, 6, 6
_IO = {"visual_dim": DV}
_IO3 = {"visual_dim": DV, "speech_dim": DS, "comment_dim": DT}
_MFQ = {**_IO3, "d_model": 16, "heads": 2, "n_queries": 2, "author_buckets": 32, "author_dim": 4}
_CVA = {**_IO, "latent_dim": 16, "depth": 2, "heads": 2, "dim_head": 8, "n_latents": 4}

# (registered name, tiny config) for every encoder this suite covers; MFQ in both OP scopes
CASES: list[tuple[str, dict[str, Any]]] = [
    ("mfq", _MFQ),
    ("mfq", {**_MFQ, "op_scope": "stream"}),
    ("cva", _CVA),
    ("cva-tokens", _CVA),
    ("cva+text", {**_CVA, "speech_dim": DS, "comment_dim": DT, "text_hidden": 8}),
    ("cva+text", {**_CVA, **_IO3, "text_hidden": 8, "visual_mode": "tokens"}),
    ("mean-pool", _IO3),
    ("mlp", {**_IO3, "hidden": 16}),
    ("fixed-fusion", {**_IO3, "hidden": 16}),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]


def _batch(seed: int, B: int = 5, L: int = 6, **kw: Any) -> SegmentBatch:
    return synthetic_batch(
        B,
        L,
        visual_dim=DV,
        speech_dim=DS,
        comment_dim=DT,
        author_buckets=32,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def _emb(enc: torch.nn.Module, batch: SegmentBatch) -> torch.Tensor:
    return enc.predict(batch)  # type: ignore[operator]


def _replace(batch: SegmentBatch, **changes: Any) -> SegmentBatch:
    return dataclasses.replace(batch, **changes)


def _garbage_like(x: torch.Tensor, keep: torch.Tensor, seed: int) -> torch.Tensor:
    """x where keep (broadcast over the feature axis), new noise (and some NaN) elsewhere."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * 100
    noise[..., 0] = float("nan")
    return torch.where(keep.unsqueeze(-1), x, noise)


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown content encoder 'nope'") as err:
        build_encoder("nope")
    for name in ("mfq", "cva", "cva-tokens", "cva+text", "mean-pool", "mlp", "fixed-fusion"):
        assert name in str(err.value)


def test_unknown_config_key_is_named() -> None:
    with pytest.raises(ValueError, match="d_modle"):
        build_encoder("mfq", {"d_modle": 8})


def test_json_lists_become_tuples() -> None:
    cfg = make_config("fixed-fusion", {"weights": [1, 0, 0]})
    assert cfg.weights == (1.0, 0.0, 0.0)


def test_every_covered_name_is_registered_and_named_consistently() -> None:
    for name, _ in CASES:
        assert ENCODERS[name].name == name


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=IDS)
def test_shapes_and_finite(name: str, cfg: dict[str, Any]) -> None:
    enc = build_encoder(name, cfg, seed=0)
    for kw in ({}, {"frames": 3, "comments": 4}):
        batch = _batch(1, **kw)
        out = enc(batch)
        assert out.embedding.shape == (5, enc.out_dim)
        assert torch.isfinite(out.embedding).all()


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=IDS)
def test_padded_values_change_nothing(name: str, cfg: dict[str, Any]) -> None:
    """Whatever masked positions hold (noise, NaN), the embedding is the same."""
    enc = build_encoder(name, cfg, seed=0)
    batch = _batch(2, frames=3, comments=4)
    ref = _emb(enc, batch)
    tok = batch.token_mask()  # (B, L, 3)
    assert not tok.all(), "the synthetic batch should contain padding"
    assert batch.frame_mask is not None and batch.comment_mask is not None
    dirty = _replace(
        batch,
        visual=_garbage_like(batch.visual, tok[:, :, 0, None] & batch.frame_mask, 10),
        speech=_garbage_like(batch.speech, tok[:, :, 1], 11),
        comments=_garbage_like(batch.comments, tok[:, :, 2, None] & batch.comment_mask, 12),
    )
    torch.testing.assert_close(_emb(enc, dirty), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=IDS)
def test_extra_padded_segments_and_frames_change_nothing(name: str, cfg: dict[str, Any]) -> None:
    """Three more (older) padded segment slots and two more padded frames / comments per segment."""
    enc = build_encoder(name, cfg, seed=0)
    batch = _batch(3, frames=3, comments=4)
    ref = _emb(enc, batch)
    B, L = batch.segment_mask.shape
    g = torch.Generator().manual_seed(5)
    assert batch.frame_mask is not None and batch.comment_mask is not None
    assert batch.segment_modality_mask is not None

    def pad_left(x: torch.Tensor, value: float | bool | None = None) -> torch.Tensor:
        extra_shape = (B, 3, *x.shape[2:])
        if x.dtype == torch.bool:
            extra = torch.full(extra_shape, bool(value))
        else:
            extra = torch.randn(extra_shape, generator=g)
        return torch.cat([extra, x], dim=1)

    def pad_set(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        extra = torch.randn(*x.shape[:2], 2, x.shape[-1], generator=g)
        return (
            torch.cat([x, extra], dim=2),
            torch.cat([mask, torch.zeros(*mask.shape[:2], 2, dtype=torch.bool)], dim=2),
        )

    visual, frame_mask = pad_set(batch.visual, batch.frame_mask)
    comments, comment_mask = pad_set(batch.comments, batch.comment_mask)
    longer = _replace(
        batch,
        visual=pad_left(visual),
        frame_mask=pad_left(frame_mask, True),
        speech=pad_left(batch.speech),
        comments=pad_left(comments),
        comment_mask=pad_left(comment_mask, True),
        segment_mask=pad_left(batch.segment_mask, False),
        segment_modality_mask=pad_left(batch.segment_modality_mask, True),
    )
    longer.check()
    torch.testing.assert_close(_emb(enc, longer), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=IDS)
def test_each_stream_is_encoded_independently_of_the_batch(name: str, cfg: dict[str, Any]) -> None:
    enc = build_encoder(name, cfg, seed=0)
    batch = _batch(4)
    full = _emb(enc, batch)
    for i in (0, 3):
        one = SegmentBatch(
            **{
                f.name: (v[i : i + 1] if isinstance(v, torch.Tensor) else v)
                for f in dataclasses.fields(batch)
                for v in [getattr(batch, f.name)]
            }
        )
        torch.testing.assert_close(_emb(enc, one), full[i : i + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=IDS)
def test_gradients_reach_every_trainable_parameter(name: str, cfg: dict[str, Any]) -> None:
    enc = build_encoder(name, cfg, seed=0)
    batch = _batch(6, B=8, frames=2, comments=2, full=True)
    batch.author_ids.clamp_(min=1)  # unknown row 0 is a fixed zero row by design
    out = enc(batch).embedding
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out * weights).sum().backward()
    dead = [
        n
        for n, p in enc.named_parameters()
        if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))
    ]
    assert not dead, f"no gradient reaches {dead}"


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=IDS)
def test_seed_determinism(name: str, cfg: dict[str, Any]) -> None:
    before = torch.random.get_rng_state()
    a, b = build_encoder(name, cfg, seed=7), build_encoder(name, cfg, seed=7)
    c = build_encoder(name, cfg, seed=8)
    assert torch.equal(torch.random.get_rng_state(), before), "build_encoder touched the global RNG"
    batch = _batch(7)
    assert torch.equal(_emb(a, batch), _emb(b, batch))
    assert not torch.allclose(_emb(a, batch), _emb(c, batch))


@pytest.mark.parametrize(("name", "cfg"), CASES, ids=IDS)
def test_checkpoint_round_trip(name: str, cfg: dict[str, Any], tmp_path: Path) -> None:
    enc = build_encoder(name, cfg, seed=3)
    with torch.no_grad():  # make the weights differ from a fresh build's
        for p in enc.parameters():
            p.add_(0.01)
    path = tmp_path / "enc.pt"
    save_encoder(path, enc)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"name", "config", "state_dict"}
    assert raw["name"] == name and raw["config"] == dataclasses.asdict(enc.config)
    loaded = load_encoder(path)
    assert type(loaded) is type(enc) and loaded.config == enc.config
    batch = _batch(8)
    assert torch.equal(_emb(loaded, batch), _emb(enc, batch))


def test_strict_load_rejects_mismatched_weights() -> None:
    state = encoder_state(build_encoder("mean-pool", _IO3))
    state["config"] = {**state["config"], "out_dim": 3}
    with pytest.raises(RuntimeError, match="size mismatch"):
        encoder_from_state(state)
    with pytest.raises(ValueError, match="lacks"):
        encoder_from_state({"name": "mfq"})


def test_predict_is_no_grad_and_restores_mode() -> None:
    enc = build_encoder("mfq", _MFQ, seed=0)
    enc.train()
    out = enc.predict(_batch(9))
    assert not out.requires_grad and enc.training
