"""The interface: author-id hashing, masks, masked means, batch checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmbee.encoders.base import MODALITIES, SegmentBatch, author_row, author_rows, masked_mean
from mmbee.encoders.batching import synthetic_batch


def test_author_row_is_pinned() -> None:
    """Pinned values: str hash() is salted per process, so these would not hold with it; and
    changing the hash would silently remap every trained author embedding."""
    assert author_row("a1", 1024) == 139
    assert author_row("streamer_42") == 52470
    assert author_row("中文", 1000) == 379


def test_author_row_range_unknown_and_spread() -> None:
    assert author_row("", 16) == 0
    rows = [author_row(f"author-{i}", 64) for i in range(6400)]
    assert min(rows) == 1 and max(rows) == 63
    counts = torch.bincount(torch.tensor(rows), minlength=64)[1:]
    assert counts.min() > 50 and counts.max() < 160  # ~101.6 each
    with pytest.raises(ValueError, match="n_buckets"):
        author_row("a", 1)
    assert author_rows(["a1", None, ""], 1024).tolist() == [139, 0, 0]


def test_masked_mean_ignores_nan_in_masked_positions() -> None:
    x = torch.tensor([[[1.0, 2.0], [float("nan"), float("inf")], [3.0, 4.0]]])
    mask = torch.tensor([[True, False, True]])
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(masked_mean(x, torch.zeros_like(mask), dim=1), torch.zeros(1, 2))


def test_token_mask_combines_every_mask() -> None:
    batch = synthetic_batch(
        2, 3, frames=2, comments=2, visual_dim=4, speech_dim=4, comment_dim=4, full=True
    )
    assert batch.token_mask().all()
    seg = batch.segment_mask.clone()
    seg[0, 0] = False
    mod = batch.modality_mask.clone()
    mod[1, 1] = False
    assert batch.frame_mask is not None and batch.comment_mask is not None
    frames = batch.frame_mask.clone()
    frames[0, 2] = False  # every frame of segment 2 missing
    comments = batch.comment_mask.clone()
    comments[1, 1, 0] = False  # one comment missing: the segment still has comments
    segmod = torch.ones(2, 3, 3, dtype=torch.bool)
    segmod[1, 2, 0] = False
    tok = dataclasses.replace(
        batch, segment_mask=seg, modality_mask=mod, frame_mask=frames, comment_mask=comments,
        segment_modality_mask=segmod,
    ).token_mask()  # fmt: skip
    want = torch.ones(2, 3, 3, dtype=torch.bool)
    want[0, 0, :] = False
    want[1, :, MODALITIES.index("speech")] = False
    want[0, 2, 0] = False
    want[1, 2, 0] = False
    assert torch.equal(tok, want)


def test_check_names_the_bad_field() -> None:
    batch = synthetic_batch(2, 3, visual_dim=4, speech_dim=4, comment_dim=4)
    batch.check()
    with pytest.raises(ValueError, match="modality_mask"):
        dataclasses.replace(batch, modality_mask=torch.ones(2, 2, dtype=torch.bool)).check()
    with pytest.raises(ValueError, match="speech"):
        dataclasses.replace(batch, speech=torch.zeros(2, 4, 4)).check()
    with pytest.raises(ValueError, match="author_ids"):
        dataclasses.replace(batch, author_ids=torch.zeros(3, dtype=torch.long)).check()


def test_to_moves_every_tensor_field() -> None:
    batch = synthetic_batch(2, 3, visual_dim=4, speech_dim=4, comment_dim=4, frames=2)
    moved = batch.to("cpu")
    for f in dataclasses.fields(SegmentBatch):
        a, b = getattr(batch, f.name), getattr(moved, f.name)
        assert (a is None and b is None) or torch.equal(a, b)
