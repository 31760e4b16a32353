"""Training wrapper of the GTR model: the loss, the seeded loop, checkpoints, batched scoring.

The loss is binary cross-entropy per task (SIM: gift; MMoE: watch, comment and gift, weighted
by `task_weights`), plus lambda * GraphCL's L_NCE when GIE is on (MMBee Algorithm 1:
L = L_CE + lambda L_NCE), plus any auxiliary loss the content encoder returns. The model itself
holds no loss: serving calls `GTRModel.predict`. A content encoder with its own objective (VBF++)
trains in the same loop through `train_model(step=...)`: a `TrainStep` replaces the AdamW step.

Example:
    >>> from mmbee.scorer.gtr import GTRModel, config_for_variant
    >>> from mmbee.scorer.batch import GTRBatch
    >>> import torch
    >>> m = GTRModel(config_for_variant("sim", dim=8, user_rows=16, author_rows=16, hidden=(8,)))
    >>> b = GTRBatch.empty_like_for_tests(4, history=3, n=2)
    >>> b.labels = torch.zeros(4, 3)
    >>> total, parts = gtr_loss(m, b, TrainConfig())
    >>> sorted(parts)
    ['gift', 'total']
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbee.encoders.base import SegmentBatch
from mmbee.scorer.batch import TASKS, GTRBatch
from mmbee.scorer.dataset import ExampleTable, Rows
from mmbee.scorer.features import MemorySegmentStore
from mmbee.scorer.gtr import GTRConfig, GTRModel, save_checkpoint

__all__ = [
    "TrainConfig",
    "TrainResult",
    "gtr_loss",
    "make_optimizer",
    "train_step",
    "TrainStep",
    "AdamWStep",
    "impression_losses",
    "ContentRecLoss",
    "rows_for",
    "resolve_device",
    "train_model",
    "score_table",
    "validation_split",
    "validation_loss",
    "freeze_for_stage2",
]


@dataclass(frozen=True)
class TrainConfig:
    """How a GTR model is trained.

    Attributes:
        epochs: passes over the training examples.
        batch_size: impressions per step.
        lr, weight_decay: AdamW settings.
        wide_lr_mult: learning-rate factor of the wide (linear) term: its weights must travel
            to O(1) values (log-rate coefficients) within one epoch of a few hundred steps.
        task_weights: BCE weight of watch, comment, gift (MMoE uses all three; SIM only gift).
        nce_weight: lambda of GraphCL's L_NCE (GIE variants).
        aux_weight: weight of the content encoder's auxiliary losses.
        negative_rate: share of negative (no gift) impressions kept per epoch, drawn afresh each
            epoch; positives are always kept. After training the gift logit is shifted by
            log(negative_rate), so predicted probabilities stay calibrated. 1.0 keeps all.
        seed: seeds initialisation and the shuffling order.
        device: "auto" (CUDA when present), "cpu" or "cuda".
        max_seconds: stop early after this much training time (None: no limit).
        wide_init_steps: L-BFGS iterations of a logistic-regression warm start of the wide term
            on the dense counters and match counts of every training impression (0: start the
            wide term at zero). One epoch of minibatch steps leaves the linear part far from
            its optimum; the deep parts then learn the residual.
        wide_init_l2: L2 penalty of that warm start (per example, on the weights).
        prior_init_examples: for a content encoder with a k-means-initialised prior (VBF++'s
            context-aware mixture prior), how many training impressions' buffers feed the
            k-means before training (0: keep the encoder's own initialisation).
        stage2_epochs: epochs of a second stage that trains only the content and graph
            branches and the wide term, without their id embedding tables (`freeze_for_stage2`):
            one epoch leaves those branches barely trained, while the id tables and the base
            overfit from a second pass on ~1 % positives; 0 = no second stage.
        stage2_lr: AdamW learning rate of the second stage.
        stage2_branches: which branches the second stage trains ("content", "graph"). Only
            the content branch by default: GIE's overfits in its first stage-2 epoch on the
            simulator, and training it jointly cut MFQ's gain (docs/scorer.md, "Two stages").
        val_days: the last `val_days` days of the training impressions are held out as a
            validation split (never the test days): both stages train on the rest, and the
            second stage stops early on the validation log loss, keeping its best epoch. 0 = no
            split (the second stage then runs all its epochs).
        patience: second-stage epochs without a better validation loss before it stops.
        progress: show a tqdm progress bar.

    Example:
        >>> TrainConfig(epochs=1).batch_size
        512
    """

    epochs: int = 1
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-6
    wide_lr_mult: float = 10.0
    task_weights: tuple[float, float, float] = (0.2, 0.2, 1.0)
    nce_weight: float = 0.0
    aux_weight: float = 1.0
    negative_rate: float = 0.25
    seed: int = 0
    device: str = "auto"
    max_seconds: float | None = None
    wide_init_steps: int = 200
    wide_init_l2: float = 1e-5
    prior_init_examples: int = 4096
    stage2_epochs: int = 3
    stage2_lr: float = 3e-3
    stage2_branches: tuple[str, ...] = ("content",)
    val_days: float = 0.25
    patience: int = 1
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoints and reports."""
        d = asdict(self)
        d["task_weights"] = list(self.task_weights)
        d["stage2_branches"] = list(self.stage2_branches)
        return d


@dataclass
class TrainResult:
    """What `train_model` returns.

    Attributes:
        model: the trained model (eval mode, on the training device).
        losses: mean training loss parts per epoch.
        samples: impressions seen; seconds: wall time of the optimisation loop.
        device: where it ran.
        val_losses: validation log loss before the second stage and after each of its epochs
            (empty without a validation split); best_stage2_epoch: the epoch kept (0 = none).
    """

    model: GTRModel
    losses: list[dict[str, float]] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    val_losses: list[float] = field(default_factory=list)
    best_stage2_epoch: int = 0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def rows_for(model: GTRModel) -> Rows:
    """The table sizes a batch for `model` must be cut with."""
    c = model.config
    return Rows(
        user_rows=c.user_rows,
        author_rows=c.author_rows,
        content_author_rows=model.content_author_rows,
        with_content=model.content is not None,
        categories=tuple(c.categories),
    )


def impression_losses(
    model: GTRModel,
    batch: GTRBatch,
    task_weights: tuple[float, float, float] = (0.2, 0.2, 1.0),
    content_embedding: Tensor | None = None,
) -> Tensor:
    """Per-impression recommendation loss: sum over the model's tasks of weight x BCE, (B,).

    `content_embedding` (U, content.out_dim) replaces the content encoder's output (see
    `GTRModel.forward`). No auxiliary losses are included.
    """
    if batch.labels is None:
        raise ValueError("training needs labels")
    out = model(batch, content_embedding=content_embedding)
    weights = dict(zip(TASKS, task_weights, strict=True))
    total = torch.zeros(batch.batch_size, device=batch.labels.device)
    for task, logit in out.logits.items():
        y = batch.labels[:, TASKS.index(task)]
        total = total + weights[task] * F.binary_cross_entropy_with_logits(
            logit, y, reduction="none"
        )
    return total


class ContentRecLoss:
    """The GTR scorer as VBF++'s recommendation loss: `rec_loss_fn(embedding, batch) -> (U,)`.

    `VBFTrainer(encoder, rec_loss_fn)` computes the content embedding of a `SegmentBatch`
    itself and asks for a per-item loss. Here an item is one content buffer of a `GTRBatch`
    (`batch.content`, U buffers); its loss is the mean `impression_losses` over the impressions
    that see that buffer (`batch.content_index`). `parameters()` are the scorer's weights
    without its content encoder (the trainer owns those), for `rec_parameters=`.

    Example:
        >>> # model = GTRModel(config_for_variant("sim_mfq", content_encoder="vbf++", ...))
        >>> # loss = ContentRecLoss(model)
        >>> # trainer = VBFTrainer(model.content, loss, rec_parameters=loss.parameters())
        >>> # trainer.train_step(gtr_batch.content, gtr_batch)
    """

    def __init__(
        self, model: GTRModel, task_weights: tuple[float, float, float] = (0.2, 0.2, 1.0)
    ) -> None:
        if model.content is None:
            raise ValueError(f"model {model.config.variant!r} has no content encoder")
        self.model = model
        self.task_weights = task_weights

    def parameters(self) -> list[nn.Parameter]:
        """The scorer's parameters except its content encoder's."""
        return [p for n, p in self.model.named_parameters() if not n.startswith("content.")]

    def impression_losses(self, embedding: Tensor, batch: GTRBatch) -> Tensor:
        """Per-impression losses (B,) given the buffers' embeddings (U, out_dim)."""
        return impression_losses(self.model, batch, self.task_weights, embedding)

    def __call__(self, embedding: Tensor, batch: GTRBatch) -> Tensor:
        """Per-buffer losses (U,): the mean over each buffer's impressions (0 for none)."""
        if batch.content_index is None:
            raise ValueError("the batch carries no content_index")
        per = self.impression_losses(embedding, batch)  # (B,)
        u = embedding.shape[0]
        total = torch.zeros(u, dtype=per.dtype, device=per.device).index_add(
            0, batch.content_index, per
        )
        count = torch.zeros(u, dtype=per.dtype, device=per.device).index_add(
            0, batch.content_index, torch.ones_like(per)
        )
        return total / count.clamp_min(1.0)  # (U,)


def gtr_loss(
    model: GTRModel, batch: GTRBatch, config: TrainConfig
) -> tuple[Tensor, dict[str, float]]:
    """Total loss of a labeled batch and its parts (as floats, for logging)."""
    if batch.labels is None:
        raise ValueError("training needs labels")
    out = model(batch)
    weights = dict(zip(TASKS, config.task_weights, strict=True))
    total = torch.zeros((), device=batch.labels.device)
    parts: dict[str, float] = {}
    for task, logit in out.logits.items():
        y = batch.labels[:, TASKS.index(task)]
        loss = F.binary_cross_entropy_with_logits(logit, y)
        total = total + weights[task] * loss
        parts[task] = float(loss.detach())
    for name, loss in out.aux_losses.items():
        w = config.nce_weight if name == "graphcl_nce" else config.aux_weight
        total = total + w * loss
        parts[name] = float(loss.detach())
    parts["total"] = float(total.detach())
    return total, parts


def make_optimizer(model: GTRModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the model, the wide (linear) part at `lr * wide_lr_mult`."""
    wide = [p for n, p in model.named_parameters() if n.startswith("wide.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("wide.")]
    groups: list[dict[str, Any]] = [
        {"params": rest},
        {"params": wide, "lr": config.lr * config.wide_lr_mult},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def train_step(
    model: GTRModel, opt: torch.optim.Optimizer, batch: GTRBatch, config: TrainConfig
) -> dict[str, float]:
    """One optimiser step on a labeled batch; returns the loss parts (floats)."""
    total, parts = gtr_loss(model, batch, config)
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return parts


class TrainStep(Protocol):
    """The optimiser step of `train_model`'s first stage, replaceable (`train_model(step=...)`).

    `train_model` builds it once the model is ready (seeded init, output bias, wide warm start,
    on the training device, train mode), then calls `init_prior` once (only for an encoder with
    a k-means-initialised prior), `start_epoch` before each epoch and the step itself per batch.
    """

    def init_prior(self, batches: Iterable[SegmentBatch]) -> None:
        """k-means initialisation of the content encoder's prior from `batches` (a seeded
        sample of training buffers, `TrainConfig.prior_init_examples`)."""
        ...

    def start_epoch(self, idx: np.ndarray) -> None:
        """The epoch's examples (after negative subsampling), before its first step."""
        ...

    def __call__(self, batch: GTRBatch) -> dict[str, float]:
        """One step on a labeled batch; returns the loss parts as floats (with "total")."""
        ...


class AdamWStep:
    """The default `TrainStep`: AdamW (`make_optimizer`, or `opt`) on `gtr_loss`.

    Example:
        >>> from mmbee.scorer.gtr import config_for_variant
        >>> m = GTRModel(config_for_variant("sim", dim=8, user_rows=16, author_rows=16))
        >>> b = GTRBatch.empty_like_for_tests(4, history=3, n=2)
        >>> b.labels = torch.zeros(4, 3)
        >>> sorted(AdamWStep(m, TrainConfig())(b))
        ['gift', 'total']
    """

    def __init__(
        self, model: GTRModel, config: TrainConfig, opt: torch.optim.Optimizer | None = None
    ) -> None:
        self.model = model
        self.config = config
        self.opt = make_optimizer(model, config) if opt is None else opt

    @torch.no_grad()
    def init_prior(self, batches: Iterable[SegmentBatch]) -> None:
        """`init_prior_from_features` of the encoder on its `prior_features` of `batches`,
        k-means seeded with `TrainConfig.seed`."""
        enc = cast(Any, self.model.content)  # an encoder with a prior (VBF++)
        feats = torch.cat([enc.prior_features(b) for b in batches])  # (N, P)
        gen = torch.Generator(device=feats.device).manual_seed(self.config.seed)
        enc.init_prior_from_features(feats, generator=gen)

    def start_epoch(self, idx: np.ndarray) -> None:
        """Nothing to prepare."""

    def __call__(self, batch: GTRBatch) -> dict[str, float]:
        return train_step(self.model, self.opt, batch, self.config)


def _batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]


def train_model(
    model_config: GTRConfig,
    table: ExampleTable,
    store: MemorySegmentStore | None,
    train_idx: np.ndarray,
    config: TrainConfig,
    checkpoint: str | PathLike[str] | None = None,
    extra_config: Mapping[str, Any] | None = None,
    on_epoch: Callable[[int, GTRModel], None] | None = None,
    step: Callable[[GTRModel], TrainStep] | None = None,
) -> TrainResult:
    """Train a fresh model of `model_config` on examples `train_idx` of `table`.

    Stage 1: `epochs` passes over everything (after the wide warm start). Stage 2
    (`stage2_epochs` > 0): more passes of the content and graph branches and the wide term's
    h_m / h_g columns only (`freeze_for_stage2`), early-stopped on the validation split
    (`val_days`, `validation_split`), keeping the best epoch (stage 1's included). Seeded (same seed, same data, same device -> same weights).
    Writes a checkpoint `{"config": {"model", "train", **extra_config}, "state_dict"}` to
    `checkpoint` after every epoch when given (and the kept one at the end).
    `on_epoch(epoch, model)` is called after each epoch of either stage (e.g. validation).
    `step(model)` builds stage 1's `TrainStep` (default: `AdamWStep`, AdamW on `gtr_loss`), e.g.
    a content encoder's own trainer; stage 2, if any, always takes AdamW steps.
    """
    from tqdm.auto import tqdm

    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = GTRModel(model_config)
    if not 0.0 < config.negative_rate <= 1.0:
        raise ValueError(f"negative_rate must be in (0, 1], got {config.negative_rate}")
    fit_idx, val_idx = validation_split(table, np.asarray(train_idx), config.val_days)
    labels = table.column("labels")[fit_idx]
    if len(labels):
        model.init_output_bias({t: float(labels[:, i].mean()) for i, t in enumerate(TASKS)})
    model.to(device).train()
    rng = np.random.default_rng(config.seed)
    rows = rows_for(model)
    positive = table.column("labels")[fit_idx, TASKS.index("gift")] > 0
    if config.negative_rate < 1.0:
        # Train on subsampled negatives with the model's offset at 0 (see below).
        model.init_output_bias(
            {
                "gift": float(
                    positive.mean()
                    / (positive.mean() + (1 - positive.mean()) * config.negative_rate)
                )
            }
        )
    _fit_wide(model, table, fit_idx, config)
    first_step = AdamWStep(model, config) if step is None else step(model)
    _init_content_prior(model, table, store, fit_idx, rows, config, device, first_step)
    result = TrainResult(model=model, device=str(device))
    per_epoch = int(positive.sum() + round((~positive).sum() * config.negative_rate))
    steps_per_epoch = math.ceil(per_epoch / config.batch_size)
    bar = tqdm(
        total=(config.epochs + config.stage2_epochs) * steps_per_epoch,
        desc=f"train {model_config.variant}",
        disable=not config.progress,
        unit="batch",
        leave=False,
    )
    t0 = time.perf_counter()
    deadline = None if config.max_seconds is None else t0 + config.max_seconds

    def run_epochs(step: TrainStep, epochs: int, first: int) -> bool:
        """Train `epochs` epochs; after each, call `after(epoch)`; True when out of time."""
        for epoch in range(first, first + epochs):
            sums: dict[str, float] = {}
            steps = 0
            epoch_idx = fit_idx
            if config.negative_rate < 1.0:
                keep = positive | (rng.random(len(fit_idx)) < config.negative_rate)
                epoch_idx = fit_idx[keep]
            out_of_time = False
            step.start_epoch(epoch_idx)
            for chunk in _batches(len(epoch_idx), config.batch_size, rng):
                batch = table.batch(epoch_idx[chunk], rows, store).to(device)
                parts = step(batch)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                steps += 1
                result.samples += len(chunk)
                bar.update(1)
                bar.set_postfix(loss=f"{parts['total']:.4f}", refresh=False)
                if deadline is not None and time.perf_counter() > deadline:
                    out_of_time = True
                    break
            result.losses.append({k: v / max(steps, 1) for k, v in sums.items()})
            if checkpoint is not None:
                _save(checkpoint, model, config, extra_config)
            if on_epoch is not None:
                on_epoch(epoch, model)
                model.train()
            if after(epoch) or out_of_time:
                return True
        return False

    best: dict[str, Tensor] | None = None  # the kept state of stage 2's early stopping

    def keep_best() -> None:
        nonlocal best
        best = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def after(epoch: int) -> bool:
        """Stage 2's early stopping: remember the best epoch; True to stop."""
        if epoch < config.epochs or not len(val_idx):
            return False
        loss = validation_loss(model, table, store, val_idx, config.negative_rate)
        model.train()
        result.val_losses.append(loss)
        if loss < min(result.val_losses[:-1], default=float("inf")):
            keep_best()
            result.best_stage2_epoch = epoch - config.epochs + 1
            return False
        since = epoch - config.epochs + 1 - result.best_stage2_epoch
        return since >= config.patience

    try:
        stop = run_epochs(first_step, config.epochs, 0)
        params: list[Tensor] = []
        undo: Callable[[], None] | None = None
        if config.stage2_epochs > 0:
            params, undo = freeze_for_stage2(model, config.stage2_branches)
        try:
            if params and not stop:  # a base variant has no content or graph branch to train
                if len(val_idx):  # stage 1 is the epoch to beat
                    result.val_losses.append(
                        validation_loss(model, table, store, val_idx, config.negative_rate)
                    )
                    model.train()
                    keep_best()
                # no weight decay: it would also shrink the wide term's frozen columns
                opt2 = torch.optim.AdamW(params, lr=config.stage2_lr, weight_decay=0.0)
                run_epochs(AdamWStep(model, config, opt2), config.stage2_epochs, config.epochs)
                if best is not None:
                    model.load_state_dict(best)
        finally:
            if undo is not None:
                undo()
    finally:
        bar.close()
    result.seconds = time.perf_counter() - t0
    model.eval()
    _set_offset(model, config.negative_rate)
    if checkpoint is not None and result.val_losses:
        _save(checkpoint, model, config, extra_config)
        _set_offset(model, config.negative_rate)
    return result


def validation_split(
    table: ExampleTable, train_idx: np.ndarray, val_days: float
) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices: validation = the training impressions of the last `val_days`
    days before the newest training impression. Empty for 0, and when the training impressions
    span less than 4 x `val_days` (too short a log to give a quarter of it away)."""
    if val_days <= 0 or not len(train_idx):
        return train_idx, train_idx[:0]
    ts = table.column("ts")[train_idx]
    span = int(val_days * 86_400_000)
    if int(ts.max()) - int(ts.min()) < 4 * span:
        return train_idx, train_idx[:0]
    cut = int(ts.max()) - span
    return train_idx[ts <= cut], train_idx[ts > cut]


STAGE2_BRANCHES = {"content": ("content.", "content_proj."), "graph": ("gie.",)}
"""The branches the second stage can train, by the prefixes of their parameter names."""


def freeze_for_stage2(
    model: GTRModel, branches: tuple[str, ...] = tuple(STAGE2_BRANCHES)
) -> tuple[list[Tensor], Callable[[], None]]:
    """Freeze everything but the given branches (content: the encoder and its projection;
    graph: GIE) and their columns of the wide term (h_m, h_g); within the branches also the id
    embedding tables (GIE's Theta, MFQ's author queries: the embeddings with a padding row,
    row 0 = unknown id), which memorise who gifted rather than why from a second pass on ~1 %
    positives (docs/scorer.md, "Two stages"). The wide term's other columns and its bias keep
    their warm-started and stage-1 values (a hook zeroes their gradient). Returns the
    parameters left to train and a function that undoes all of it."""
    unknown = sorted(set(branches) - set(STAGE2_BRANCHES))
    if unknown:
        raise ValueError(f"unknown stage-2 branches {unknown}; valid: {sorted(STAGE2_BRANCHES)}")
    prefixes = tuple(p for b in branches for p in STAGE2_BRANCHES[b])
    ids = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Embedding) and m.padding_idx is not None
    }
    train: list[Tensor] = []
    for name, p in model.named_parameters():
        keep = name.startswith(prefixes) and id(p) not in ids
        p.requires_grad_(keep)
        if keep:
            train.append(p)
    # the wide term's side columns, in forward's order: h_m (content), then h_g (graph)
    d, start, cols = model.config.dim, model.n_fixed_wide, []
    for branch, present in (
        ("content", model.content is not None),
        ("graph", model.gie is not None),
    ):
        if present:
            if branch in branches:
                cols.append((start, start + d))
            start += d
    hooks = []
    wide = model.wide
    if wide is not None and cols:
        mask = torch.zeros_like(wide.weight)
        for a, b in cols:
            mask[:, a:b] = 1.0
        wide.weight.requires_grad_(True)
        hooks.append(wide.weight.register_hook(lambda g: g * mask))
        train.append(wide.weight)

    def undo() -> None:
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(True)

    return train, undo


@torch.no_grad()
def validation_loss(
    model: GTRModel,
    table: ExampleTable,
    store: MemorySegmentStore | None,
    idx: np.ndarray,
    negative_rate: float,
) -> float:
    """Mean gift log loss of examples `idx` under calibrated probabilities (the gift logit
    shifted by log(negative_rate), as served)."""
    saved = model.logit_offset.clone()
    _set_offset(model, negative_rate)
    try:
        p = score_table(model, table, store, idx)
    finally:
        model.logit_offset.copy_(saved)
    y = table.column("labels")[idx, TASKS.index("gift")]
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _fixed_wide_matrix(
    model: GTRModel, table: ExampleTable, idx: np.ndarray, chunk: int = 8192
) -> Tensor:
    """`model.fixed_wide_inputs` of examples `idx`, computed in chunks on the CPU: (E, W)."""
    rows = replace(rows_for(model), with_content=False)
    parts = []
    with torch.no_grad():
        for c in _batches(len(idx), chunk, None):
            parts.append(model.fixed_wide_inputs(table.batch(idx[c], rows, None)).float())
    return torch.cat(parts) if parts else torch.zeros(0, model.n_fixed_wide)


def _fit_wide(
    model: GTRModel, table: ExampleTable, train_idx: np.ndarray, config: TrainConfig
) -> None:
    """Warm start of the wide term: a logistic regression per task on its parameter-free inputs
    (`GTRModel.fixed_wide_inputs`: dense counters, match counts, graph membership) over all
    training impressions (full batch, L-BFGS), its gift bias shifted by -log(negative_rate) to
    the subsampled training distribution. The side-vector (h_m, h_g) weights stay zero.
    Deterministic (no randomness)."""
    if model.wide is None or config.wide_init_steps <= 0 or not len(train_idx):
        return
    idx = np.asarray(train_idx)
    x = _fixed_wide_matrix(model, table, idx)  # (E, W)
    labels = table.column("labels")[idx]
    y = torch.from_numpy(labels[:, [TASKS.index(t) for t in model.tasks]].astype(np.float32))
    n_in = x.shape[1]
    mean, std = x.mean(0), x.std(0).clamp_min(1e-3)
    z = (x - mean) / std  # standardised for a well-conditioned problem
    rate = y.mean(0).clamp(1e-6, 1 - 1e-6)
    w = torch.zeros(y.shape[1], n_in, requires_grad=True)
    b = torch.logit(rate).clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=config.wide_init_steps, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        logits = z @ w.T + b  # (E, T)
        loss = F.binary_cross_entropy_with_logits(logits, y) + config.wide_init_l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        weight = w / std  # back to raw inputs
        bias = b - (weight * mean).sum(1)
        if config.negative_rate < 1.0 and "gift" in model.tasks:
            bias[model.tasks.index("gift")] -= math.log(config.negative_rate)
        model.wide.weight.zero_()
        model.wide.weight[:, :n_in] = weight.to(model.wide.weight)
        model.wide.bias.copy_(bias.to(model.wide.bias))


@torch.no_grad()
def _init_content_prior(
    model: GTRModel,
    table: ExampleTable,
    store: MemorySegmentStore | None,
    train_idx: np.ndarray,
    rows: Rows,
    config: TrainConfig,
    device: torch.device,
    step: TrainStep,
) -> None:
    """k-means initialisation of a content encoder's prior (VBF++: `init_prior_from_features`)
    from the buffers of a seeded sample of training impressions, by `step.init_prior`; a no-op
    for other encoders."""
    enc = model.content
    init = getattr(enc, "init_prior_from_features", None)
    feats_of = getattr(enc, "prior_features", None)
    if enc is None or init is None or feats_of is None or config.prior_init_examples <= 0:
        return
    if getattr(getattr(enc, "config", None), "prior", "mixture") != "mixture" or not len(train_idx):
        return
    rng = np.random.default_rng([config.seed, 1])
    n = min(config.prior_init_examples, len(train_idx))
    sample = np.sort(rng.choice(train_idx, n, replace=False))
    step.init_prior(
        cast(SegmentBatch, table.batch(sample[chunk], rows, store).to(device).content)
        for chunk in _batches(n, config.batch_size, None)
    )


def _set_offset(model: GTRModel, negative_rate: float) -> None:
    """Undo negative subsampling: the odds scale by the keep rate, so the served gift logit is
    the trained one plus log(rate) (0 without subsampling)."""
    with torch.no_grad():
        model.logit_offset.zero_()
        model.logit_offset[model.tasks.index("gift")] = math.log(negative_rate)


def _save(
    path: str | PathLike[str], model: GTRModel, config: TrainConfig, extra: Mapping[str, Any] | None
) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    _set_offset(model, config.negative_rate)  # checkpoints are calibrated
    try:
        save_checkpoint(tmp, model, {"train": config.to_dict(), **dict(extra or {})})
    finally:
        _set_offset(model, 1.0)
    tmp.replace(path)  # atomic: a reader never sees a half-written checkpoint


@torch.no_grad()
def score_table(
    model: GTRModel,
    table: ExampleTable,
    store: MemorySegmentStore | None,
    idx: np.ndarray,
    batch_size: int = 2048,
) -> np.ndarray:
    """P(gift) of examples `idx` (in that order), batched, no gradients: (len(idx),) float64."""
    device = next(model.parameters()).device
    rows = rows_for(model)
    out = []
    for chunk in _batches(len(idx), batch_size, None):
        batch = table.batch(np.asarray(idx)[chunk], rows, store).to(device)
        out.append(model.predict(batch).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
