"""Example table and collate: same tensors for training and serving, content deduplicated."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pydantic import BaseModel

from mmbee.schemas import WatchEvent
from mmbee.scorer.batch import EXPANSIONS, id_row
from mmbee.scorer.dataset import ExampleTable, Rows, collate
from mmbee.scorer.examples import LabelConfig, LabelJoiner
from mmbee.scorer.features import FeatureConfig, FeatureSnapshot, FeatureState, MemorySegmentStore

CFG = FeatureConfig(history=6, segments=3, expansion_n=4, freeze_user_day=False)
ROWS = Rows(user_rows=128, author_rows=128, content_author_rows=256)


def build(stream):
    st = FeatureState(CFG, store=MemorySegmentStore(8, 4))
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


def test_table_batches_equal_serving_collate(
    stream_factory: Callable[..., list[tuple[int, BaseModel]]],
) -> None:
    st, done, table = build(stream_factory(4))
    assert len(table) == len(done) > 100
    idx = np.arange(0, len(done), 3)
    a = table.batch(idx, ROWS, st.store)
    b = collate([done[i].snapshot for i in idx], CFG, ROWS, st.store)
    for k, v in vars(a).items():
        if isinstance(v, torch.Tensor) and k != "labels":
            assert torch.equal(v, getattr(b, k)), k
    assert b.labels is None and a.labels is not None
    assert a.content is not None and b.content is not None
    # Content rows are compared through the index (the order of distinct buffers may differ).
    for f in ("visual", "speech", "comments", "segment_mask", "modality_mask", "author_ids"):
        va = getattr(a.content, f)[a.content_index]
        vb = getattr(b.content, f)[b.content_index]
        assert torch.equal(va, vb), f


def test_batch_contents_match_the_snapshots(
    stream_factory: Callable[..., list[tuple[int, BaseModel]]],
) -> None:
    st, done, table = build(stream_factory(5))
    idx = np.arange(len(done))
    batch = table.batch(idx, ROWS, st.store)
    assert batch.content is not None and batch.content_index is not None
    assert batch.content.batch_size < batch.batch_size  # deduplicated buffers
    checked = 0
    for i, ex in enumerate(done):
        s = ex.snapshot
        assert int(batch.user[i]) == id_row(s.user_id, 128)
        assert int(batch.author[i]) == id_row(s.author_id, 128)
        h = len(s.user.history[-CFG.history :])
        assert int(batch.hist_mask[i].sum()) == h and bool(batch.hist_mask[i, -1]) == (h > 0)
        for p, exp in enumerate(s.expansions()):
            assert int(batch.exp_mask[i, p].sum()) == min(len(exp), CFG.expansion_n)
            rows = 128
            for j, (node, w) in enumerate(exp[: CFG.expansion_n]):
                assert int(batch.exp_ids[i, p, j]) == id_row(node, rows)
                assert abs(float(batch.exp_weight[i, p, j]) - w) < 1e-6
        assert torch.equal(batch.labels[i], torch.tensor(ex.labels))
        c = int(batch.content_index[i])
        assert int(batch.content.author_ids[c]) == id_row(s.author_id, 256)
        starts = s.author.segment_starts
        assert int(batch.content.segment_mask[c].sum()) == len(starts)
        for slot, start in zip(
            range(CFG.segments - len(starts), CFG.segments), starts, strict=True
        ):
            seg_row = st.store.row(s.author_id, start)
            assert seg_row is not None
            present = st.store.arrays()[3][seg_row]
            assert torch.equal(
                batch.content.segment_modality_mask[c, slot], torch.from_numpy(present)
            )
            if present[0]:
                checked += 1
                assert np.allclose(
                    batch.content.visual[c, slot].numpy(), st.store.arrays()[0][seg_row]
                )
    assert checked > 50 and len(EXPANSIONS) == batch.exp_ids.shape[1]


def test_table_and_store_round_trip_through_files(
    stream_factory: Callable[..., list[tuple[int, BaseModel]]], tmp_path
) -> None:
    st, done, table = build(stream_factory(6))
    table.save(tmp_path / "t.npz")
    st.store.save(tmp_path / "s.npz")
    t2 = ExampleTable.load(tmp_path / "t.npz")
    s2 = MemorySegmentStore.load(tmp_path / "s.npz")
    assert len(t2) == len(table) and t2.event_ids == table.event_ids and t2.config == table.config
    idx = np.arange(len(table))
    a, b = table.batch(idx, ROWS, st.store), t2.batch(idx, ROWS, s2)
    for k, v in vars(a).items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, getattr(b, k)), k
    for f in ("visual", "speech", "comments", "segment_modality_mask", "author_ids"):
        assert torch.equal(getattr(a.content, f), getattr(b.content, f)), f
    t2.add(done[0], s2)  # a loaded table keeps growing
    assert len(t2) == len(table) + 1


def test_request_collate_equals_table_collate(
    stream_factory: Callable[..., list[tuple[int, BaseModel]]],
) -> None:
    from mmbee.scorer.dataset import RowCache, collate_request

    st, _, _ = build(stream_factory(8))
    ts = max(b.ts_ms for u in st.users.values() for b in u.history) + 1
    user = st.user_side("u2", ts)
    snaps = [
        FeatureSnapshot(f"r{i}", ts, user, st.author_side(a, None, ts), *st.users["u2"].pair(a))
        for i, a in enumerate(["a0", "a1", "a2", "a_unknown"])
    ]
    a = collate(snaps, CFG, ROWS, st.store)
    b = collate_request(snaps, CFG, ROWS, st.store, RowCache())
    for k, v in vars(a).items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, getattr(b, k).to(v.dtype)) or k == "content_index", k
    for f in ("visual", "speech", "comments", "segment_mask", "modality_mask", "author_ids"):
        assert torch.equal(
            getattr(a.content, f)[a.content_index], getattr(b.content, f)[b.content_index]
        ), f
    assert int(a.hist_mask.sum()) > 0 and int(a.exp_mask.sum()) > 0
