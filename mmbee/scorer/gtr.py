"""The GTR model: a SIM or MMoE base, an optional content encoder (h_m) and optional GIE (h_g).

MMBee's Table 2 grid is `VARIANTS`: `sim`, `sim_mfq`, `sim_gie`, `sim_mfq_gie` and the same for
`mmoe`. The content encoder is chosen by name from `mmbee.encoders.registry` ("mfq",
"cva+text", "vbf++", or a baseline), so any encoder plugs in. h_m and h_g are projected to the
model width and appended to the base's input; the base outputs task logits (SIM: gift only;
MMoE: watch, comment, gift). The loss lives in `mmbee.scorer.train`; serving calls `predict`.

Checkpoints are `{"config": {"model": ..., ...}, "state_dict": ...}` (see `save_checkpoint`),
loaded with `torch.load(weights_only=True)`; the content encoder's name and config travel
inside the model config, so serving rebuilds exactly what was trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from os import PathLike
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mmbee.encoders.base import DEFAULT_AUTHOR_BUCKETS, ContentEncoder
from mmbee.scorer.batch import DENSE_FEATURES, KINDS, GTRBatch
from mmbee.scorer.gie import GIE, GIEConfig
from mmbee.scorer.layers import GRAPH_MEMBERSHIP, graph_membership, match_counts
from mmbee.scorer.mmoe import MMoE, MMoEConfig
from mmbee.scorer.sim import SIM, SIMConfig

__all__ = [
    "VARIANTS",
    "GTRConfig",
    "GTROutput",
    "GTRModel",
    "config_for_variant",
    "default_content_config",
    "save_checkpoint",
    "load_checkpoint",
]

VARIANTS = (
    "sim",
    "sim_mfq",
    "sim_gie",
    "sim_mfq_gie",
    "mmoe",
    "mmoe_mfq",
    "mmoe_gie",
    "mmoe_mfq_gie",
)
"""MMBee Table 2's grid: base, base+MFQ, base+GIE, base+MFQ+GIE for SIM and MMoE."""


@dataclass(frozen=True)
class GTRConfig:
    """Everything needed to rebuild a GTR model (JSON-plain values only).

    Attributes:
        base: "sim" or "mmoe".
        dim: width D of id embeddings, h_m and h_g.
        user_rows, author_rows: hashed id table sizes of the base and of GIE's Theta.
        content_encoder: registry name of the content encoder, or None (no h_m).
        content_config: that encoder's config overrides (e.g. feature widths, out_dim).
        categories: content-category vocabulary; when non-empty, every content batch carries
            `SegmentBatch.context` = the one-hot of the live's category in this order (VBF++'s
            context-aware prior reads it: set its `d_context` to len(categories), as
            `default_content_config` does).
        gie: whether h_g (GIE) is used.
        sim_top_k, sim_heads, sim_hard_bonus: SIM's GSU top-K, ESU heads, hard-search bonus.
        mmoe_experts, mmoe_expert_hidden, mmoe_tower_hidden: MMoE's experts and towers.
        hidden: SIM head MLP widths.
        dropout: dropout in heads, experts and towers.
        gie_heads, nce_temperature: GIE attention heads and GraphCL InfoNCE temperature.
        wide: add a linear ("wide", as in Wide & Deep) term over the dense counters, the
            per-kind match counts, GIE's graph-membership features (`graph_membership`, GIE
            variants only) and h_m / h_g to every task logit; with few positives it learns the
            multiplicative structure of gift rates (log factors add up in the logit: a hot
            moment of the stream, a co-gifting neighbourhood) much faster than the MLP.
        gie_membership: with GIE, the wide term also reads `graph_membership` (parameter-free
            list-membership features of the target and the viewer's history). Off by default:
            on the simulator they cost UAUC (docs/scorer.md, "Presenting the signals").
        extra_wide: width of `GTRBatch.extra`, diagnostic inputs read by the wide term only
            (the ablation's ceiling variants feed the simulator's truth there; never shipped).

    Example:
        >>> c = config_for_variant("sim_mfq_gie", dim=16)
        >>> c.base, c.content_encoder, c.gie
        ('sim', 'mfq', True)
    """

    base: Literal["sim", "mmoe"] = "sim"
    dim: int = 32
    user_rows: int = 1 << 15
    author_rows: int = 1 << 12
    content_encoder: str | None = None
    content_config: dict[str, Any] = field(default_factory=dict)
    categories: tuple[str, ...] = ()
    gie: bool = False
    sim_top_k: int = 16
    sim_heads: int = 2
    sim_hard_bonus: float = 5.0
    mmoe_experts: int = 4
    mmoe_expert_hidden: tuple[int, ...] = (128, 64)
    mmoe_tower_hidden: tuple[int, ...] = (32,)
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.0
    gie_heads: int = 1
    nce_temperature: float = 0.2
    wide: bool = True
    gie_membership: bool = False
    extra_wide: int = 0

    def __post_init__(self) -> None:
        if self.base not in ("sim", "mmoe"):
            raise ValueError(f"base must be 'sim' or 'mmoe', got {self.base!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples become lists) for checkpoints and JSON."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GTRConfig:
        """Inverse of `to_dict`; unknown keys are an error naming them."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown GTRConfig keys {unknown}; valid: {sorted(known)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if "content_config" in fixed:
            fixed["content_config"] = dict(fixed["content_config"] or {})
        return cls(**fixed)  # type: ignore[arg-type]

    @property
    def variant(self) -> str:
        """The Table 2 name of this configuration (content encoders other than MFQ by name)."""
        name: str = self.base
        if self.content_encoder is not None:
            enc = self.content_encoder
            name += "_" + ("mfq" if enc == "mfq" else enc.replace("+", "").replace("-", ""))
        return name + ("_gie" if self.gie else "")


def config_for_variant(variant: str, content_encoder: str = "mfq", **overrides: Any) -> GTRConfig:
    """GTRConfig of a Table 2 variant name such as "sim_mfq_gie".

    `content_encoder` replaces MFQ in the "_mfq" variants (e.g. "vbf++" for the VBF++ grid).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    parts = variant.split("_")
    return GTRConfig(
        base=parts[0],  # type: ignore[arg-type]
        content_encoder=content_encoder if "mfq" in parts else None,
        gie="gie" in parts,
        **overrides,
    )


_CONTENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "mfq": {
        "d_model": 32,
        "heads": 2,
        "n_queries": 2,
        "out_dim": 32,
        "author_buckets": 4096,
        "author_dim": 16,
        "now_hidden": 64,
        "now_dim": 64,
    },
    "cva+text": {
        "latent_dim": 64,
        "depth": 2,
        "heads": 2,
        "dim_head": 32,
        "ffn_mult": 2,
        "out_dim": 32,
        "text_hidden": 32,
    },
    "vbf++": {"d_hidden": 64, "d_fused": 32},
}
"""CPU-sized encoder settings used by the jobs (each encoder's own defaults are larger)."""
_WIDTH_KEYS = (
    ("visual_dim", "speech_dim", "comment_dim"),
    ("d_visual", "d_speech", "d_comments"),
)


def default_content_config(
    name: str, frame_dim: int, text_dim: int, n_categories: int = 0
) -> dict[str, Any]:
    """Config overrides for encoder `name`: the data's feature widths plus CPU-sized defaults.

    Only keys the encoder's config has are set, so any registered encoder works;
    `n_categories` becomes `d_context` (the width of `SegmentBatch.context`) where the encoder
    has one (VBF++).
    """
    from mmbee.encoders.registry import ENCODERS

    cls = ENCODERS.get(name)
    if cls is None:
        raise ValueError(f"unknown content encoder {name!r}; choose one of: {sorted(ENCODERS)}")
    valid = {f.name for f in dataclasses.fields(cls.config_cls)}
    out = {k: v for k, v in _CONTENT_DEFAULTS.get(name, {}).items() if k in valid}
    for keys in _WIDTH_KEYS:
        for key, width in zip(keys, (frame_dim, text_dim, text_dim), strict=True):
            if key in valid:
                out[key] = width
    if "d_context" in valid:
        out["d_context"] = n_categories
    return out


@dataclass
class GTROutput:
    """What `GTRModel.forward` returns.

    Attributes:
        logits: task name -> (B,) logits (SIM: "gift"; MMoE: "watch", "comment", "gift").
        aux_losses: named scalar losses for the training wrapper ("graphcl_nce", encoder terms).
    """

    logits: dict[str, Tensor]
    aux_losses: dict[str, Tensor] = field(default_factory=dict)


def _build_content_encoder(name: str, config: Mapping[str, Any]) -> ContentEncoder:
    from mmbee.encoders.registry import build_encoder

    return build_encoder(name, dict(config))


class GTRModel(nn.Module):
    """The gift-through-rate model of one Table 2 variant.

    Example:
        >>> m = GTRModel(config_for_variant("mmoe_gie", dim=8, user_rows=16, author_rows=16,
        ...                                 mmoe_expert_hidden=(8,)))
        >>> out = m(GTRBatch.empty_like_for_tests(2, history=3, n=4))
        >>> sorted(out.logits), tuple(out.logits["gift"].shape)
        (['comment', 'gift', 'watch'], (2,))
    """

    logit_offset: Tensor

    def __init__(self, config: GTRConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        side = 0
        self.content: ContentEncoder | None = None
        self.content_proj: nn.Module | None = None
        if config.content_encoder is not None:
            self.content = _build_content_encoder(config.content_encoder, config.content_config)
            self.content_proj = nn.Sequential(nn.Linear(self.content.out_dim, d), nn.LayerNorm(d))
            side += d
        self.gie: GIE | None = None
        if config.gie:
            self.gie = GIE(
                GIEConfig(
                    dim=d,
                    user_rows=config.user_rows,
                    author_rows=config.author_rows,
                    heads=config.gie_heads,
                    temperature=config.nce_temperature,
                )
            )
            side += d
        self.base: SIM | MMoE
        if config.base == "sim":
            self.base = SIM(
                SIMConfig(
                    dim=d,
                    user_rows=config.user_rows,
                    author_rows=config.author_rows,
                    top_k=config.sim_top_k,
                    heads=config.sim_heads,
                    hard_bonus=config.sim_hard_bonus,
                    hidden=config.hidden,
                    dropout=config.dropout,
                    side_dim=side,
                )
            )
        else:
            self.base = MMoE(
                MMoEConfig(
                    dim=d,
                    user_rows=config.user_rows,
                    author_rows=config.author_rows,
                    experts=config.mmoe_experts,
                    expert_hidden=config.mmoe_expert_hidden,
                    tower_hidden=config.mmoe_tower_hidden,
                    dropout=config.dropout,
                    side_dim=side,
                )
            )

        # Added to the logits: log(negative keep rate) after training on subsampled negatives,
        # so served probabilities stay calibrated (a buffer: saved with the weights).
        self.register_buffer("logit_offset", torch.zeros(len(self.base.tasks)))
        self.wide: nn.Linear | None = None
        if config.wide:
            self.wide = nn.Linear(self.n_fixed_wide + side, len(self.base.tasks))
            nn.init.zeros_(self.wide.weight)
            nn.init.zeros_(self.wide.bias)

    def init_output_bias(self, rates: dict[str, float]) -> None:
        """Start each task's logit at logit(positive rate) (the wide bias; no-op without it)."""
        if self.wide is None:
            return
        with torch.no_grad():
            for i, task in enumerate(self.tasks):
                if task in rates:
                    r = min(max(rates[task], 1e-6), 1 - 1e-6)
                    self.wide.bias[i] = float(torch.logit(torch.tensor(r)))

    @property
    def n_fixed_wide(self) -> int:
        """Width of `fixed_wide_inputs`: the wide term's columns that hold no learned part."""
        graph = len(GRAPH_MEMBERSHIP) if self.config.gie and self.config.gie_membership else 0
        return len(DENSE_FEATURES) + len(KINDS) + graph + self.config.extra_wide

    def fixed_wide_inputs(self, batch: GTRBatch) -> Tensor:
        """The wide term's parameter-free inputs: dense counters, match counts, GIE's
        graph-membership features (GIE variants) and diagnostic extras: (B, n_fixed_wide).

        The training wrapper's logistic-regression warm start fits the wide term on exactly
        these columns, so it reads them through this method too."""
        cols = [
            batch.dense,
            match_counts(batch.hist_author, batch.hist_kind, batch.hist_mask, batch.author),
        ]
        if self.config.gie and self.config.gie_membership:
            cols.append(
                graph_membership(
                    batch.exp_ids,
                    batch.exp_weight,
                    batch.exp_mask,
                    batch.author,
                    batch.hist_author,
                    batch.hist_kind,
                    batch.hist_mask,
                )
            )
        if self.config.extra_wide:
            if batch.extra is None or batch.extra.shape[-1] != self.config.extra_wide:
                raise ValueError(f"the model reads {self.config.extra_wide} extra inputs")
            cols.append(batch.extra)
        return torch.cat(cols, dim=-1)  # (B, n_fixed_wide)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Task names of the logits, in order."""
        return tuple(self.base.tasks)

    @property
    def content_author_rows(self) -> int:
        """Number of author rows of the content encoder's id table (for `SegmentBatch.author_ids`)."""
        if self.content is None:
            return DEFAULT_AUTHOR_BUCKETS
        return int(getattr(self.content.config, "author_buckets", DEFAULT_AUTHOR_BUCKETS))

    def forward(self, batch: GTRBatch, content_embedding: Tensor | None = None) -> GTROutput:
        """Task logits and auxiliary losses.

        `content_embedding` replaces the content encoder's output: the scorer then runs no
        encoder and adds none of its auxiliary losses; everything after the encoder (projection
        to h_m, the base, the wide term's h_m columns) is the same. Serving passes embeddings it
        computed earlier (`mmbee.scorer.predict.encode_buffers`); VBF++'s trainer computes the
        embedding itself, with its own sampling, and needs the recommendation loss given it
        (`mmbee.scorer.train.ContentRecLoss`).

        Shapes:
            batch: see `GTRBatch` (content: U buffers, content_index (B,)).
            content_embedding: (U, content.out_dim), row u = buffer u of `batch.content`.
            Returns logits (B,) per task.
        """
        side: list[Tensor] = []
        aux: dict[str, Tensor] = {}
        if self.content is not None:
            if batch.content_index is None or (batch.content is None and content_embedding is None):
                raise ValueError(
                    f"model {self.config.variant!r} needs content segments; the batch has none"
                )
            if content_embedding is None:
                enc = self.content(batch.content)
                content_embedding = enc.embedding  # (U, out_dim)
                for name, loss in enc.aux_losses.items():
                    aux[f"content/{name}"] = loss
            elif content_embedding.shape[-1] != self.content.out_dim:
                raise ValueError(
                    f"content_embedding has width {content_embedding.shape[-1]}, the encoder "
                    f"{self.config.content_encoder!r} outputs {self.content.out_dim}"
                )
            h_m = self.content_proj(content_embedding)  # type: ignore[misc]  # (U, D)
            side.append(h_m[batch.content_index])  # (B, D)
        elif content_embedding is not None:
            raise ValueError(f"model {self.config.variant!r} has no content slot")
        if self.gie is not None:
            side.append(self.gie(batch))  # (B, D)
            if self.training:
                aux["graphcl_nce"] = self.gie.nce_loss(batch)
        logits = self.base(batch, torch.cat(side, dim=-1) if side else None)  # (B, T)
        if self.wide is not None:
            fixed = self.fixed_wide_inputs(batch)  # (B, n_fixed_wide)
            logits = logits + self.wide(torch.cat([fixed, *side], dim=-1))  # (B, T)
        logits = logits + self.logit_offset
        return GTROutput(logits={t: logits[:, i] for i, t in enumerate(self.tasks)}, aux_losses=aux)

    @torch.no_grad()
    def predict(self, batch: GTRBatch) -> Tensor:
        """Serving: P(gift within 1 h) per impression, (B,), eval mode, no gradients."""
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(self.forward(batch).logits["gift"])
        finally:
            self.train(was_training)


def save_checkpoint(
    path: str | PathLike[str], model: GTRModel, extra_config: Mapping[str, Any] | None = None
) -> None:
    """Write `{"config": {"model": ..., **extra_config}, "state_dict": ...}` (tensors on CPU).

    `extra_config` carries what serving must not re-derive, e.g. the feature config.
    """
    config: dict[str, Any] = {"model": model.config.to_dict()}
    config.update(dict(extra_config or {}))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": config, "state_dict": state}, path)


def load_checkpoint(
    path: str | PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[GTRModel, dict[str, Any]]:
    """Rebuild a model from `save_checkpoint` output with `torch.load(weights_only=True)`.

    Returns the model (eval mode) and the whole config dict.
    """
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a GTR checkpoint (expected 'config' and 'state_dict')")
    config = ckpt["config"]
    model = GTRModel(GTRConfig.from_dict(config["model"]))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.eval()
    return model, config
