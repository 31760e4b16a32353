"""Content encoders by name: the explicit registry, `build_encoder`, and checkpoint save / load.

A checkpoint is `{"name": str, "config": dict, "state_dict": dict}` written with `torch.save` and
read with `torch.load(..., weights_only=True)`: serving rebuilds exactly the trained module from
it and never re-derives hyperparameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from os import PathLike
from typing import Any

import torch

from mmbee.encoders.base import ContentEncoder
from mmbee.encoders.baselines import FixedFusionEncoder, MeanPoolEncoder, MLPEncoder
from mmbee.encoders.cva import CVAEncoder, CVATextEncoder, CVATokensEncoder
from mmbee.encoders.mfq import MFQEncoder
from mmbee.encoders.vbf import VBFEncoder

__all__ = [
    "ENCODERS",
    "encoder_names",
    "make_config",
    "build_encoder",
    "encoder_state",
    "encoder_from_state",
    "save_encoder",
    "load_encoder",
]

ENCODERS: Mapping[str, type[ContentEncoder]] = {
    "mfq": MFQEncoder,
    "cva": CVAEncoder,
    "cva-tokens": CVATokensEncoder,
    "cva+text": CVATextEncoder,
    "mean-pool": MeanPoolEncoder,
    "mlp": MLPEncoder,
    "fixed-fusion": FixedFusionEncoder,
    "vbf++": VBFEncoder,
}
"""Every content encoder mmbee can build, by the name used in settings and checkpoints."""


def encoder_names() -> list[str]:
    """The registered encoder names, sorted."""
    return sorted(ENCODERS)


def _encoder_class(name: str) -> type[ContentEncoder]:
    try:
        return ENCODERS[name]
    except KeyError:
        raise ValueError(
            f"unknown content encoder {name!r}; choose one of: {', '.join(encoder_names())}"
        ) from None


def make_config(name: str, config: Mapping[str, Any] | None = None) -> Any:
    """The frozen config of encoder `name`, defaults overridden by `config`.

    Raises ValueError naming the unknown keys and listing the valid ones.
    """
    cls = _encoder_class(name)
    values = dict(config or {})
    valid = {f.name for f in dataclasses.fields(cls.config_cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(
            f"unknown config keys for encoder {name!r}: {unknown}; valid keys: {sorted(valid)}"
        )
    for f in dataclasses.fields(cls.config_cls):  # JSON gives lists where configs hold tuples
        if isinstance(values.get(f.name), list):
            values[f.name] = tuple(values[f.name])
    return cls.config_cls(**values)


def build_encoder(
    name: str, config: Mapping[str, Any] | None = None, *, seed: int | None = None
) -> ContentEncoder:
    """Build encoder `name` with `config` overriding its defaults.

    With `seed`, parameters are initialised from `torch.manual_seed(seed)` inside a forked RNG,
    so the same seed gives the same weights and the global RNG is left as it was.

    Example:
        >>> enc = build_encoder("mean-pool", {"out_dim": 8}, seed=0)
        >>> enc.out_dim
        8
    """
    cls = _encoder_class(name)
    cfg = make_config(name, config)
    if seed is None:
        return cls(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(cfg)


def encoder_state(encoder: ContentEncoder) -> dict[str, Any]:
    """`{"name", "config", "state_dict"}` of `encoder` (tensors on CPU), e.g. to nest in a bigger
    checkpoint."""
    return {
        "name": encoder.name,
        "config": encoder.config_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
    }


def encoder_from_state(state: Mapping[str, Any]) -> ContentEncoder:
    """Rebuild an encoder from `encoder_state` output; strict: every weight must match."""
    missing = {"name", "config", "state_dict"} - set(state)
    if missing:
        raise ValueError(f"encoder checkpoint lacks {sorted(missing)}")
    encoder = build_encoder(str(state["name"]), state["config"])
    encoder.load_state_dict(state["state_dict"], strict=True)
    return encoder


def save_encoder(path: str | PathLike[str], encoder: ContentEncoder) -> None:
    """Write `{"name", "config", "state_dict"}` to `path` with `torch.save`."""
    torch.save(encoder_state(encoder), path)


def load_encoder(
    path: str | PathLike[str], map_location: str | torch.device = "cpu"
) -> ContentEncoder:
    """Load a `save_encoder` checkpoint with `torch.load(weights_only=True)` and rebuild it exactly."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not an encoder checkpoint (got {type(state).__name__})")
    return encoder_from_state(state)
