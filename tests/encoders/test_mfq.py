"""MFQ: the orthogonal projection, author queries, attention masks, and learning a one-modality signal."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from mmbee.encoders.base import SegmentBatch
from mmbee.encoders.batching import synthetic_batch
from mmbee.encoders.mfq import MFQConfig, MFQEncoder, modality_residuals, orthogonal_residual
from mmbee.encoders.registry import build_encoder

DV, DS, DT = 16, 8, 8
TINY = dict(
    visual_dim=DV,
    speech_dim=DS,
    comment_dim=DT,
    d_model=32,
    heads=2,
    n_queries=2,
    author_buckets=8,
    author_dim=4,
    out_dim=16,
    ffn_mult=2,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_orthogonal_residual_is_orthogonal_to_the_present_basis() -> None:
    g = _gen(0)
    x = torch.randn(4, 5, 32, generator=g)
    basis = torch.randn(4, 3, 32, generator=g)
    mask = torch.tensor([True, False, True]).expand(4, 3)
    y = orthogonal_residual(x, basis, mask, eps=1e-6)
    present = basis[:, [0, 2]]
    assert (y @ present.transpose(-1, -2)).abs().max() < 1e-3
    # the masked row is ignored: same as projecting on the present rows only
    y2 = orthogonal_residual(x, present, torch.ones(4, 2, dtype=torch.bool), eps=1e-6)
    torch.testing.assert_close(y, y2, atol=1e-5, rtol=1e-5)
    # x minus y lies in the span: projecting again removes nothing more
    y3 = orthogonal_residual(y, present, torch.ones(4, 2, dtype=torch.bool), eps=1e-6)
    torch.testing.assert_close(y3, y, atol=1e-4, rtol=1e-4)


def test_orthogonal_residual_is_safe_on_empty_and_parallel_bases() -> None:
    x = torch.randn(2, 1, 8, generator=_gen(1))
    zero = torch.zeros(2, 2, 8)
    torch.testing.assert_close(
        orthogonal_residual(x, zero, torch.ones(2, 2, dtype=torch.bool), 1e-3), x
    )
    parallel = torch.stack([x[:, 0], 2 * x[:, 0]], dim=1)  # rank 1
    y = orthogonal_residual(x, parallel, torch.ones(2, 2, dtype=torch.bool), 1e-4)
    assert torch.isfinite(y).all() and y.norm() < 1e-3 * x.norm()


@pytest.mark.parametrize("scope", ["segment", "stream"])
def test_modality_residuals_match_the_definition(scope: str) -> None:
    g = _gen(2)
    B, L, d = 3, 4, 16
    x = torch.randn(B, 3, L, d, generator=g)
    mask = torch.rand(B, 3, L, generator=g) > 0.3
    x = x * mask.unsqueeze(-1)
    y = modality_residuals(x, mask, scope, eps=1e-3)  # type: ignore[arg-type]
    others = {0: [1, 2], 1: [0, 2], 2: [0, 1]}
    for m, (a, b) in others.items():
        if scope == "segment":  # per segment: span of the other two tokens of that segment
            basis = torch.stack([x[:, a], x[:, b]], dim=2)  # (B, L, 2, d)
            bmask = torch.stack([mask[:, a], mask[:, b]], dim=2)
            want = orthogonal_residual(x[:, m].unsqueeze(2), basis, bmask, 1e-3).squeeze(2)
        else:  # per stream: span of every present token of the other two modalities
            basis = torch.cat([x[:, a], x[:, b]], dim=1)  # (B, 2L, d)
            bmask = torch.cat([mask[:, a], mask[:, b]], dim=1)
            want = orthogonal_residual(x[:, m], basis, bmask, 1e-3)
        torch.testing.assert_close(y[:, m], want, atol=1e-4, rtol=1e-4)


def test_a_modality_explained_by_the_others_leaves_no_residual() -> None:
    g = _gen(3)
    v, t = torch.randn(2, 1, 5, 32, generator=g), torch.randn(2, 1, 5, 32, generator=g)
    s = -0.5 * v  # speech says nothing that visual does not
    x = torch.cat([v, s, t], dim=1)  # (B, 3, L, d)
    y = modality_residuals(x, torch.ones(2, 3, 5, dtype=torch.bool), "segment", eps=1e-5)
    assert y[:, 1].norm() < 1e-3 * s.norm()
    assert y[:, 0].norm() < 1e-3 * v.norm()  # and visual nothing speech does not
    # comments keep what visual/speech (one direction per segment) do not explain
    assert y[:, 2].norm() > 0.9 * t.norm()


def test_author_rows_and_the_unknown_row() -> None:
    enc = MFQEncoder(MFQConfig(**TINY))
    with torch.no_grad():
        enc.author_emb.weight[1:].normal_()
    batch = synthetic_batch(
        2, 4, visual_dim=DV, speech_dim=DS, comment_dim=DT, author_buckets=8, full=True
    )
    same = dataclasses.replace(
        batch,
        visual=batch.visual[:1].expand_as(batch.visual),
        speech=batch.speech[:1].expand_as(batch.speech),
        comments=batch.comments[:1].expand_as(batch.comments),
    )
    diff_ids = enc.predict(dataclasses.replace(same, author_ids=torch.tensor([1, 2])))
    assert not torch.allclose(diff_ids[0], diff_ids[1]), "the author query must matter"
    assert torch.count_nonzero(enc.author_emb.weight[0]) == 0, "row 0 (unknown) is a zero row"
    with pytest.raises(ValueError, match="author_ids must be rows"):
        enc.predict(dataclasses.replace(same, author_ids=torch.tensor([0, 8])))


def test_query_attention_ignores_missing_tokens() -> None:
    enc = build_encoder("mfq", TINY, seed=0)
    batch = synthetic_batch(
        6, 5, visual_dim=DV, speech_dim=DS, comment_dim=DT, author_buckets=8, generator=_gen(4)
    )
    w = enc(batch).extras["query_attention"]  # (B, H, n_q, 3L)
    assert w.shape == (6, 2, 2, 15)
    fmask = batch.token_mask().transpose(1, 2).reshape(6, 15)  # modality-major, like the model
    assert torch.all(w.masked_select(~fmask[:, None, None, :]) == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(6, 2, 2))


def test_a_stream_without_any_content_is_finite() -> None:
    enc = build_encoder("mfq", TINY, seed=0)
    batch = synthetic_batch(
        2, 3, visual_dim=DV, speech_dim=DS, comment_dim=DT, author_buckets=8, generator=_gen(5)
    )
    empty = dataclasses.replace(batch, segment_mask=torch.zeros(2, 3, dtype=torch.bool))
    assert torch.isfinite(enc.predict(empty)).all()


# --- learning a signal only one modality carries -----------------------------------------
L = 8


def _spike_data(n: int, g: torch.Generator) -> tuple[SegmentBatch, torch.Tensor]:
    """y = 1 iff one random present segment's speech carries a spike 3 u (u a fixed direction).

    Visual and comments are pure noise; streams have 2..L present segments (left padding).
    Averaging over the buffer dilutes the spike by the number of segments; attending finds it.
    """
    y = torch.rand(n, generator=g) < 0.5
    present = torch.randint(2, L + 1, (n,), generator=g)
    seg = torch.arange(L)[None] >= (L - present)[:, None]
    v = torch.randn(n, L, DV, generator=g)
    s = torch.randn(n, L, DS, generator=g)
    t = torch.randn(n, L, DT, generator=g)
    pos = L - 1 - (torch.rand(n, generator=g) * present).long()
    s[torch.arange(n), pos, 0] += 3.0 * y.float()
    ones = torch.ones(n, 3, dtype=torch.bool)
    return SegmentBatch(v, s, t, seg, ones, torch.zeros(n, dtype=torch.long)), y.float()


def _rows(b: SegmentBatch, idx: torch.Tensor) -> SegmentBatch:
    return SegmentBatch(
        b.visual[idx], b.speech[idx], b.comments[idx], b.segment_mask[idx], b.modality_mask[idx],
        b.author_ids[idx],
    )  # fmt: skip


def _train_auc(name: str, cfg: dict[str, object], seed: int, steps: int = 150) -> float:
    g = _gen(1000 + seed)
    train, y_train = _spike_data(2048, g)
    test, y_test = _spike_data(1024, g)
    enc = build_encoder(name, cfg, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(enc.out_dim, 1)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=5e-3)
    batches = _gen(seed)
    for _ in range(steps):
        idx = torch.randint(0, 2048, (64,), generator=batches)
        logit = head(enc(_rows(train, idx)).embedding).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(logit, y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        score = head(enc.predict(test)).squeeze(-1)
    return float(roc_auc_score(y_test.numpy(), score.numpy()))


def test_mfq_learns_a_one_modality_signal_that_mean_pooling_dilutes() -> None:
    """Observed over seeds 0-9 (150 steps): MFQ AUC 0.919-0.942, mean-pool 0.802-0.838, gap
    0.084-0.138; mean-pool is converged (1000 steps: same AUC), the MLP baseline is worse."""
    mfq = _train_auc("mfq", TINY, seed=0)
    pooled = _train_auc(
        "mean-pool", dict(visual_dim=DV, speech_dim=DS, comment_dim=DT, out_dim=16), seed=0
    )
    assert mfq > 0.88, f"MFQ AUC {mfq:.3f}"
    assert mfq > pooled + 0.05, f"MFQ AUC {mfq:.3f} vs mean-pool {pooled:.3f}"


def test_now_path_reads_the_newest_segment_and_ignores_padding() -> None:
    from mmbee.encoders.mfq import newest_and_contrast

    x = torch.zeros(1, 3, 4, 2)
    tok = torch.tensor([[[True, True, False, False], [True, True, True, True], [False] * 4]])
    x[0, 0, 0], x[0, 0, 1] = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 2.0])
    x[0, 1] = torch.arange(8.0).view(4, 2)
    out = newest_and_contrast(x, tok).view(2, 3, 2)
    assert torch.equal(out[0, 0], torch.tensor([3.0, 2.0]))  # newest present visual segment
    assert torch.equal(out[1, 0], torch.tensor([1.0, 1.0]))  # minus the mean of the two
    assert torch.equal(out[0, 1], torch.tensor([6.0, 7.0]))
    assert torch.equal(out[1, 1], torch.tensor([3.0, 3.0]))
    assert torch.equal(out[:, 2], torch.zeros(2, 2))  # an absent modality adds nothing
    enc = MFQEncoder(MFQConfig(**{**TINY, "now_hidden": 8}))
    enc.eval()
    b = synthetic_batch(
        3,
        5,
        visual_dim=DV,
        speech_dim=DS,
        comment_dim=DT,
        author_buckets=8,
        full=True,
        generator=_gen(0),
    )
    ref = enc(b).embedding
    b.segment_mask[:, :2] = False  # the two oldest slots become padding holding garbage
    b.visual[:, :2] = float("nan")
    again = enc(b).embedding
    b.visual[:, :2] = 123.0
    assert torch.equal(again, enc(b).embedding) and torch.isfinite(again).all()
    assert not torch.equal(ref, again)
