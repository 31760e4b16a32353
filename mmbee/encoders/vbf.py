"""VBF++ (Cao, Liu, Chen): variational Bayesian fusion with a context-aware mixture prior.

The model of the paper's "Methodology" section, one file, read top to bottom (equation numbers
are the paper's):

    per-segment modality encoders (eq. 10) -> masked temporal pooling over the segment buffer
    -> cross-modal attention (eq. 11) -> posterior q(z|x) = N(mu_q, diag sigma_q^2) (eq. 12)
    -> z (reparameterised sample in training, the mean at inference)
    -> fusion weights alpha = softmax(W_alpha z + b_alpha) over present modalities (eq. 2)
    -> fused h = sum_m alpha_m phi_m(x_m) (eq. 3)   (the content embedding, D = `d_fused`)
    -> reconstruction decoder and Gaussian likelihood (eqs. 4, 7)
    context-aware prior p(z|x) = sum_k pi_k(x) N(mu_k, diag Sigma_k) (eqs. 8-9), with the
    weighted-sum KL approximation and the closed-form Gaussian KL (eqs. 13-14); ELBO (eq. 6).

Training-only parts (RAR replay buffer, discriminator, adversarial loss, meta-learning) live in
`mmbee.encoders.vbf_train`. Shapes use the letters of `mmbee.encoders.base`, plus
Z = `d_latent` (32), H = `d_hidden` (128), K = `n_clusters` (8), P = prior-feature width
(d_v + d_s + d_t + d_c), S = samples drawn per explored item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbee.encoders.base import ContentEncoder, EncoderOutput, SegmentBatch

__all__ = [
    "VBFConfig",
    "VBFEncoder",
    "Posterior",
    "UncertainPrediction",
    "gaussian_kl",
    "mixture_kl",
    "kmeans",
    "explore_scores",
]

_N_MOD = 3


@dataclass(frozen=True)
class VBFConfig:
    """Hyperparameters of `VBFEncoder` (plain JSON values: a checkpoint rebuilds the module).

    Defaults follow the paper where it states them (hidden 128, z in R^32, h in R^64, K = 8,
    beta = 0.01) and docs/vbf.md where it does not.

    Example:
        >>> cfg = VBFConfig(d_visual=16, d_speech=8, d_comments=8)
        >>> VBFEncoder(cfg).out_dim
        64
    """

    d_visual: int = 1280
    d_speech: int = 384
    d_comments: int = 384
    d_context: int = 0
    """Width of `SegmentBatch.context` fed to the prior's assignment network (0 = none)."""
    d_hidden: int = 128
    d_latent: int = 32
    d_fused: int = 64
    n_clusters: int = 8
    max_segments: int = 64
    """Size of the learned recency-bias table used by the temporal pooling (ages beyond clamp)."""
    prior: str = "mixture"
    """"mixture" (context-aware, eqs. 8-9) or "standard" (N(0, I); Table 3's -CP ablation)."""
    variational: bool = True
    """False: z = mu_q deterministically and no KL (Table 3's -VE ablation)."""
    beta_kl: float = 0.01
    recon_sigma2: float = 1.0
    """sigma^2 of the reconstruction likelihood (eq. 7)."""
    elbo_weight: float = 1.0
    """Weight of the negative ELBO (reconstruction + beta KL) in the total loss (eq. 18: 1)."""
    lambda_sparse: float = 0.01
    lambda_smooth: float = 0.01
    smooth_neighbours: int = 4
    explore_top_frac: float = 0.2
    explore_samples: int = 8
    seed: int = 0
    """Seed of the module's own sampling generator (weights: `build_encoder(..., seed=)`)."""

    def __post_init__(self) -> None:
        if self.prior not in ("mixture", "standard"):
            raise ValueError(f"prior must be 'mixture' or 'standard', got {self.prior!r}")
        if not 0.0 < self.explore_top_frac <= 1.0:
            raise ValueError("explore_top_frac must be in (0, 1]")
        if self.recon_sigma2 <= 0:
            raise ValueError("recon_sigma2 must be positive")

    @property
    def d_input(self) -> int:
        """d = d_v + d_s + d_t, the width of the reconstructed feature vector."""
        return self.d_visual + self.d_speech + self.d_comments

    @property
    def d_prior_in(self) -> int:
        """P, the width of the prior's assignment input (pooled features + context)."""
        return self.d_input + self.d_context


@dataclass
class Posterior:
    """The encoder half's result for one batch.

    Attributes:
        mu: (B, Z) posterior mean (after the domain shift, if any).
        logvar: (B, Z) posterior log-variance.
        encodings: (B, 3, H) pooled modality encodings e_m (eq. 10, pooled over segments).
        modality_mask: (B, 3) bool, modalities with data (the batch's mask and any token).
        targets: (B, d) per-stream masked-mean raw features, the reconstruction target
            (None when `encode` was asked not to compute it).
        prior_features: (B, P) the prior's assignment input (None likewise).
    """

    mu: Tensor
    logvar: Tensor
    encodings: Tensor
    modality_mask: Tensor
    targets: Tensor | None
    prior_features: Tensor | None

    def need_targets(self) -> tuple[Tensor, Tensor]:
        """(targets, prior_features), raising if `encode` skipped them."""
        if self.targets is None or self.prior_features is None:
            raise ValueError("this Posterior was encoded with targets=False")
        return self.targets, self.prior_features


@dataclass
class UncertainPrediction:
    """Inference with uncertainty-guided sampling (the paper's "uncertainty-guided exploration").

    Attributes:
        mean: (B, D) embedding from the mean strategy z = mu_q.
        samples: (B, S, D) embeddings from S sampled strategies for explored items; rows of
            items that are not explored repeat `mean`.
        explore_mask: (B,) True for the items chosen for exploration (highest posterior variance).
        posterior_var: (B,) mean posterior variance over the Z dimensions.
        fusion_weights: (B, 3) alpha under the mean strategy.
    """

    mean: Tensor
    samples: Tensor
    explore_mask: Tensor
    posterior_var: Tensor
    fusion_weights: Tensor


# ----------------------------------------------------------------------------- math helpers


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mu_q, diag e^logvar_q) || N(mu_p, diag e^logvar_p)) in closed form (eq. 14).

    Shapes: broadcastable (..., Z) inputs -> (...) output (summed over Z).
    """
    var_ratio = torch.exp(logvar_q - logvar_p)  # tr(Sigma_p^-1 Sigma_q) terms
    maha = (mu_p - mu_q).pow(2) * torch.exp(-logvar_p)
    return 0.5 * (var_ratio + maha - 1.0 + (logvar_p - logvar_q)).sum(dim=-1)


def mixture_kl(
    mu_q: Tensor, logvar_q: Tensor, weights: Tensor, mu_k: Tensor, logvar_k: Tensor
) -> Tensor:
    """Weighted-sum approximation of KL(q || sum_k pi_k N_k) = sum_k pi_k KL(q || N_k) (eq. 13).

    Shapes: mu_q, logvar_q (B, Z); weights (B, K); mu_k, logvar_k (K, Z) -> (B,).
    """
    per_k = gaussian_kl(mu_q.unsqueeze(1), logvar_q.unsqueeze(1), mu_k, logvar_k)  # (B, K)
    return (weights * per_k).sum(dim=-1)


def kmeans(
    x: Tensor, k: int, *, generator: torch.Generator, n_iter: int = 30
) -> tuple[Tensor, Tensor]:
    """Seeded k-means (k-means++ seeding, Lloyd iterations) on the rows of x.

    Shapes: x (N, P) -> (centroids (k, P), assignment (N,)). Needs N >= k.
    """
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} rows, got {n}")
    x = x.detach().float()
    first = int(torch.randint(n, (1,), generator=generator, device=x.device))
    centroids = [x[first]]
    d2 = (x - x[first]).pow(2).sum(-1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        idx = int(torch.multinomial(probs, 1, generator=generator))
        centroids.append(x[idx])
        d2 = torch.minimum(d2, (x - x[idx]).pow(2).sum(-1))
    c = torch.stack(centroids)  # (k, P)
    assign = torch.cdist(x, c).argmin(dim=1)
    for _ in range(n_iter):
        onehot = F.one_hot(assign, k).to(x.dtype)  # (N, k)
        counts = onehot.sum(0)  # (k,)
        new_c = (onehot.T @ x) / counts.clamp_min(1.0).unsqueeze(1)
        c = torch.where(counts.unsqueeze(1) > 0, new_c, c)  # keep empty clusters where they are
        new_assign = torch.cdist(x, c).argmin(dim=1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return c, assign


def explore_scores(
    mean_scores: Tensor, sample_scores: Tensor, explore_mask: Tensor, reduce: str = "max"
) -> Tensor:
    """Scores under uncertainty-guided sampling: explored items get the max (or mean) over their
    sampled strategies, the others keep the mean-strategy score.

    Shapes: mean_scores (B,), sample_scores (B, S), explore_mask (B,) -> (B,).
    """
    if reduce == "max":
        pooled = sample_scores.max(dim=1).values
    elif reduce == "mean":
        pooled = sample_scores.mean(dim=1)
    else:
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    return torch.where(explore_mask, pooled, mean_scores)


def _masked_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over `dim` restricted to mask; all-masked slices give zeros (never NaN)."""
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.where(mask, torch.softmax(filled, dim=dim), torch.zeros_like(logits))


# ----------------------------------------------------------------------------- the model


class ModalityEncoder(nn.Module):
    """e_m = LayerNorm(ReLU(W2 ReLU(W1 x + b1) + b2)) (eq. 10), applied to every segment.

    Example:
        >>> ModalityEncoder(16, 8)(torch.zeros(2, 3, 16)).shape
        torch.Size([2, 3, 8])
    """

    def __init__(self, d_in: int, d_hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(d_in, d_hidden)
        self.lin2 = nn.Linear(d_hidden, d_hidden)
        self.norm = nn.LayerNorm(d_hidden)

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: (..., d_m) -> (..., H)."""
        return self.norm(F.relu(self.lin2(F.relu(self.lin1(x)))))


class VBFEncoder(ContentEncoder):
    """VBF++ content encoder: a distribution over fusion strategies z, a fused embedding h.

    In training mode `forward` samples z by reparameterisation (from `generator`, or from the
    module's own generator seeded by `config.seed`) and returns the ELBO and regulariser terms
    in `aux_losses` (already weighted, ready to be summed); in eval mode it uses the mean
    strategy. Missing segments and modalities are masked, never filled with noise.

    Example:
        >>> enc = VBFEncoder(VBFConfig(d_visual=8, d_speech=8, d_comments=8, d_hidden=16))
        >>> b = SegmentBatch(torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8),
        ...                  torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool),
        ...                  torch.zeros(2, dtype=torch.long))
        >>> enc.predict(b).shape
        torch.Size([2, 64])
    """

    name: ClassVar[str] = "vbf++"
    config_cls: ClassVar[type] = VBFConfig
    config: VBFConfig
    domain_shift_mu: Tensor
    domain_shift_logvar: Tensor
    explore_threshold: Tensor

    def __init__(self, config: VBFConfig | None = None) -> None:
        config = config if config is not None else VBFConfig()
        super().__init__(config)
        c = config
        # eq. 10: one encoder per modality, applied per segment
        self.modality_encoders = nn.ModuleList(
            [ModalityEncoder(d, c.d_hidden) for d in (c.d_visual, c.d_speech, c.d_comments)]
        )
        # temporal pooling over the segment buffer: content score + learned recency bias
        self.pool_score = nn.ModuleList([nn.Linear(c.d_hidden, 1) for _ in range(_N_MOD)])
        self.recency_bias = nn.Parameter(torch.zeros(_N_MOD, c.max_segments))
        # eq. 11: bilinear cross-modal attention
        self.w_att = nn.Parameter(torch.randn(c.d_hidden, c.d_hidden) / math.sqrt(c.d_hidden))
        # eq. 12: posterior heads (bias-free, as written)
        self.posterior_mu = nn.Linear(_N_MOD * c.d_hidden, c.d_latent, bias=False)
        self.posterior_logvar = nn.Linear(_N_MOD * c.d_hidden, c.d_latent, bias=False)
        # eq. 2: fusion strategy -> modality weights
        self.fusion_head = nn.Linear(c.d_latent, _N_MOD)
        # eq. 3: phi_m, modality encodings -> fused space
        self.phi = nn.ModuleList([nn.Linear(c.d_hidden, c.d_fused) for _ in range(_N_MOD)])
        # eq. 4: reconstruction decoder D_recon: R^D -> R^d
        self.decoder = nn.Sequential(
            nn.Linear(c.d_fused, c.d_hidden), nn.ReLU(), nn.Linear(c.d_hidden, c.d_input)
        )
        # eqs. 8-9: context-aware mixture prior
        self.prior_assign = nn.Linear(c.d_prior_in, c.n_clusters)
        self.prior_mu = nn.Parameter(torch.randn(c.n_clusters, c.d_latent))
        self.prior_logvar = nn.Parameter(torch.zeros(c.n_clusters, c.d_latent))
        # domain-level posterior shift written by meta-adaptation (eq. 20); zero = none
        self.register_buffer("domain_shift_mu", torch.zeros(c.d_latent))
        self.register_buffer("domain_shift_logvar", torch.zeros(c.d_latent))
        # posterior-variance threshold for exploration, set by `calibrate_exploration`;
        # negative = not calibrated (fall back to the top fraction of the batch)
        self.register_buffer("explore_threshold", torch.tensor(-1.0))
        self._generators: dict[str, torch.Generator] = {}

    @property
    def out_dim(self) -> int:
        return self.config.d_fused

    # ------------------------------------------------------------------ encoder half

    def _modalities(self, batch: SegmentBatch) -> tuple[list[Tensor], Tensor]:
        """Per-segment features of each modality with padding zeroed (NaN-safe), and the
        (B, L, 3) token mask saying which (segment, modality) pairs hold data."""
        tm = batch.token_mask()  # (B, L, 3)
        xs = [batch.pooled_visual(), batch.speech, batch.pooled_comments()]
        return [torch.where(tm[..., m, None], x, 0.0) for m, x in enumerate(xs)], tm

    def prior_features(self, batch: SegmentBatch) -> Tensor:
        """The prior's assignment input x: masked-mean raw features (+ context). Shapes: (B, P)."""
        return self._targets_and_prior(batch, *self._modalities(batch))[1]

    def _targets_and_prior(
        self, batch: SegmentBatch, xs: list[Tensor], tm: Tensor
    ) -> tuple[Tensor, Tensor]:
        count = tm.sum(dim=1).clamp_min(1).to(xs[0].dtype)  # (B, 3)
        # xs are already zero where masked: a plain sum is the masked sum
        pooled = [x.sum(dim=1) / count[:, m, None] for m, x in enumerate(xs)]  # (B, d_m) each
        targets = torch.cat(pooled, dim=-1)  # (B, d), zeros for absent modalities
        if self.config.d_context:
            if batch.context is None:
                raise ValueError(f"VBFConfig.d_context={self.config.d_context} needs batch.context")
            prior_in = torch.cat([targets, batch.context.to(targets.dtype)], dim=-1)
        else:
            prior_in = targets
        return targets, prior_in  # (B, d), (B, P)

    def encode(self, batch: SegmentBatch, *, targets: bool = True) -> Posterior:
        """q(z|x): modality encoders, temporal pooling, cross-modal attention, posterior heads;
        with `targets`, also the reconstruction target and the prior's input features.

        Shapes:
            batch: see `SegmentBatch`.
            returns `Posterior` with mu, logvar (B, Z), encodings (B, 3, H).
        """
        c = self.config
        seg = batch.segment_mask  # (B, L)
        xs, tm = self._modalities(batch)  # tm (B, L, 3)
        mod = batch.modality_mask & tm.any(dim=1)  # (B, 3) a modality with no token is absent
        # age of each segment counted in present segments, newest = 0 (padding-invariant)
        after = seg.flip(1).long().cumsum(1).flip(1) - seg.long()  # (B, L)
        age = after.clamp(max=c.max_segments - 1)
        pooled = []
        for m, x in enumerate(xs):
            e = self.modality_encoders[m](x)  # (B, L, H)
            score = self.pool_score[m](e).squeeze(-1) + self.recency_bias[m][age]  # (B, L)
            w = _masked_softmax(score, tm[..., m], dim=1)  # (B, L)
            pooled.append(torch.einsum("bl,blh->bh", w, e))
        e = torch.stack(pooled, dim=1)  # (B, 3, H)
        e = torch.where(mod.unsqueeze(-1), e, torch.zeros_like(e))
        # eq. 11: A_mn = softmax_n(e_m^T W_att e_n / sqrt(H)) over present modalities n
        logits = torch.einsum("bmh,hk,bnk->bmn", e, self.w_att, e) / math.sqrt(c.d_hidden)
        key_mask = mod.unsqueeze(1).expand(-1, _N_MOD, -1)  # (B, 3, 3)
        att = _masked_softmax(logits, key_mask, dim=-1)  # (B, 3, 3)
        e_att = torch.einsum("bmn,bnh->bmh", att, e)  # (B, 3, H)
        e_att = torch.where(mod.unsqueeze(-1), e_att, torch.zeros_like(e_att))
        flat = e_att.reshape(e_att.shape[0], _N_MOD * c.d_hidden)  # (B, 3H)
        # eq. 12 (+ the domain-level shift of eq. 20, zero unless meta-adapted)
        mu = self.posterior_mu(flat) + self.domain_shift_mu
        logvar = self.posterior_logvar(flat) + self.domain_shift_logvar
        if not targets:
            return Posterior(mu, logvar, e, mod, None, None)
        target, prior_in = self._targets_and_prior(batch, xs, tm)
        return Posterior(mu, logvar, e, mod, target, prior_in)

    # ------------------------------------------------------------------ decoder half

    def fuse(self, z: Tensor, post: Posterior) -> tuple[Tensor, Tensor]:
        """alpha = masked softmax(W_alpha z + b) (eq. 2), h = sum_m alpha_m phi_m(e_m) (eq. 3).

        Shapes: z (..., B, Z) -> (h (..., B, D), alpha (..., B, 3)); a leading sample dim is
        allowed.
        """
        alpha = _masked_softmax(self.fusion_head(z), post.modality_mask, dim=-1)  # (.., B, 3)
        proj = torch.stack(
            [self.phi[m](post.encodings[:, m]) for m in range(_N_MOD)], dim=-2
        )  # (B, 3, D)
        h = (alpha.unsqueeze(-1) * proj).sum(dim=-2)  # (.., B, D)
        return h, alpha

    def prior_weights(self, prior_features: Tensor) -> Tensor:
        """pi_k(x) = softmax_k(W_k x + b_k) (eq. 9). Shapes: (B, P) -> (B, K)."""
        return torch.softmax(self.prior_assign(prior_features), dim=-1)

    def kl(self, post: Posterior) -> Tensor:
        """KL(q(z|x) || p(z|x)) per item (eqs. 13-14, or N(0, I) for the -CP ablation). (B,)."""
        if self.config.prior == "standard":
            zero = torch.zeros_like(post.mu)
            return gaussian_kl(post.mu, post.logvar, zero, zero)
        pi = self.prior_weights(post.need_targets()[1])
        return mixture_kl(post.mu, post.logvar, pi, self.prior_mu, self.prior_logvar)

    def _recon_sq_error(self, h: Tensor, post: Posterior) -> tuple[Tensor, Tensor]:
        """Squared error over present modalities' dims, and how many dims were present. (B,)."""
        c = self.config
        recon = self.decoder(h)  # (B, d)
        widths = torch.tensor([c.d_visual, c.d_speech, c.d_comments], device=h.device)
        dim_mask = post.modality_mask.repeat_interleave(widths, dim=1)  # (B, d)
        target = post.need_targets()[0]
        sq = torch.where(dim_mask, (target - recon).pow(2), torch.zeros_like(recon))
        return sq.sum(dim=-1), dim_mask.sum(dim=-1).to(h.dtype)

    def reconstruction_log_likelihood(self, h: Tensor, post: Posterior) -> Tensor:
        """log p(x | z, x) of eq. 7 over the present modalities' dims, constant included. (B,)."""
        s2 = self.config.recon_sigma2
        sq, d = self._recon_sq_error(h, post)
        return -sq / (2 * s2) - 0.5 * d * math.log(2 * math.pi * s2)

    # ------------------------------------------------------------------ regularisers

    def sparsity_loss(self, alpha: Tensor, modality_mask: Tensor) -> Tensor:
        """L_sparse: normalised entropy of alpha over present modalities, mean over items with at
        least two modalities (lower = more selective fusion). Shapes: (B, 3), (B, 3) -> ()."""
        n = modality_mask.sum(dim=-1)  # (B,)
        ent = -(torch.where(modality_mask, alpha * torch.log(alpha.clamp_min(1e-12)), 0.0)).sum(-1)
        multi = n >= 2
        if not bool(multi.any()):
            return alpha.sum() * 0.0
        return (ent[multi] / torch.log(n[multi].to(alpha.dtype))).mean()

    def smoothness_loss(self, alpha: Tensor, prior_features: Tensor) -> Tensor:
        """L_smooth: mean ||alpha_i - alpha_j||^2 over each item's k most similar items in the
        batch (cosine similarity of the prior features, no gradient). Shapes: (B, 3), (B, P) -> ()."""
        b = alpha.shape[0]
        k = min(self.config.smooth_neighbours, b - 1)
        if k < 1:
            return alpha.sum() * 0.0
        with torch.no_grad():
            f = F.normalize(prior_features.float(), dim=-1)
            sim = f @ f.T  # (B, B)
            sim.fill_diagonal_(-float("inf"))
            nbr = sim.topk(k, dim=1).indices  # (B, k)
        diff = alpha.unsqueeze(1) - alpha[nbr]  # (B, k, 3)
        return diff.pow(2).sum(-1).mean()

    # ------------------------------------------------------------------ forward / inference

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.config.seed)
        return self._generators[key]

    def forward(
        self,
        batch: SegmentBatch,
        *,
        sample: bool | None = None,
        generator: torch.Generator | None = None,
        compute_losses: bool | None = None,
    ) -> EncoderOutput:
        """Encode, sample (or take the mean of) z, fuse; in training also the loss terms.

        Args:
            sample: draw z by reparameterisation (default: in training mode, if variational).
            generator: torch Generator for the noise (default: the module's, seeded by config).
            compute_losses: fill `aux_losses` and the prior diagnostics (default: in training
                mode); inference skips the reconstruction target and prior features.

        Shapes:
            batch: see `SegmentBatch`.
            embedding: (B, D) fused h.  extras: z, mu, logvar (B, Z); fusion_weights (B, 3);
            posterior_var (B,); prior_weights (B, K) (mixture prior, with losses only).
            aux_losses: scalars "vbf_recon", "vbf_kl", "vbf_sparse", "vbf_smooth".
        """
        c = self.config
        losses = self.training if compute_losses is None else compute_losses
        post = self.encode(batch, targets=losses)
        sample = (self.training if sample is None else sample) and c.variational
        if sample:
            gen = generator if generator is not None else self._generator(post.mu.device)
            eps = torch.randn(post.mu.shape, generator=gen, device=post.mu.device)
            z = post.mu + torch.exp(0.5 * post.logvar) * eps.to(post.mu.dtype)  # (B, Z)
        else:
            z = post.mu
        h, alpha = self.fuse(z, post)
        extras = {
            "z": z,
            "mu": post.mu,
            "logvar": post.logvar,
            "fusion_weights": alpha,
            "posterior_var": post.logvar.exp().mean(dim=-1),
        }
        aux: dict[str, Tensor] = {}
        if losses:
            _, prior_features = post.need_targets()
            if c.prior == "mixture":
                extras["prior_weights"] = self.prior_weights(prior_features)
            has_any = post.modality_mask.any(dim=-1)  # (B,)
            sq, _ = self._recon_sq_error(h, post)
            recon = (sq / (2 * c.recon_sigma2))[has_any].sum() / has_any.sum().clamp_min(1)
            aux["vbf_recon"] = c.elbo_weight * recon
            if c.variational:
                aux["vbf_kl"] = c.elbo_weight * c.beta_kl * self.kl(post).mean()
            if c.lambda_sparse:
                aux["vbf_sparse"] = c.lambda_sparse * self.sparsity_loss(alpha, post.modality_mask)
            if c.lambda_smooth:
                aux["vbf_smooth"] = c.lambda_smooth * self.smoothness_loss(alpha, prior_features)
        return EncoderOutput(embedding=h, aux_losses=aux, extras=extras)

    @torch.no_grad()
    def predict_with_uncertainty(
        self,
        batch: SegmentBatch,
        *,
        generator: torch.Generator,
        n_samples: int | None = None,
        top_frac: float | None = None,
    ) -> UncertainPrediction:
        """Mean strategy for every item, plus S sampled strategies for the most uncertain ones.

        An item is explored when its mean posterior variance exceeds the calibrated threshold
        (`calibrate_exploration`), or, before calibration, when it is in the batch's top
        `top_frac` (default 20%) by posterior variance.

        Shapes: batch (B, ...) -> mean (B, D), samples (B, S, D), explore_mask (B,).
        """
        c = self.config
        s = n_samples if n_samples is not None else c.explore_samples
        frac = top_frac if top_frac is not None else c.explore_top_frac
        was_training = self.training
        self.eval()
        try:
            post = self.encode(batch, targets=False)
            mean_h, alpha = self.fuse(post.mu, post)
            var = post.logvar.exp().mean(dim=-1)  # (B,)
            b = var.shape[0]
            if not c.variational:
                explore = torch.zeros(b, dtype=torch.bool, device=var.device)
            elif float(self.explore_threshold) >= 0:
                explore = var > self.explore_threshold
            else:
                n_top = max(1, math.ceil(frac * b))
                explore = torch.zeros(b, dtype=torch.bool, device=var.device)
                explore[var.topk(n_top).indices] = True
            samples = mean_h.unsqueeze(1).expand(-1, s, -1).clone()  # (B, S, D)
            if bool(explore.any()):
                eps = torch.randn((s, *post.mu.shape), generator=generator, device=var.device)
                z = post.mu + torch.exp(0.5 * post.logvar) * eps.to(post.mu.dtype)  # (S, B, Z)
                h_s, _ = self.fuse(z, post)  # (S, B, D)
                samples[explore] = h_s.transpose(0, 1)[explore]
            return UncertainPrediction(mean_h, samples, explore, var, alpha)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def calibrate_exploration(
        self, batches: list[SegmentBatch], top_frac: float | None = None
    ) -> float:
        """Set the exploration threshold to the (1 - top_frac) quantile of posterior variance over
        `batches` (e.g. a training sample), so serving decisions do not depend on batch makeup."""
        frac = top_frac if top_frac is not None else self.config.explore_top_frac
        was_training = self.training
        self.eval()
        try:
            var = torch.cat(
                [self.encode(b, targets=False).logvar.exp().mean(dim=-1) for b in batches]
            )
        finally:
            self.train(was_training)
        thr = float(torch.quantile(var.float(), 1.0 - frac))
        self.explore_threshold.fill_(thr)
        return thr

    @torch.no_grad()
    def init_prior_from_features(
        self, features: Tensor, *, generator: torch.Generator, n_iter: int = 30
    ) -> Tensor:
        """Initialise the assignment network (eq. 9) from k-means centroids of prior features.

        With centroids c_k and temperature T (mean squared distance to the nearest centroid),
        W_k = 2 c_k / T and b_k = -||c_k||^2 / T make pi_k(x) = softmax_k(-||x - c_k||^2 / T),
        the soft k-means assignment; W, b stay learnable afterwards.

        Shapes: features (N, P) from `prior_features` -> centroids (K, P).
        """
        c, assign = kmeans(features, self.config.n_clusters, generator=generator, n_iter=n_iter)
        t = (features.float() - c[assign]).pow(2).sum(-1).mean().clamp_min(1e-6)
        self.prior_assign.weight.copy_(2 * c / t)
        self.prior_assign.bias.copy_(-c.pow(2).sum(-1) / t)
        return c
