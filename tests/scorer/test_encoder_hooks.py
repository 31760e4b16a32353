"""Encoder hooks of the GTR scorer: any registered encoder by name, category context, auxiliary
losses in training, and recommendation losses from an externally computed content embedding."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from mmbee.encoders.vbf_train import VBFTrainConfig, VBFTrainer
from mmbee.schemas import WatchEvent
from mmbee.scorer.batch import GTRBatch
from mmbee.scorer.dataset import ExampleTable, RowCache, Rows, category_onehot, collate_request
from mmbee.scorer.examples import LabelConfig, LabelJoiner
from mmbee.scorer.features import (
    FeatureConfig,
    FeatureSnapshot,
    FeatureState,
    MemorySegmentStore,
)
from mmbee.scorer.gtr import GTRModel, config_for_variant, default_content_config
from mmbee.scorer.train import (
    ContentRecLoss,
    TrainConfig,
    gtr_loss,
    impression_losses,
    rows_for,
    train_model,
)

ROWS = 64
CATS = ("chat", "game", "music")
ENCODERS = ("mfq", "cva+text", "vbf++", "fixed-fusion", "mean-pool")


def model_for(encoder: str, variant: str = "sim_mfq") -> GTRModel:
    cfg = config_for_variant(
        variant,
        content_encoder=encoder,
        dim=8,
        user_rows=ROWS,
        author_rows=ROWS,
        sim_top_k=3,
        hidden=(16,),
        mmoe_expert_hidden=(16,),
        categories=CATS,
        content_config=default_content_config(encoder, 12, 6, len(CATS)),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GTRModel(cfg)


def with_context(batch: GTRBatch) -> GTRBatch:
    assert batch.content is not None
    u = batch.content.batch_size
    batch.content.context = category_onehot([CATS[i % 3] if i else None for i in range(u)], CATS)
    return batch


@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_encoder_by_name_trains_inside_the_scorer(
    encoder: str, batch_factory: Callable[..., GTRBatch]
) -> None:
    model = model_for(encoder).train()
    batch = with_context(batch_factory())
    total, parts = gtr_loss(model, batch, TrainConfig())
    if encoder == "vbf++":  # the ELBO terms are part of the training loss
        assert {"content/vbf_recon", "content/vbf_kl"} <= set(parts)
    total.backward()
    assert model.content is not None
    grads = [p.grad for p in model.content.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), encoder


def test_context_reaches_the_vbf_prior(batch_factory: Callable[..., GTRBatch]) -> None:
    model = model_for("vbf++").train()
    batch = with_context(batch_factory())
    assert batch.content is not None and batch.content.context is not None
    a = model(batch).aux_losses["content/vbf_kl"]
    assert torch.allclose(a, model(batch).aux_losses["content/vbf_kl"])  # closed form
    batch.content.context = torch.roll(batch.content.context, 1, dims=-1)
    b = model(batch).aux_losses["content/vbf_kl"]
    assert not torch.allclose(a, b)  # the mixture prior reads the category
    batch.content.context = None
    with pytest.raises(ValueError, match="d_context"):
        model(batch)


@pytest.mark.parametrize("encoder", ["vbf++", "mfq"])
def test_external_content_embedding_gives_the_same_scores(
    encoder: str, batch_factory: Callable[..., GTRBatch]
) -> None:
    model = model_for(encoder, "mmoe_mfq_gie").eval()
    batch = with_context(batch_factory())
    assert model.content is not None and batch.content is not None
    with torch.no_grad():
        emb = model.content(batch.content).embedding
        a = model(batch).logits["gift"]
        b = model(batch, content_embedding=emb).logits["gift"]
    assert torch.allclose(a, b, atol=1e-6)
    assert model(batch, content_embedding=emb).aux_losses == {}
    with pytest.raises(ValueError, match="width"):
        model(batch, content_embedding=emb[:, :3])


def test_content_rec_loss_drives_the_vbf_trainer(batch_factory: Callable[..., GTRBatch]) -> None:
    model = model_for("vbf++").train()
    batch = with_context(batch_factory(b=12, u=4))
    loss = ContentRecLoss(model)
    names = {id(p) for p in loss.parameters()}
    assert model.content is not None
    assert not any(id(p) in names for p in model.content.parameters())
    assert batch.content is not None
    emb = model.content(batch.content).embedding
    per_buffer = loss(emb, batch)
    assert per_buffer.shape == (4,)
    per_imp = impression_losses(model, batch, content_embedding=emb)
    assert batch.content_index is not None
    for u in range(4):
        sel = batch.content_index == u
        if sel.any():
            assert torch.allclose(per_buffer[u], per_imp[sel].mean(), atol=1e-6)
    # Gradient flows from the per-item loss into the embedding (what RAR / MAML need).
    emb2 = emb.detach().requires_grad_(True)
    loss(emb2, batch).sum().backward()
    assert emb2.grad is not None and emb2.grad.abs().sum() > 0
    # One VBFTrainer step moves both the encoder and the scorer's head, not twice the encoder.
    trainer = VBFTrainer(
        model.content,  # type: ignore[arg-type]
        loss,
        VBFTrainConfig(rar=False),
        rec_parameters=loss.parameters(),
    )
    head = [p.detach().clone() for p in loss.parameters()]
    enc = [p.detach().clone() for p in model.content.parameters()]
    trainer.train_step(batch.content, batch)
    assert any(not torch.equal(a, p) for a, p in zip(head, loss.parameters(), strict=True))
    assert any(not torch.equal(a, p) for a, p in zip(enc, model.content.parameters(), strict=True))


CFG = FeatureConfig(history=6, segments=3, expansion_n=4)


def build(stream: list[tuple[int, BaseModel]]) -> tuple[FeatureState, list, ExampleTable]:
    lives = {"l0": "music", "l1": "game"}  # l2 unknown
    st = FeatureState(CFG, store=MemorySegmentStore(8, 4), live_categories=lives)
    j = LabelJoiner(LabelConfig())
    done = []
    for t, ev in stream:
        if isinstance(ev, WatchEvent) and ev.action == "enter":
            done += j.add(st.snapshot(ev.event_id, ev.user_id, ev.author_id, ev.live_id, ev.ts_ms))
        done += j.observe(ev)
        st.apply(ev, at_ms=t)
    done += [e for e in j.flush() if not e.censored]
    table = ExampleTable(CFG)
    table.extend(done, st.store)
    return st, done, table


def test_category_context_in_training_and_serving_batches(
    stream_factory: Callable[..., list[tuple[int, BaseModel]]],
) -> None:
    st, done, table = build(stream_factory(4))
    cats = [ex.snapshot.author.category for ex in done]
    assert set(cats) == {"music", "game", None}
    assert table.category_names(np.arange(len(done))) == cats
    rows = Rows(ROWS, ROWS, 256, True, CATS)
    idx = np.arange(len(done))
    b = table.batch(idx, rows, st.store)
    assert b.content is not None and b.content.context is not None and b.content_index is not None
    ctx = b.content.context[b.content_index]  # (B, C)
    assert torch.equal(ctx, category_onehot(cats, CATS))
    # Without a category vocabulary there is no context.
    plain = table.batch(idx[:5], Rows(ROWS, ROWS, 256, True), st.store)
    assert plain.content is not None and plain.content.context is None
    # A score request (serving collate) carries the same one-hot.
    ts = done[-1].snapshot.ts_ms
    user = st.user_side("u1", ts)
    snaps = [
        FeatureSnapshot(f"r{i}", ts, user, st.author_side(a, None, ts))
        for i, a in enumerate(("a0", "a1", "a2"))
    ]
    req = collate_request(snaps, CFG, rows, st.store, RowCache())
    assert req.content is not None and req.content.context is not None
    assert req.content.context.tolist() == category_onehot(["music", "game", None], CATS).tolist()


def test_training_initialises_the_vbf_prior_by_kmeans(
    stream_factory: Callable[..., list[tuple[int, BaseModel]]],
) -> None:
    st, done, table = build(stream_factory(5))
    cfg = config_for_variant(
        "sim_mfq",
        content_encoder="vbf++",
        dim=8,
        user_rows=ROWS,
        author_rows=ROWS,
        hidden=(8,),
        categories=CATS,
        content_config=default_content_config("vbf++", 8, 4, len(CATS)),
    )
    idx = np.arange(len(done))
    fresh = GTRModel(cfg)
    assert rows_for(fresh).categories == CATS

    def weights(seed: int, init: int) -> torch.Tensor:
        tc = TrainConfig(epochs=1, batch_size=64, seed=seed, progress=False, max_seconds=0.0,
                         prior_init_examples=init)  # fmt: skip
        res = train_model(cfg, table, st.store, idx, tc)
        w: torch.Tensor = res.model.content.prior_assign.weight  # type: ignore[union-attr, assignment]
        return w.detach().clone()

    with_init, again, without = weights(0, 64), weights(0, 64), weights(0, 0)
    assert torch.equal(with_init, again)  # seeded
    assert not torch.allclose(with_init, without)
