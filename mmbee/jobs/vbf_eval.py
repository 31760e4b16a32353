"""`mmbee experiment vbf`: VBF++ as the GTR scorer's content encoder on a simulated log.

What it measures (docs/vbf.md, "Phase 2"), on one simulated world with the ablation job's time
split (train on the first days, test on the last):

- **Main table**: the SIM scorer (no GIE) without content, with MFQ, with fixed fusion weights,
  and with VBF++ and the paper's Table 3 ablations: -ML (no meta-learning), -RAR (no replay
  buffer / discriminator / adversarial loss), -CP (N(0, I) instead of the context-aware prior),
  -VE (z = mu: no sampling, no KL). AUC / UAUC / GAUC / Recall@10 / NDCG@10, mean and standard
  deviation over training seeds. MFQ, fixed fusion and the base are trained by the scorer's own
  `train_model` (exactly as in `mmbee experiment ablation`); the VBF++ rows by `train_vbf`, the
  same `train_model` loop (same seeds, negative subsampling, example order, wide-term learning
  rate, output bias and calibration offset) with `VBFTrainer.train_step` (RAR + ELBO + rec
  loss) as its step (`train_model(step=...)`) and, with meta-learning, a MAML step on category
  domains every few steps.
- **Fusion weights per category** (the paper's Fig. 4 claim): mean alpha over streams of each
  simulated category against the modality that carries the moment signal there.
- **Posterior variance of mixed vs pure streams**: the simulator has one category per streamer,
  so mixed buffers are built by splicing the older half of one stream's buffer onto the newer
  half of a stream of another category; splices of two streams of the same category are the
  control for the splicing itself.
- **Held-out domains** (eqs. 20-22): categories removed from training; 50 support interactions
  of each, adaptation with `VBFTrainer.adapt`, query = its test-day impressions; meta-trained vs
  not, before vs after adaptation.
- **Uncertainty-guided exploration**: the top 20 % of buffers by posterior variance scored with
  the best of 8 sampled strategies vs the mean strategy.

Example:
    >>> report = run_vbf_eval(VBFEvalJob(out=Path("runs/vbf")))  # doctest: +SKIP
    >>> report["metrics"]["vbf++"]["auc"] > 0.5  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmbee.encoders.base import MODALITIES, SegmentBatch
from mmbee.encoders.vbf import VBFEncoder, explore_scores
from mmbee.encoders.vbf_train import DomainTask, VBFTrainConfig, VBFTrainer
from mmbee.jobs.train import (
    BuildConfig,
    BuiltExamples,
    TrainJob,
    load_or_build,
    model_config,
    split_by_time,
    test_report,
)
from mmbee.scorer.batch import TASKS, GTRBatch
from mmbee.scorer.gtr import GTRConfig, GTRModel, default_content_config
from mmbee.scorer.metrics import evaluate_scores
from mmbee.scorer.train import (
    ContentRecLoss,
    TrainConfig,
    rows_for,
    score_table,
    train_model,
)

__all__ = [
    "EncoderVariant",
    "DEFAULT_VARIANTS",
    "MetaConfig",
    "VBFEvalJob",
    "VBFRun",
    "train_vbf",
    "encoder_diagnostics",
    "fusion_by_category",
    "mixed_vs_pure",
    "heldout_adaptation",
    "exploration",
    "run_vbf_eval",
    "summary_json",
    "markdown_report",
    "plot_report",
]

_GIFT = TASKS.index("gift")
METRICS = ("auc", "uauc", "gauc", "recall@10", "ndcg@10")


@dataclass(frozen=True)
class EncoderVariant:
    """One row of the main table.

    Attributes:
        name: row label (also the `--variants` name).
        encoder: registry name of the content encoder, None for the scorer without content.
        vbf: `VBFConfig` overrides (VBF++ rows).
        vbf_train: `VBFTrainConfig` overrides (VBF++ rows).
        meta: interleave meta-learning steps (VBF++ rows).

    Example:
        >>> EncoderVariant("vbf++-cp", "vbf++", vbf={"prior": "standard"}).is_vbf
        True
    """

    name: str
    encoder: str | None
    vbf: dict[str, Any] = field(default_factory=dict)
    vbf_train: dict[str, Any] = field(default_factory=dict)
    meta: bool = False

    @property
    def is_vbf(self) -> bool:
        return self.encoder == "vbf++"


DEFAULT_VARIANTS: tuple[EncoderVariant, ...] = (
    EncoderVariant("sim", None),
    EncoderVariant("mfq", "mfq"),
    EncoderVariant("fixed-fusion", "fixed-fusion"),
    EncoderVariant("vbf++", "vbf++", meta=True),
    EncoderVariant("vbf++-ml", "vbf++"),
    EncoderVariant("vbf++-rar", "vbf++", vbf_train={"rar": False}, meta=True),
    EncoderVariant("vbf++-cp", "vbf++", vbf={"prior": "standard"}, meta=True),
    EncoderVariant("vbf++-ve", "vbf++", vbf={"variational": False}, meta=True),
    EncoderVariant("vbf++-elbo1e-3", "vbf++", vbf={"elbo_weight": 1e-3}, meta=True),
)
"""The base, MFQ, fixed fusion ("Basic" of Table 3), VBF++, its Table 3 ablations, and VBF++
with the negative ELBO scaled by 1e-3 (eq. 18 weighs it 1 and leaves lambda_rec open; with
2048 reconstructed dims the ELBO is ~1000x the recommendation loss: docs/vbf.md)."""


@dataclass(frozen=True)
class MetaConfig:
    """How meta-learning (eqs. 20-22) is interleaved with training and used on held-out domains.

    Attributes:
        every: one meta step after every `every` training steps.
        tasks: domains (categories) per meta step.
        support: interactions per support set (the paper: 50).
        support_positives: gifted impressions in a support set (at most; the rest negatives):
            with ~1 % positives, 50 random interactions hold none or one, and a support set with
            no positive has nothing to adapt to.
        query: interactions per query set during meta-training.
        repeats: support draws per held-out domain (results averaged).

    Example:
        >>> MetaConfig().support
        50
    """

    every: int = 2
    tasks: int = 2
    support: int = 50
    support_positives: int = 10
    query: int = 256
    repeats: int = 5


@dataclass(frozen=True)
class VBFEvalJob:
    """One `mmbee experiment vbf` run.

    Attributes:
        out: output directory (log/, cache/, vbf.json, vbf.md, vbf.png).
        logdir: an existing simulated log; None simulates `preset` with the size overrides.
        preset, n_users, n_streamers, days, sim_seed: the simulated world (smaller than the
            ablation job's 8000 x 200 x 4 days, to fit the CPU budget: docs/vbf.md).
        variants: rows of the main table (names from `DEFAULT_VARIANTS`).
        build, train: example and scorer training configs (every row gets the same).
        vbf_train: VBF++ trainer settings; its `lr` and `seed` are taken from `train`.
        elbo_weight: weight of VBF++'s negative ELBO in its rows (`VBFConfig.elbo_weight`),
            unless the variant sets its own.
        meta: meta-learning settings.
        seeds: training seeds per row.
        holdout: categories held out of training for the domain-adaptation test (empty: skip).
        holdout_variants: which VBF++ rows are retrained without them.
        mixed_pairs: spliced buffer pairs for the posterior-variance analysis.
        explore: run the uncertainty-guided exploration analysis.
        test_days, threads: as in the ablation job.
        progress: progress bars.
    """

    out: Path = Path("runs/vbf")
    logdir: Path | None = None
    preset: str = "demo"
    n_users: int | None = 3000
    n_streamers: int | None = 150
    days: int | None = 4
    sim_seed: int = 0
    variants: tuple[str, ...] = tuple(v.name for v in DEFAULT_VARIANTS)
    build: BuildConfig = field(default_factory=BuildConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(progress=False))
    vbf_train: VBFTrainConfig = field(default_factory=VBFTrainConfig)
    elbo_weight: float = 1.0
    meta: MetaConfig = field(default_factory=MetaConfig)
    seeds: int = 3
    holdout: tuple[str, ...] = ("music", "shopping")
    holdout_variants: tuple[str, ...] = ("vbf++", "vbf++-ml")
    mixed_pairs: int = 500
    explore: bool = True
    test_days: float = 1.0
    threads: int = 1
    progress: bool = False


@dataclass
class VBFRun:
    """A GTR model trained with a VBF++ content encoder by `train_vbf`.

    Attributes:
        model: the scorer (eval mode, calibrated offset set); `model.content` is the encoder.
        trainer: the `VBFTrainer` (discriminator, meta-learner, replay buffer).
        samples, seconds: impressions seen and wall time of the loop.
        steps, meta_steps: training and meta steps taken.
        last: the last step's loss terms.
    """

    model: GTRModel
    trainer: VBFTrainer
    samples: int = 0
    seconds: float = 0.0
    steps: int = 0
    meta_steps: int = 0
    last: dict[str, float] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


# ----------------------------------------------------------------------------- training


def _variant(name: str) -> EncoderVariant:
    for v in DEFAULT_VARIANTS:
        if v.name == name:
            return v
    raise ValueError(
        f"unknown variant {name!r}; choose from: {', '.join(v.name for v in DEFAULT_VARIANTS)}"
    )


def _vbf_train_config(base: VBFTrainConfig, variant: EncoderVariant) -> VBFTrainConfig:
    """The job's VBF++ trainer settings with the row's overrides (e.g. -RAR: `rar=False`)."""
    return replace(base, **variant.vbf_train)


def _model_config(built: BuiltExamples, variant: EncoderVariant, elbo_weight: float) -> GTRConfig:
    """The scorer config of a row: SIM + the row's encoder, as `mmbee experiment ablation`."""
    if variant.encoder is None:
        return model_config(TrainJob(Path("."), Path("."), variant="sim"), built)
    overrides: dict[str, Any] = {}
    if variant.is_vbf:
        cats = tuple(sorted(built.table.categories.ids))
        content = default_content_config(
            "vbf++", built.store.frame_dim, built.store.text_dim, len(cats)
        )
        content.update({"elbo_weight": elbo_weight, **variant.vbf})
        overrides = {"categories": cats, "content_config": content}
    job = TrainJob(
        Path("."),
        Path("."),
        variant="sim_mfq",
        content_encoder=variant.encoder,
        model_overrides=overrides,
    )
    return model_config(job, built)


def _support(
    built: BuiltExamples, pool: np.ndarray, meta: MetaConfig, rng: np.random.Generator
) -> np.ndarray:
    """`meta.support` impressions of `pool`, up to `meta.support_positives` of them gifted."""
    y = built.table.column("labels")[pool, _GIFT] > 0
    pos, neg = pool[y], pool[~y]
    n_pos = min(meta.support_positives, len(pos), meta.support)
    n_neg = min(meta.support - n_pos, len(neg))
    picks = [rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]
    return np.sort(np.concatenate(picks))


def _domain_task(
    built: BuiltExamples,
    rows: Any,
    pool: np.ndarray,
    meta: MetaConfig,
    rng: np.random.Generator,
    device: torch.device,
) -> DomainTask:
    """A meta-training task of one domain: a support set (`_support`) and `meta.query` other
    impressions of `pool` as the query set."""
    support = _support(built, pool, meta, rng)
    rest = np.setdiff1d(pool, support)
    query = np.sort(rng.choice(rest, min(meta.query, len(rest)), replace=False))
    sb = built.table.batch(support, rows, built.store).to(device)
    qb = built.table.batch(query, rows, built.store).to(device)
    if sb.content is None or qb.content is None:
        raise ValueError("domain tasks need a content model")
    return DomainTask(sb.content, sb, qb.content, qb)


class _VBFStep:
    """`train_model`'s step for a scorer with a VBF++ content encoder (a `TrainStep`).

    `VBFTrainer.train_step`: a discriminator step, then one Adam step (the scorer: AdamW, weight
    decay 1e-6) of encoder + scorer on -ELBO + L_rec + lambda_quality L_adv + L_sparse +
    L_smooth, where L_rec is the scorer's per-impression loss averaged per content buffer
    (`ContentRecLoss`; the scorer averages over impressions), the wide term at `wide_lr_mult` x
    lr. With `meta`, every `meta.every` steps one MAML step (eq. 22) on `meta.tasks` categories of
    the current epoch's examples. The prior's k-means runs on the trainer's generator.
    """

    def __init__(
        self,
        model: GTRModel,
        built: BuiltExamples,
        train: TrainConfig,
        vbf_train: VBFTrainConfig,
        meta: MetaConfig | None,
    ) -> None:
        encoder = model.content
        assert isinstance(encoder, VBFEncoder)  # train_vbf checked the config
        self.built, self.meta, self.rows = built, meta, rows_for(model)
        self.device = model.logit_offset.device
        wide = [p for n, p in model.named_parameters() if n.startswith("wide.")]
        rest = [p for n, p in model.named_parameters() if not n.startswith(("wide.", "content."))]
        self.trainer = VBFTrainer(
            encoder,
            ContentRecLoss(model, train.task_weights),
            replace(vbf_train, lr=train.lr, seed=train.seed),
            rec_parameters=rest,
            rec_param_groups=[{"params": wide, "lr": train.lr * train.wide_lr_mult}],
        )
        self.meta_rng = np.random.default_rng([train.seed, 2])
        self.domains: list[np.ndarray] = []
        self.steps = self.meta_steps = 0
        self.last: dict[str, float] = {}

    def init_prior(self, batches: Iterable[SegmentBatch]) -> None:
        self.trainer.initialise_prior(batches)

    def start_epoch(self, idx: np.ndarray) -> None:
        """The epoch's meta-training domains: categories with a positive and enough examples."""
        self.domains = []
        if self.meta is None:
            return
        cats, gift = self.built.table.column("category"), self.built.table.column("labels")
        for c in np.unique(cats[idx]):
            pool = idx[cats[idx] == c]
            if (
                c >= 0
                and (gift[pool, _GIFT] > 0).any()
                and len(pool) >= self.meta.support + self.meta.query
            ):
                self.domains.append(pool)

    def __call__(self, batch: GTRBatch) -> dict[str, float]:
        self.last = self.trainer.train_step(batch.content, batch)  # type: ignore[arg-type]
        self.steps += 1
        meta = self.meta
        if meta is not None and self.domains and self.steps % meta.every == 0:
            n = min(meta.tasks, len(self.domains))
            picks = self.meta_rng.choice(len(self.domains), n, replace=False)
            tasks = [
                _domain_task(
                    self.built, self.rows, self.domains[i], meta, self.meta_rng, self.device
                )
                for i in picks
            ]
            self.trainer.meta_train_step(tasks)
            self.meta_steps += 1
        return self.last


def train_vbf(
    model_cfg: GTRConfig,
    built: BuiltExamples,
    train_idx: np.ndarray,
    train: TrainConfig,
    vbf_train: VBFTrainConfig,
    meta: MetaConfig | None,
) -> VBFRun:
    """Train a GTR model whose content encoder is VBF++ with the full VBF++ objective.

    `mmbee.scorer.train.train_model`'s loop (seeded init, output-bias init, wide warm start,
    negative subsampling draw and example order, the prior's k-means sample, calibrated offset
    at the end) with `_VBFStep` as its step, on all of `train_idx` (no validation split) and
    without the scorer's second stage.
    """
    if model_cfg.content_encoder != "vbf++":
        raise ValueError(
            f"train_vbf needs a VBF++ content encoder, got {model_cfg.content_encoder}"
        )
    made: list[_VBFStep] = []

    def step(model: GTRModel) -> _VBFStep:
        made.append(_VBFStep(model, built, train, vbf_train, meta))
        return made[-1]

    config = replace(train, val_days=0.0, stage2_epochs=0)
    res = train_model(model_cfg, built.table, built.store, train_idx, config, step=step)
    (s,) = made
    return VBFRun(res.model, s.trainer, res.samples, res.seconds, s.steps, s.meta_steps, s.last)


@torch.no_grad()
def _scores(
    model: GTRModel,
    built: BuiltExamples,
    idx: np.ndarray,
    encoder: VBFEncoder | None = None,
    batch_size: int = 2048,
) -> np.ndarray:
    """P(gift) of examples `idx`; with `encoder`, its mean-strategy embedding replaces the
    model's own (an adapted copy). (len(idx),) float64."""
    if encoder is None:
        return score_table(model, built.table, built.store, idx, batch_size)
    device = next(model.parameters()).device
    rows = rows_for(model)
    model.eval()
    encoder.eval()
    out = []
    for start in range(0, len(idx), batch_size):
        b = built.table.batch(idx[start : start + batch_size], rows, built.store).to(device)
        emb = encoder(b.content).embedding  # (U, D)
        logit = model(b, content_embedding=emb).logits["gift"]
        out.append(torch.sigmoid(logit).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


# ----------------------------------------------------------------------------- diagnostics


@torch.no_grad()
def encoder_diagnostics(
    model: GTRModel, built: BuiltExamples, idx: np.ndarray, batch_size: int = 2048
) -> dict[str, np.ndarray]:
    """Per impression of `idx`: the VBF++ buffer's fusion weights under the mean strategy
    (N, 3), its posterior variance (N,) and whether all three modalities are present (N,)."""
    enc = model.content
    if not isinstance(enc, VBFEncoder):
        raise ValueError("encoder diagnostics need a VBF++ content encoder")
    device = next(model.parameters()).device
    rows = rows_for(model)
    enc.eval()
    alpha, var, full = [], [], []
    for start in range(0, len(idx), batch_size):
        b = built.table.batch(idx[start : start + batch_size], rows, built.store).to(device)
        c = b.content
        assert c is not None and b.content_index is not None
        out = enc(c, compute_losses=False)
        ci = b.content_index
        alpha.append(out.extras["fusion_weights"][ci].cpu().numpy())
        var.append(out.extras["posterior_var"][ci].cpu().numpy())
        full.append(c.modality_mask.all(dim=1)[ci].cpu().numpy())
    return {
        "alpha": np.concatenate(alpha).astype(np.float64),
        "posterior_var": np.concatenate(var).astype(np.float64),
        "full": np.concatenate(full).astype(bool),
    }


def fusion_by_category(
    built: BuiltExamples,
    idx: np.ndarray,
    diag: dict[str, np.ndarray],
    carriers: dict[str, str],
) -> dict[str, Any]:
    """Fig. 4: per category, mean alpha over streams (each stream = the mean over its impressions
    whose buffer has all three modalities) against the category's signal carrier.

    Returns {"categories": {cat: {alpha, streams, carrier, top, follows, posterior_var}},
    "absolute": share of categories whose largest weight is the carrier's, "relative": per
    modality m, mean alpha_m over the categories it carries minus over the others (> 0: the
    weights shift towards the carrier, even when another modality dominates everywhere)}.
    """
    t = built.table
    names = np.array([c or "" for c in t.category_names(idx)], dtype=object)
    authors = t.column("author")[idx]
    full = diag["full"]
    cats: dict[str, Any] = {}
    for cat in sorted(set(names) - {""}):
        sel = (names == cat) & full
        if not sel.any():
            continue
        streams = np.unique(authors[sel])
        per_stream = np.stack([diag["alpha"][sel & (authors == a)].mean(0) for a in streams])
        var = np.array([diag["posterior_var"][sel & (authors == a)].mean() for a in streams])
        mean = per_stream.mean(0)
        carrier = carriers.get(cat, "")
        top = MODALITIES[int(mean.argmax())]
        cats[cat] = {
            "alpha": [float(v) for v in mean],
            "alpha_std_streams": [float(v) for v in per_stream.std(0)],
            "streams": len(streams),
            "carrier": carrier,
            "top": top,
            "follows": top == carrier,
            "posterior_var": float(var.mean()),
        }
    relative: dict[str, float] = {}
    for m, mod in enumerate(MODALITIES):
        own = [c["alpha"][m] for c in cats.values() if c["carrier"] == mod]
        other = [c["alpha"][m] for c in cats.values() if c["carrier"] != mod]
        if own and other:
            relative[mod] = float(np.mean(own) - np.mean(other))
    absolute = float(np.mean([c["follows"] for c in cats.values()])) if cats else float("nan")
    return {"categories": cats, "absolute": absolute, "relative": relative}


def _splice(a: SegmentBatch, b: SegmentBatch, cut: int) -> SegmentBatch:
    """Segments [0, cut) of a (older) followed by [cut, L) of b (newer); context averaged."""

    def cat(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :cut], y[:, cut:]], dim=1)

    assert a.segment_modality_mask is not None and b.segment_modality_mask is not None
    smm = cat(a.segment_modality_mask, b.segment_modality_mask)  # (N, L, 3)
    context = None
    if a.context is not None and b.context is not None:
        context = 0.5 * (a.context + b.context)
    return SegmentBatch(
        visual=cat(a.visual, b.visual),
        speech=cat(a.speech, b.speech),
        comments=cat(a.comments, b.comments),
        segment_mask=cat(a.segment_mask, b.segment_mask),
        modality_mask=smm.any(dim=1),
        author_ids=a.author_ids,
        context=context,
        segment_modality_mask=smm,
    )


def _take(batch: SegmentBatch, rows: torch.Tensor) -> SegmentBatch:
    """Rows `rows` of every tensor of a SegmentBatch."""
    kw: dict[str, Any] = {}
    for name in batch.__dataclass_fields__:
        v = getattr(batch, name)
        kw[name] = v[rows] if isinstance(v, torch.Tensor) else v
    return SegmentBatch(**kw)


@torch.no_grad()
def mixed_vs_pure(
    model: GTRModel,
    built: BuiltExamples,
    idx: np.ndarray,
    n_pairs: int,
    rng: np.random.Generator,
    max_buffers: int = 800,
) -> dict[str, Any]:
    """Posterior variance (mean over z dims of sigma_q^2) of pure buffers, of buffers spliced from
    two streams of different categories ("mixed"), and of splices of two streams of the same
    category (the control). Buffers: distinct full buffers (every segment present, all three
    modalities) of a sample of impressions `idx`."""
    enc = model.content
    if not isinstance(enc, VBFEncoder):
        raise ValueError("needs a VBF++ content encoder")
    device = next(model.parameters()).device
    rows = rows_for(model)
    sample = np.sort(rng.choice(idx, min(len(idx), 2 * max_buffers), replace=False))
    b = built.table.batch(sample, rows, built.store)
    c = b.content
    assert c is not None and c.context is not None
    full = c.segment_mask.all(dim=1) & c.modality_mask.all(dim=1)
    keep = torch.nonzero(full).squeeze(1)
    if len(keep) > max_buffers:
        keep = keep[torch.from_numpy(np.sort(rng.choice(len(keep), max_buffers, replace=False)))]
    pool = _take(c, keep).to(device)
    if pool.batch_size < 4:
        return {"buffers": int(pool.batch_size)}
    assert pool.context is not None
    cat = pool.context.argmax(dim=1).cpu().numpy()
    author = pool.author_ids.cpu().numpy()
    enc.eval()

    def var_of(batch: SegmentBatch) -> np.ndarray:
        out = []
        for s in range(0, batch.batch_size, 512):
            part = _take(batch, torch.arange(s, min(s + 512, batch.batch_size), device=device))
            out.append(enc.encode(part, targets=False).logvar.exp().mean(dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    pure = var_of(pool)
    n = pool.batch_size
    cut = pool.n_segments // 2
    result: dict[str, Any] = {"buffers": int(n), "pure": float(pure.mean())}
    for kind in ("cross", "same"):
        i = rng.integers(0, n, 8 * n_pairs)
        j = rng.integers(0, n, 8 * n_pairs)
        ok = (author[i] != author[j]) & (
            (cat[i] != cat[j]) if kind == "cross" else (cat[i] == cat[j])
        )
        i, j = i[ok][:n_pairs], j[ok][:n_pairs]
        if not len(i):
            continue
        ti, tj = torch.from_numpy(i).to(device), torch.from_numpy(j).to(device)
        spliced = var_of(_splice(_take(pool, ti), _take(pool, tj), cut))
        parents = 0.5 * (pure[i] + pure[j])
        result[kind] = {
            "pairs": int(len(i)),
            "spliced": float(spliced.mean()),
            "parents": float(parents.mean()),
            "ratio": float(spliced.mean() / parents.mean()),
            "share_above_parents": float((spliced > parents).mean()),
        }
    if "cross" in result and "same" in result:
        result["cross_over_same"] = result["cross"]["spliced"] / result["same"]["spliced"]
    return result


def _bce(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def heldout_adaptation(
    run: VBFRun,
    built: BuiltExamples,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    category: str,
    meta: MetaConfig,
    seed: int,
) -> dict[str, Any]:
    """Adapt `run`'s encoder to a category it never saw (eqs. 20-21) from `meta.repeats` support
    sets of `meta.support` interactions from the category's training days; score its test-day
    impressions before and after. The adaptation runs with the training-time logit offset
    (0, as in meta-training); scores use the served, calibrated one."""
    t = built.table
    names = np.array([c or "" for c in t.category_names(np.arange(len(t)))], dtype=object)
    pool = train_idx[names[train_idx] == category]
    query = test_idx[names[test_idx] == category]
    y = t.column("labels")[query, _GIFT]
    users, items = t.column("user")[query], t.column("author")[query]
    if not len(query) or not (t.column("labels")[pool, _GIFT] > 0).any():
        return {"query": int(len(query)), "skipped": "no query or no positive to adapt on"}
    model = run.model
    device = next(model.parameters()).device
    rows = rows_for(model)
    before = _scores(model, built, query)
    m_before = evaluate_scores(users, items, y, before)
    after_metrics: list[dict[str, float]] = []
    rng = np.random.default_rng([seed, 3])
    offset = model.logit_offset.clone()
    for _ in range(meta.repeats):
        support = built.table.batch(_support(built, pool, meta, rng), rows, built.store).to(device)
        with torch.no_grad():
            model.logit_offset.zero_()
        try:
            adapted = run.trainer.adapt(support.content, support)  # type: ignore[arg-type]
        finally:
            with torch.no_grad():
                model.logit_offset.copy_(offset)
        p = _scores(model, built, query, encoder=adapted)
        after_metrics.append({**evaluate_scores(users, items, y, p), "bce": _bce(y, p)})
    after = {k: float(np.mean([m[k] for m in after_metrics])) for k in after_metrics[0]}
    return {
        "query": int(len(query)),
        "query_positives": int(y.sum()),
        "support": meta.support,
        "support_positives": meta.support_positives,
        "repeats": meta.repeats,
        "before": {**{k: m_before[k] for k in ("auc", "uauc", "gauc")}, "bce": _bce(y, before)},
        "after": {k: after[k] for k in ("auc", "uauc", "gauc", "bce")},
    }


@torch.no_grad()
def exploration(
    model: GTRModel,
    built: BuiltExamples,
    calib_idx: np.ndarray,
    test_idx: np.ndarray,
    seed: int,
    batch_size: int = 2048,
) -> dict[str, Any]:
    """Uncertainty-guided sampling (the paper's exploration): threshold calibrated to the top
    20 % posterior variance over the buffers of `calib_idx`; explored buffers score with the max
    (and the mean) over 8 sampled strategies, the rest with the mean strategy."""
    enc = model.content
    if not isinstance(enc, VBFEncoder):
        raise ValueError("needs a VBF++ content encoder")
    device = next(model.parameters()).device
    rows = rows_for(model)
    model.eval()
    calib = [
        built.table.batch(calib_idx[s : s + batch_size], rows, built.store).to(device).content
        for s in range(0, len(calib_idx), batch_size)
    ]
    thr = enc.calibrate_exploration([c for c in calib if c is not None])
    gen = torch.Generator(device=device).manual_seed(seed)
    mean_s, max_s, avg_s, explored = [], [], [], []
    for s in range(0, len(test_idx), batch_size):
        b = built.table.batch(test_idx[s : s + batch_size], rows, built.store).to(device)
        assert b.content is not None and b.content_index is not None
        up = enc.predict_with_uncertainty(b.content, generator=gen)
        base = model(b, content_embedding=up.mean).logits["gift"]  # (B,)
        samples = torch.stack(
            [
                model(b, content_embedding=up.samples[:, k]).logits["gift"]
                for k in range(up.samples.shape[1])
            ],
            dim=1,
        )  # (B, S)
        mask = up.explore_mask[b.content_index]
        mean_s.append(torch.sigmoid(base).double().cpu().numpy())
        max_s.append(
            torch.sigmoid(explore_scores(base, samples, mask, "max")).double().cpu().numpy()
        )
        avg_s.append(
            torch.sigmoid(explore_scores(base, samples, mask, "mean")).double().cpu().numpy()
        )
        explored.append(mask.cpu().numpy())
    t = built.table
    users, items = t.column("user")[test_idx], t.column("author")[test_idx]
    y = t.column("labels")[test_idx, _GIFT]
    out: dict[str, Any] = {
        "threshold": thr,
        "explored_share": float(np.concatenate(explored).mean()),
    }
    for name, sc in (("mean", mean_s), ("explore_max", max_s), ("explore_mean", avg_s)):
        m = evaluate_scores(users, items, y, np.concatenate(sc))
        out[name] = {k: m[k] for k in ("auc", "uauc", "gauc", "recall@10", "ndcg@10")}
    return out


# ----------------------------------------------------------------------------- the job


def _simulate(job: VBFEvalJob, log: Callable[[str], None]) -> Path:
    from mmbee.simulator.simulate import simulate

    logdir = Path(job.out) / "log"
    if (logdir / "mmbee_world.json").exists():
        return logdir
    log(f"simulating {job.preset} world into {logdir}")
    simulate(
        logdir,
        preset_name=job.preset,
        seed=job.sim_seed,
        days=job.days,
        n_users=job.n_users,
        n_streamers=job.n_streamers,
        text_embeddings=True,
    )
    return logdir


def _manifest(logdir: Path) -> dict[str, Any]:
    return dict(json.loads((logdir / "mmbee_world.json").read_text()))


def _carriers(manifest: dict[str, Any]) -> dict[str, str]:
    return dict(manifest.get("signal_modality", {}))


def _world(manifest: dict[str, Any]) -> dict[str, Any]:
    """The simulated world as the log's manifest describes it (also for `--logdir`)."""
    cfg = manifest.get("config", {})
    return {
        "preset": manifest.get("preset"),
        "users": cfg.get("n_users"),
        "streamers": cfg.get("n_streamers"),
        "days": cfg.get("days"),
        "sim_seed": manifest.get("seed"),
    }


def _mean_std(rows: Sequence[dict[str, float]], keys: Sequence[str]) -> dict[str, float]:
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    if len(rows) > 1:
        out.update({k + "_std": float(np.std([r[k] for r in rows])) for k in keys})
    return out


def _mean_fusion(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Fusion reports of several seeds averaged (alphas, variance), `follows` recomputed."""
    cats: dict[str, Any] = {}
    for cat in per_seed[0]["categories"]:
        rows = [r["categories"][cat] for r in per_seed if cat in r["categories"]]
        alpha = np.mean([r["alpha"] for r in rows], axis=0)
        top = MODALITIES[int(alpha.argmax())]
        cats[cat] = {
            "alpha": [float(v) for v in alpha],
            "alpha_std_seeds": [float(v) for v in np.std([r["alpha"] for r in rows], axis=0)],
            "streams": rows[0]["streams"],
            "carrier": rows[0]["carrier"],
            "top": top,
            "follows": top == rows[0]["carrier"],
            "follows_per_seed": [r["follows"] for r in rows],
            "posterior_var": float(np.mean([r["posterior_var"] for r in rows])),
        }
    relative = {
        m: float(np.mean([r["relative"][m] for r in per_seed if m in r["relative"]]))
        for m in MODALITIES
        if any(m in r["relative"] for r in per_seed)
    }
    return {
        "categories": cats,
        "absolute": float(np.mean([c["follows"] for c in cats.values()])),
        "absolute_per_seed": [r["absolute"] for r in per_seed],
        "relative": relative,
    }


def _mean_nested(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Element-wise mean of dicts of floats (nested), keeping non-float leaves of the first."""
    out: dict[str, Any] = {}
    for k, v in rows[0].items():
        if isinstance(v, dict):
            out[k] = _mean_nested([r[k] for r in rows if k in r])
        elif isinstance(v, float):
            out[k] = float(np.mean([r[k] for r in rows if k in r]))
        else:
            out[k] = v
    return out


def run_vbf_eval(job: VBFEvalJob, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Simulate (or take) a log, build examples once, train every row for every seed, run the
    VBF++ diagnostics, write `vbf.json`, `vbf.md` and `vbf.png` into `job.out`; returns the report."""
    torch.set_num_threads(job.threads)
    t_start = time.perf_counter()
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = [_variant(n) for n in job.variants]
    logdir = job.logdir or _simulate(job, log)
    manifest = _manifest(logdir)
    carriers = _carriers(manifest)
    built = load_or_build(logdir, job.build, out / "cache", job.progress, log)
    train_idx, test_idx = split_by_time(built, job.test_days)
    labels = built.table.column("labels")[:, _GIFT]
    log(
        f"examples {len(built.table)}: train {len(train_idx)} ({int(labels[train_idx].sum())} "
        f"positive), test {len(test_idx)} ({int(labels[test_idx].sum())} positive)"
    )
    metrics: dict[str, dict[str, float]] = dict(test_report(built, test_idx, None))
    timing: dict[str, dict[str, float]] = {}
    fusion: dict[str, Any] = {}
    fusion_init: dict[str, Any] = {}
    variance: dict[str, Any] = {}
    explore: list[dict[str, Any]] = []
    train_cfg = replace(job.train, progress=job.progress)
    for v in variants:
        per_seed: list[dict[str, float]] = []
        speeds: list[float] = []
        seconds = 0.0
        fusion_seeds: list[dict[str, Any]] = []
        var_seeds: list[dict[str, Any]] = []
        for seed in range(job.seeds):
            tc = replace(train_cfg, seed=job.train.seed + seed)
            cfg = _model_config(built, v, job.elbo_weight)
            if v.is_vbf:
                run = train_vbf(
                    cfg,
                    built,
                    train_idx,
                    tc,
                    _vbf_train_config(job.vbf_train, v),
                    job.meta if v.meta else None,
                )
                model, speed, secs = run.model, run.samples_per_s, run.seconds
            else:
                res = train_model(cfg, built.table, built.store, train_idx, tc)
                model, speed, secs = res.model, res.samples_per_s, res.seconds
            scores = score_table(model, built.table, built.store, test_idx)
            per_seed.append(test_report(built, test_idx, scores)["test"])
            speeds.append(speed)
            seconds += secs
            if v.is_vbf:
                diag = encoder_diagnostics(model, built, test_idx)
                fusion_seeds.append(fusion_by_category(built, test_idx, diag, carriers))
                if v.name == "vbf++" and not fusion_init:
                    # the same seeded model before any training: what training moved
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(tc.seed)
                        untrained = GTRModel(cfg).eval()
                    d0 = encoder_diagnostics(untrained, built, test_idx)
                    fusion_init = fusion_by_category(built, test_idx, d0, carriers)
                if model.content.config.variational:  # type: ignore[union-attr]
                    rng = np.random.default_rng([tc.seed, 4])
                    var_seeds.append(mixed_vs_pure(model, built, test_idx, job.mixed_pairs, rng))
                if job.explore and v.name == "vbf++":
                    calib = np.sort(
                        np.random.default_rng([tc.seed, 5]).choice(
                            train_idx, min(4096, len(train_idx)), replace=False
                        )
                    )
                    explore.append(exploration(model, built, calib, test_idx, tc.seed))
        metrics[v.name] = _mean_std(per_seed, METRICS)
        timing[v.name] = {"train_samples_per_s": float(np.median(speeds)), "train_seconds": seconds}
        if fusion_seeds:
            fusion[v.name] = _mean_fusion(fusion_seeds)
        if var_seeds:
            variance[v.name] = _mean_nested(var_seeds)
        m = metrics[v.name]
        log(
            f"{v.name:14s} AUC {m['auc']:.4f}  UAUC {m['uauc']:.4f}  GAUC {m['gauc']:.4f}  "
            f"({timing[v.name]['train_samples_per_s']:.0f} samples/s)"
        )
    heldout = _run_heldout(job, built, train_idx, test_idx, train_cfg, log)
    report: dict[str, Any] = {
        "logdir": str(logdir),
        "world": _world(manifest),
        "variants": [v.name for v in variants],
        "seeds": job.seeds,
        "examples": {
            "train": int(len(train_idx)),
            "test": int(len(test_idx)),
            "train_positives": int(labels[train_idx].sum()),
            "test_positives": int(labels[test_idx].sum()),
            "build": built.stats,
        },
        "config": {
            "train": job.train.to_dict(),
            "vbf_train": {**asdict(job.vbf_train), "lr": job.train.lr},
            "elbo_weight": job.elbo_weight,
            "meta": asdict(job.meta),
            "holdout": list(job.holdout),
            "rows": {
                v.name: {"vbf": v.vbf, "vbf_train": v.vbf_train, "meta": v.meta}
                for v in variants
                if v.is_vbf
            },
        },
        "carriers": carriers,
        "metrics": metrics,
        "timing": timing,
        "fusion": fusion,
        "fusion_init": fusion_init,
        "variance": variance,
        "heldout": heldout,
        "exploration": _mean_nested(explore) if explore else {},
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    (out / "vbf.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "vbf.md").write_text("# VBF++ on the simulator\n\n" + markdown_report(report))
    plot_report(report, out / "vbf.png")
    log(
        f"wrote {out / 'vbf.md'}, {out / 'vbf.png'}, {out / 'vbf.json'} ({report['seconds']:.0f} s)"
    )
    return report


def _run_heldout(
    job: VBFEvalJob,
    built: BuiltExamples,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    train_cfg: TrainConfig,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Retrain the `holdout_variants` without the `holdout` categories and adapt to each."""
    if not job.holdout or not job.holdout_variants:
        return {}
    t = built.table
    names = np.array([c or "" for c in t.category_names(np.arange(len(t)))], dtype=object)
    seen = train_idx[~np.isin(names[train_idx], list(job.holdout))]
    result: dict[str, Any] = {}
    for name in job.holdout_variants:
        v = _variant(name)
        if not v.is_vbf:
            raise ValueError(f"held-out adaptation needs a VBF++ variant, got {name!r}")
        per_cat: dict[str, list[dict[str, Any]]] = {c: [] for c in job.holdout}
        for seed in range(job.seeds):
            tc = replace(train_cfg, seed=job.train.seed + seed)
            cfg = _model_config(built, v, job.elbo_weight)
            vt = _vbf_train_config(job.vbf_train, v)
            run = train_vbf(cfg, built, seen, tc, vt, job.meta if v.meta else None)
            for cat in job.holdout:
                per_cat[cat].append(
                    heldout_adaptation(run, built, train_idx, test_idx, cat, job.meta, tc.seed)
                )
        result[name] = {c: _mean_nested(rows) for c, rows in per_cat.items()}
        for c, r in result[name].items():
            if "after" in r:
                log(
                    f"held-out {c:10s} {name:10s} BCE {r['before']['bce']:.4f} -> "
                    f"{r['after']['bce']:.4f}  AUC {r['before']['auc']:.4f} -> {r['after']['auc']:.4f}"
                )
    return result


# ----------------------------------------------------------------------------- reports


def summary_json(report: dict[str, Any]) -> dict[str, Any]:
    """The one object `--json` prints: each row's and the references' AUC, UAUC, GAUC, whether the
    fusion weights follow the carrier, the mixed/pure variance ratio, and held-out BCEs."""
    rows = [*report["variants"], "popularity", "oracle", "observable_oracle"]
    out: dict[str, Any] = {
        name: {m: round(report["metrics"][name][m], 6) for m in ("auc", "uauc", "gauc")}
        for name in rows
        if name in report["metrics"]
    }
    for name, f in report["fusion"].items():
        out[name]["fusion_follows_carrier"] = round(f["absolute"], 4)
        cross = report["variance"].get(name, {}).get("cross")
        if cross:
            out[name]["mixed_over_parents_var"] = round(cross["ratio"], 4)
    for name, cats in report["heldout"].items():
        for cat, r in cats.items():
            if "after" in r:  # held-out rows need not be main-table rows (e.g. vbf++-ml)
                out.setdefault(name, {})[f"heldout_{cat}_bce"] = [
                    round(r["before"]["bce"], 6),
                    round(r["after"]["bce"], 6),
                ]
    return out


def plot_report(report: dict[str, Any], path: Path) -> None:
    """vbf.png: AUC / UAUC / GAUC per row (error bars: std over seeds) and, per VBF++ row with
    fusion weights, the mean alpha per category with the signal-carrying modality marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in report["variants"] if n in report["metrics"]]
    fusions = [n for n in ("vbf++", "vbf++-ve") if n in report["fusion"]]
    fig, axes = plt.subplots(
        1, 3 + len(fusions), figsize=(4.2 * (3 + len(fusions)), 4.0), squeeze=False
    )
    for ax, k in zip(axes[0], ("auc", "uauc", "gauc"), strict=False):
        m = [report["metrics"][n][k] for n in names]
        e = [report["metrics"][n].get(k + "_std", 0.0) for n in names]
        ax.bar(range(len(names)), m, yerr=e, color="tab:blue", capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        lo = min(v - d for v, d in zip(m, e, strict=True))
        hi = max(v + d for v, d in zip(m, e, strict=True))
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
        ax.set_title(k.upper())
    colors = {"visual": "tab:orange", "speech": "tab:green", "comments": "tab:purple"}
    for ax, name in zip(axes[0][3:], fusions, strict=True):
        cats = report["fusion"][name]["categories"]
        xs = np.arange(len(cats))
        for j, mod in enumerate(MODALITIES):
            ax.bar(
                xs + (j - 1) * 0.27,
                [c["alpha"][j] for c in cats.values()],
                width=0.27,
                color=colors.get(mod),
                label=mod,
            )
        labels = [f"{cat}\n({c['carrier']})" for cat, c in cats.items()]
        ax.set_xticks(xs, labels, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{name}: alpha per category (carrier)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown_report(report: dict[str, Any]) -> str:
    """The report as markdown tables: main metrics, fusion weights, variance, held-out, exploration."""
    w, ex = report["world"], report["examples"]
    lines = [
        f"World: preset {w['preset']}, {w['users']} users x {w['streamers']} streamers x "
        f"{w['days']} days, simulator seed {w['sim_seed']}; {ex['train']} training impressions "
        f"({ex['train_positives']} gifted), {ex['test']} test ({ex['test_positives']} gifted); "
        f"{report['seeds']} training seed(s) per row (mean ± std over seeds); "
        f"{report['seconds']:.0f} s wall in all.",
        "",
        "| row | AUC | UAUC | GAUC | Recall@10 | NDCG@10 | samples/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in [*report["variants"], "popularity", "observable_oracle", "oracle"]:
        m = report["metrics"].get(name)
        if m is None:
            continue

        def cell(k: str, m: dict[str, float] = m) -> str:
            s = f"{m[k]:.4f}"
            return s + (f" ± {m[k + '_std']:.4f}" if k + "_std" in m else "")

        speed = report["timing"].get(name, {}).get("train_samples_per_s")
        lines.append(
            f"| {name} | "
            + " | ".join(cell(k) for k in METRICS)
            + f" | {'' if speed is None else f'{speed:.0f}'} |"
        )
    lines.append("")
    for name, f in report["fusion"].items():
        lines += [
            f"Fusion weights of `{name}` (mean alpha over streams, buffers with all three "
            f"modalities; visual / speech / comments):",
            "",
            "| category | carrier | alpha visual | alpha speech | alpha comments | top | follows | "
            "streams | posterior var |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for cat, c in f["categories"].items():
            a = c["alpha"]
            lines.append(
                f"| {cat} | {c['carrier']} | {a[0]:.3f} | {a[1]:.3f} | {a[2]:.3f} | {c['top']} | "
                f"{'yes' if c['follows'] else 'no'} | {c['streams']} | {c['posterior_var']:.4f} |"
            )
        rel = ", ".join(f"{m} {v:+.3f}" for m, v in f["relative"].items())
        lines += [
            "",
            f"Carrier is the top weight in {f['absolute']:.0%} of categories; alpha_m in the "
            f"categories m carries minus elsewhere: {rel}.",
            "",
        ]
        f0 = report.get("fusion_init", {})
        if name == "vbf++" and f0.get("categories"):
            init = "; ".join(
                f"{cat} " + "/".join(f"{a:.3f}" for a in c["alpha"])
                for cat, c in f0["categories"].items()
            )
            lines += [f"The same seeded model untrained (first seed), alpha: {init}.", ""]
    if report["variance"]:
        lines += [
            "| row | pure | mixed (2 categories) | ratio to its parents | same-category splice | "
            "ratio | mixed / same |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, v in report["variance"].items():
            cross, same = v.get("cross", {}), v.get("same", {})
            if not cross or not same:
                continue
            lines.append(
                f"| {name} | {v['pure']:.4f} | {cross['spliced']:.4f} | {cross['ratio']:.3f} | "
                f"{same['spliced']:.4f} | {same['ratio']:.3f} | {v.get('cross_over_same', 0):.3f} |"
            )
        lines.append("")
    if report["heldout"]:
        lines += [
            "| trained as | held-out category | query (positives) | BCE before | BCE after | "
            "AUC before | AUC after | GAUC before | GAUC after |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, cats in report["heldout"].items():
            for cat, r in cats.items():
                if "after" not in r:
                    lines.append(f"| {name} | {cat} | {r.get('query', 0)} | skipped | | | | | |")
                    continue
                b, a = r["before"], r["after"]
                lines.append(
                    f"| {name} | {cat} | {r['query']} ({r['query_positives']}) | {b['bce']:.5f} | "
                    f"{a['bce']:.5f} | {b['auc']:.4f} | {a['auc']:.4f} | {b['gauc']:.4f} | "
                    f"{a['gauc']:.4f} |"
                )
        lines.append("")
    ex = report.get("exploration")
    if ex:
        lines += [
            f"Exploration (vbf++; {ex['explored_share']:.1%} of test impressions explored):",
            "",
            "| scoring | AUC | UAUC | GAUC | Recall@10 | NDCG@10 |",
            "|---|---|---|---|---|---|",
        ]
        for k in ("mean", "explore_max", "explore_mean"):
            m = ex[k]
            lines.append(f"| {k} | " + " | ".join(f"{m[c]:.4f}" for c in METRICS) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"
