"""VBF++ training: RAR replay buffer and discriminator, the total loss, and MAML-style meta-learning.

Equation numbers are the paper's (see `mmbee.encoders.vbf` for the model):
    eq. 15  B_good = {z_i : L_rec(h_i) < tau_good}, tau_good the running 10th percentile
    eq. 16  L_disc = -E_{z~B_good} log G(z) - E_{z~q} log(1 - G(z))      (moves G only)
    eq. 17  L_adv  = -E_{z~q} log G(z)                                   (moves the encoder only)
    eqs. 18-19  L = -ELBO + lambda_rec L_rec + lambda_quality L_adv + lambda_sparse L_sparse
                    + lambda_smooth L_smooth
    eqs. 20-22  (mu_0, log sigma_0^2) = M_psi(x_new); theta' = theta - alpha grad L_support;
                min_psi E_domains L_query(theta')

The recommendation loss comes from outside: `rec_loss_fn(embedding (B, D), targets) -> (B,)`
per-item losses from a downstream predictor (the GTR scorer, or any head). Its parameters, if
it is an `nn.Module` (or passed as `rec_parameters`), are trained with the encoder.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mmbee.encoders.base import SegmentBatch
from mmbee.encoders.vbf import VBFEncoder

__all__ = [
    "VBFTrainConfig",
    "GoodStrategyBuffer",
    "Discriminator",
    "MetaLearner",
    "DomainTask",
    "VBFTrainer",
    "discriminator_loss",
    "adversarial_loss",
]

RecLossFn = Callable[[Tensor, Any], Tensor]


@dataclass(frozen=True)
class VBFTrainConfig:
    """Training hyperparameters (paper: lambda_quality 0.1, alpha_meta 0.01, Adam lr 1e-3).

    Example:
        >>> VBFTrainConfig(rar=False).lambda_quality
        0.1
    """

    lr: float = 1e-3
    disc_lr: float = 1e-3
    lambda_rec: float = 1.0
    lambda_quality: float = 0.1
    rar: bool = True
    """False: no buffer, no discriminator, no L_adv (Table 3's -RAR ablation)."""
    good_quantile: float = 0.1
    loss_history: int = 4096
    """How many recent per-item rec losses define the running percentile tau_good."""
    buffer_capacity: int = 4096
    min_buffer: int = 32
    """The discriminator and L_adv start once the buffer holds this many strategies."""
    disc_hidden: int = 64
    clip_grad_norm: float = 5.0
    meta_lr: float = 1e-3
    alpha_meta: float = 0.01
    meta_inner_steps: int = 1
    meta_first_order: bool = False
    meta_hidden: int = 64
    meta_fast_params: tuple[str, ...] = ("posterior_mu", "posterior_logvar", "fusion_head")
    """Name prefixes of the encoder parameters adapted in the inner loop (theta of eq. 21)."""
    seed: int = 0


class GoodStrategyBuffer:
    """RAR's replay buffer B_good (eq. 15): strategies z whose rec loss beat the running
    `quantile` (10th percentile) of recent per-item losses; FIFO when full.

    Example:
        >>> buf = GoodStrategyBuffer(z_dim=2, capacity=8, history=100)
        >>> buf.add(torch.randn(20, 2), torch.arange(20.0))
        2
        >>> len(buf), round(buf.threshold, 3)
        (2, 1.9)
    """

    def __init__(
        self, z_dim: int, capacity: int = 4096, history: int = 4096, quantile: float = 0.1
    ) -> None:
        self.z_dim, self.capacity, self.quantile = z_dim, capacity, quantile
        self._z = torch.empty(0, z_dim)
        self._losses: deque[float] = deque(maxlen=history)
        self.threshold = float("inf")

    def __len__(self) -> int:
        return int(self._z.shape[0])

    def add(self, z: Tensor, losses: Tensor) -> int:
        """Record `losses` (B,) in the history, then keep the z (B, Z) below tau_good. -> #kept."""
        z, losses = z.detach(), losses.detach().float()
        self._losses.extend(losses.cpu().tolist())
        self.threshold = float(torch.quantile(torch.tensor(list(self._losses)), self.quantile))
        good = z[losses.to(z.device) < self.threshold]
        if self._z.device != z.device or self._z.dtype != z.dtype:
            self._z = self._z.to(device=z.device, dtype=z.dtype)
        self._z = torch.cat([self._z, good])[-self.capacity :]
        return int(good.shape[0])

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n strategies drawn uniformly with replacement. Shapes: -> (n, Z)."""
        if len(self) == 0:
            raise ValueError("the good-strategy buffer is empty")
        idx = torch.randint(len(self), (n,), generator=generator, device=generator.device)
        return self._z[idx.to(self._z.device)]


class Discriminator(nn.Module):
    """G_xi: R^Z -> [0, 1] (eq. 16), as logits; sigmoid(logit) = P(z is a good strategy).

    Example:
        >>> Discriminator(32)(torch.zeros(4, 32)).shape
        torch.Size([4])
    """

    def __init__(self, z_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(z_dim, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, z: Tensor) -> Tensor:
        """Shapes: (N, Z) -> (N,) logits."""
        return self.net(z).squeeze(-1)


def discriminator_loss(disc: Discriminator, z_good: Tensor, z_gen: Tensor) -> Tensor:
    """Eq. 16; z_gen is detached so this loss never reaches the encoder. Shapes: (N, Z), (M, Z)."""
    # -log G(z) = softplus(-logit); -log(1 - G(z)) = softplus(logit)
    return F.softplus(-disc(z_good)).mean() + F.softplus(disc(z_gen.detach())).mean()


def adversarial_loss(disc: Discriminator, z: Tensor) -> Tensor:
    """Eq. 17 through the discriminator with detached weights: moves the encoder, never G.

    Shapes: z (B, Z) -> ().
    """
    frozen = {n: p.detach() for n, p in disc.named_parameters()}
    logits = functional_call(disc, frozen, (z,))
    return F.softplus(-logits).mean()


class MetaLearner(nn.Module):
    """M_psi (eq. 20): a domain summary (mean prior features of the support set) -> a domain-level
    posterior shift (mu_0, log sigma_0^2) added to every item's posterior. Starts at zero shift.

    Example:
        >>> mu0, lv0 = MetaLearner(10, 4)(torch.zeros(10))
        >>> mu0.shape, float(mu0.detach().abs().sum())
        (torch.Size([4]), 0.0)
    """

    def __init__(self, d_in: int, z_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.hidden = nn.Linear(d_in, hidden)
        self.out = nn.Linear(hidden, 2 * z_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, summary: Tensor) -> tuple[Tensor, Tensor]:
        """Shapes: (P,) -> (mu_0 (Z,), logvar_0 (Z,))."""
        mu0, lv0 = self.out(F.relu(self.hidden(self.norm(summary)))).chunk(2, dim=-1)
        return mu0, lv0


@dataclass
class DomainTask:
    """One few-shot domain: a support set to adapt on and a query set to judge the adaptation."""

    support: SegmentBatch
    support_targets: Any
    query: SegmentBatch
    query_targets: Any


class VBFTrainer:
    """Trains a `VBFEncoder` with the full VBF++ objective, alternating discriminator and encoder
    steps, and meta-learns few-shot domain adaptation.

    Example:
        >>> from mmbee.encoders.vbf import VBFConfig
        >>> enc = VBFEncoder(VBFConfig(d_visual=4, d_speech=4, d_comments=4, d_hidden=8))
        >>> head = nn.Linear(enc.out_dim, 1)
        >>> loss_fn = lambda h, y: F.binary_cross_entropy_with_logits(
        ...     head(h).squeeze(-1), y, reduction="none")
        >>> trainer = VBFTrainer(enc, loss_fn, rec_parameters=head.parameters())
        >>> # trainer.train_step(batch, labels); trainer.meta_train_step([DomainTask(...)])
    """

    def __init__(
        self,
        encoder: VBFEncoder,
        rec_loss_fn: RecLossFn,
        config: VBFTrainConfig | None = None,
        *,
        rec_parameters: Iterable[nn.Parameter] | None = None,
        rec_param_groups: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.config = config if config is not None else VBFTrainConfig()
        c = self.config
        self.encoder = encoder
        self.rec_loss_fn = rec_loss_fn
        if rec_parameters is None and isinstance(rec_loss_fn, nn.Module):
            rec_parameters = rec_loss_fn.parameters()
        self.rec_parameters = list(rec_parameters) if rec_parameters is not None else []
        device = next(encoder.parameters()).device
        z_dim = encoder.config.d_latent
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(c.seed)
            self.discriminator = Discriminator(z_dim, c.disc_hidden).to(device)
            self.meta_learner = MetaLearner(2 * encoder.config.d_prior_in, z_dim, c.meta_hidden).to(
                device
            )
        self.generator = torch.Generator(device=device).manual_seed(c.seed)
        self.buffer = GoodStrategyBuffer(z_dim, c.buffer_capacity, c.loss_history, c.good_quantile)
        self.fast_names = [
            n for n, _ in encoder.named_parameters() if n.startswith(tuple(c.meta_fast_params))
        ]
        if not self.fast_names:
            raise ValueError(f"no encoder parameter matches meta_fast_params={c.meta_fast_params}")
        # extra optimiser groups (e.g. a scorer term with its own learning rate)
        groups = [{**g, "params": list(g["params"])} for g in rec_param_groups]
        extra = [p for g in groups for p in g["params"]]
        self.encoder_params = list(encoder.parameters()) + self.rec_parameters + extra
        self.enc_opt = torch.optim.Adam(
            [{"params": list(encoder.parameters()) + self.rec_parameters}, *groups], lr=c.lr
        )
        self.disc_opt = torch.optim.Adam(self.discriminator.parameters(), lr=c.disc_lr)
        params = dict(encoder.named_parameters())
        self.meta_opt = torch.optim.Adam(
            [*self.meta_learner.parameters(), *(params[n] for n in self.fast_names)], lr=c.meta_lr
        )
        self.history: deque[str] = deque(maxlen=10_000)
        """Kinds of the optimiser steps taken, in order: "D" discriminator, "E" encoder, "M" meta."""
        self.disc_steps = 0

    @torch.no_grad()
    def initialise_prior(self, batches: Iterable[SegmentBatch]) -> Tensor:
        """k-means initialisation of the context-aware prior's assignment network from the prior
        features of `batches` (e.g. a sample of the training streams), before training.
        Returns the (K, P) centroids."""
        feats = torch.cat([self.encoder.prior_features(b) for b in batches])  # (N, P)
        return self.encoder.init_prior_from_features(feats, generator=self.generator)

    # ------------------------------------------------------------------ RAR + total loss

    def discriminator_step(self, z_gen: Tensor) -> float | None:
        """One step on eq. 16 against buffer samples; None while the buffer is too small."""
        c = self.config
        if not c.rar or len(self.buffer) < c.min_buffer:
            return None
        z_good = self.buffer.sample(z_gen.shape[0], self.generator)
        loss = discriminator_loss(self.discriminator, z_good, z_gen)
        self.disc_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.disc_opt.step()
        self.disc_steps += 1
        self.history.append("D")
        return float(loss.detach())

    def _base_terms(self, batch: SegmentBatch, targets: Any) -> tuple[dict[str, Tensor], Tensor]:
        """Training-mode forward: the weighted -ELBO and regulariser terms, lambda_rec L_rec, and
        the sampled strategies z (B, Z) (which also feed the replay buffer, eq. 15)."""
        c = self.config
        out = self.encoder(batch, generator=self.generator)
        per_item = self.rec_loss_fn(out.embedding, targets)  # (B,)
        if c.rar:
            self.buffer.add(out.extras["z"], per_item)
        terms = dict(out.aux_losses)
        terms["rec"] = c.lambda_rec * per_item.mean()
        return terms, out.extras["z"]

    def _with_adv(self, terms: dict[str, Tensor], z: Tensor) -> dict[str, Tensor]:
        if self.config.rar and self.disc_steps > 0:
            terms["adv"] = self.config.lambda_quality * adversarial_loss(self.discriminator, z)
        return terms

    def total_loss(self, batch: SegmentBatch, targets: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """Eqs. 18-19 on one batch with the current discriminator (training-mode forward; feeds
        the replay buffer). Returns the scalar total and its named, already weighted terms."""
        terms, z = self._base_terms(batch, targets)
        terms = self._with_adv(terms, z)
        return torch.stack(list(terms.values())).sum(), terms

    def train_step(self, batch: SegmentBatch, targets: Any) -> dict[str, float]:
        """One alternation: a discriminator step (eq. 16) on the current strategies, then an
        encoder (+ rec head) step on the total loss with the updated discriminator (eqs. 17-19).

        Returns the loss terms as floats, for logging only."""
        self.encoder.train()
        terms, z = self._base_terms(batch, targets)
        disc = self.discriminator_step(z)
        terms = self._with_adv(terms, z)
        total = torch.stack(list(terms.values())).sum()
        self.enc_opt.zero_grad(set_to_none=True)
        total.backward()
        if self.config.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.encoder_params, self.config.clip_grad_norm)
        self.enc_opt.step()
        self.history.append("E")
        log = {k: float(v.detach()) for k, v in terms.items()}
        log["total"] = float(total.detach())
        if disc is not None:
            log["disc"] = disc
        log["tau_good"] = self.buffer.threshold
        return log

    # ------------------------------------------------------------------ meta-learning

    def domain_summary(self, batch: SegmentBatch) -> Tensor:
        """M_psi's input: mean and standard deviation of the prior features over a domain's
        support set (the spread tells which modality varies, i.e. may carry signal). (2P,)."""
        x = self.encoder.prior_features(batch)  # (N, P)
        return torch.cat([x.mean(dim=0), x.std(dim=0, unbiased=False)])

    def _functional_loss(
        self,
        params: dict[str, Tensor],
        batch: SegmentBatch,
        targets: Any,
        sample: bool,
        reduce: str = "mean",
    ) -> Tensor:
        out = functional_call(
            self.encoder, params, (batch,), {"sample": sample, "generator": self.generator}
        )
        per_item = self.rec_loss_fn(out.embedding, targets)  # (B,)
        return per_item.sum() if reduce == "sum" else per_item.mean()

    def _inner_loop(
        self,
        fast: dict[str, Tensor],
        shift: dict[str, Tensor],
        batch: SegmentBatch,
        targets: Any,
        steps: int,
        lr: float,
        create_graph: bool,
    ) -> dict[str, Tensor]:
        """theta' = theta - alpha grad L_support (eq. 21), `steps` times, mean strategy."""
        for _ in range(steps):
            loss = self._functional_loss({**fast, **shift}, batch, targets, False, "sum")
            grads = torch.autograd.grad(
                loss, list(fast.values()), create_graph=create_graph, allow_unused=True
            )  # the log-variance head is unused under the mean strategy
            fast = {
                n: p if g is None else p - lr * g
                for (n, p), g in zip(fast.items(), grads, strict=True)
            }
        return fast

    def _shift(self, support: SegmentBatch) -> dict[str, Tensor]:
        mu0, lv0 = self.meta_learner(self.domain_summary(support))
        return {"domain_shift_mu": mu0, "domain_shift_logvar": lv0}

    def meta_train_step(self, tasks: Sequence[DomainTask]) -> float:
        """One outer step of eq. 22 over `tasks`: adapt on each support set (eqs. 20-21), score
        the query set with the adapted weights, update psi and the fast weights' initial values
        (second-order MAML unless `meta_first_order`). Returns the mean query loss."""
        c = self.config
        self.encoder.train()
        params = dict(self.encoder.named_parameters())
        losses = []
        for task in tasks:
            shift = self._shift(task.support)
            fast: dict[str, Tensor] = {n: params[n] for n in self.fast_names}
            fast = self._inner_loop(
                fast,
                shift,
                task.support,
                task.support_targets,
                c.meta_inner_steps,
                c.alpha_meta,
                create_graph=not c.meta_first_order,
            )
            losses.append(
                self._functional_loss({**fast, **shift}, task.query, task.query_targets, True)
            )
        loss = torch.stack(losses).mean()
        self.meta_opt.zero_grad(set_to_none=True)
        loss.backward()
        # the query loss also reaches non-fast encoder weights and the rec head; only psi and the
        # fast weights' initial values are meta-parameters here
        for p in self.encoder_params:
            if not any(p is params[n] for n in self.fast_names):
                p.grad = None
        self.meta_opt.step()
        self.history.append("M")
        return float(loss.detach())

    def adapt(
        self,
        support: SegmentBatch,
        support_targets: Any,
        *,
        steps: int | None = None,
        lr: float | None = None,
    ) -> VBFEncoder:
        """A copy of the encoder adapted to a new domain from its support set (eqs. 20-21): the
        meta-learner's domain shift is written into its buffers and the fast weights take
        `steps` gradient steps of size `lr` (defaults: config). The trainer's encoder is untouched."""
        c = self.config
        steps = c.meta_inner_steps if steps is None else steps
        lr = c.alpha_meta if lr is None else lr
        with torch.no_grad():
            shift = {k: v.detach() for k, v in self._shift(support).items()}
        params = dict(self.encoder.named_parameters())
        fast = {n: params[n].detach().clone().requires_grad_(True) for n in self.fast_names}
        fast = self._inner_loop(
            fast, shift, support, support_targets, steps, lr, create_graph=False
        )
        adapted = copy.deepcopy(self.encoder)
        adapted._generators = {}
        with torch.no_grad():
            new_params = dict(adapted.named_parameters())
            for n, p in fast.items():
                new_params[n].copy_(p.detach())
            adapted.domain_shift_mu.copy_(shift["domain_shift_mu"])
            adapted.domain_shift_logvar.copy_(shift["domain_shift_logvar"])
        return adapted

    @torch.no_grad()
    def evaluate_loss(self, encoder: VBFEncoder, batch: SegmentBatch, targets: Any) -> float:
        """Mean rec loss of `encoder` (mean strategy, eval mode) on a batch."""
        was_training = encoder.training
        encoder.eval()
        try:
            return float(self.rec_loss_fn(encoder(batch).embedding, targets).mean())
        finally:
            encoder.train(was_training)

    def checkpoint(self) -> dict[str, Any]:
        """{"config", "state_dict"} of the training-only modules (discriminator, meta-learner);
        the encoder is saved on its own. Loadable with torch.load(..., weights_only=True)."""
        cfg = asdict(self.config)
        cfg["meta_fast_params"] = list(self.config.meta_fast_params)
        return {
            "config": cfg,
            "state_dict": {
                "discriminator": self.discriminator.state_dict(),
                "meta_learner": self.meta_learner.state_dict(),
            },
        }
