"""batch_from_segments: left padding, newest last, exact decoding, masks, errors, and the
padding invariance of an encoder fed by it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmbee.encoders.batching import batch_from_segments, decode_segment, synthetic_batch
from mmbee.encoders.registry import build_encoder
from mmbee.schemas import SegmentClosed, decode_embedding, encode_embedding

FD, TD = 8, 4
T0 = 1_700_000_000_000


def _seg(
    author: str,
    k: int,
    rng: np.random.Generator,
    frame: bool = True,
    comment: bool = True,
    asr: bool = True,
) -> SegmentClosed:
    def vec(d: int, on: bool) -> str | None:
        return encode_embedding(rng.standard_normal(d)) if on else None

    fields = dict(
        author_id=author, live_id=f"live-{author}", start_ms=T0 + 10_000 * k, end_ms=T0 + 10_000 * (k + 1),
        n_frames=int(frame), n_comments=int(comment), n_asr=int(asr),
        frame_mean=vec(FD, frame), comment_mean=vec(TD, comment), asr_mean=vec(TD, asr),
    )  # fmt: skip
    return SegmentClosed.model_validate(fields, context={"frame_dim": FD, "text_dim": TD})


def _dec(s: str | None, d: int) -> np.ndarray:
    return np.zeros(d, np.float32) if s is None else decode_embedding(s)


def test_left_padding_newest_last_exact_values_and_masks() -> None:
    rng = np.random.default_rng(0)
    a = [_seg("a", k, rng) for k in range(6)]  # longer than L: keeps the newest 4
    b = [_seg("b", 0, rng, comment=False), _seg("b", 1, rng, frame=False, comment=False)]
    batch = batch_from_segments([a, b, []], [5, 6, 0], segments_kept=4, frame_dim=FD, text_dim=TD)
    batch.check()
    assert batch.visual.shape == (3, 4, FD) and batch.speech.shape == (3, 4, TD)
    assert batch.segment_mask.tolist() == [[True] * 4, [False, False, True, True], [False] * 4]
    for slot, seg in enumerate(a[2:]):
        np.testing.assert_array_equal(batch.visual[0, slot].numpy(), _dec(seg.frame_mean, FD))
        np.testing.assert_array_equal(batch.speech[0, slot].numpy(), _dec(seg.asr_mean, TD))
        np.testing.assert_array_equal(batch.comments[0, slot].numpy(), _dec(seg.comment_mean, TD))
    np.testing.assert_array_equal(batch.speech[1, 3].numpy(), _dec(b[1].asr_mean, TD))
    assert batch.segment_modality_mask is not None
    assert batch.segment_modality_mask[1].tolist() == [
        [False] * 3, [False] * 3, [True, True, False], [False, True, False]
    ]  # fmt: skip
    assert batch.modality_mask.tolist() == [[True] * 3, [True, True, False], [False] * 3]
    assert batch.author_ids.tolist() == [5, 6, 0]
    assert torch.all(batch.visual[1, :2] == 0) and torch.all(batch.visual[2] == 0)


def test_decoded_and_wire_segments_batch_identically() -> None:
    rng = np.random.default_rng(1)
    bufs = [[_seg("a", k, rng, comment=k % 2 == 0) for k in range(3)], [_seg("b", 0, rng)]]
    wire = batch_from_segments(bufs, [1, 2], 5, frame_dim=FD, text_dim=TD)
    decoded = [[decode_segment(s, FD, TD) for s in buf] for buf in bufs]
    mixed = [decoded[0], bufs[1]]
    for other in (
        batch_from_segments(decoded, [1, 2], 5, FD, TD),
        batch_from_segments(mixed, [1, 2], 5, FD, TD),
    ):
        for name in (
            "visual",
            "speech",
            "comments",
            "segment_mask",
            "modality_mask",
            "segment_modality_mask",
        ):
            assert torch.equal(getattr(other, name), getattr(wire, name)), name


def test_errors_name_the_problem() -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="author rows"):
        batch_from_segments([[]], [], 3, FD, TD)
    with pytest.raises(ValueError, match="oldest -> newest"):
        batch_from_segments([[_seg("a", 1, rng), _seg("a", 0, rng)]], [1], 3, FD, TD)
    with pytest.raises(ValueError, match="'a' segment .*frame_mean has width 8, expected 16"):
        batch_from_segments([[_seg("a", 0, rng)]], [1], 3, frame_dim=16, text_dim=TD)
    wrong = decode_segment(_seg("a", 0, rng), FD, TD)
    with pytest.raises(ValueError, match="expected \\(20,\\)"):
        batch_from_segments([[wrong]], [1], 3, frame_dim=12, text_dim=TD)
    with pytest.raises(ValueError, match="segments_kept"):
        batch_from_segments([[]], [0], 0, FD, TD)


def test_empty_batch() -> None:
    batch = batch_from_segments([], [], 4, FD, TD)
    assert batch.visual.shape == (0, 4, FD) and batch.segment_mask.shape == (0, 4)


def test_encoder_output_does_not_depend_on_the_number_of_slots() -> None:
    """A 3-segment buffer encodes the same in 5 or 10 slots; missing modalities stay masked."""
    rng = np.random.default_rng(3)
    buf = [
        _seg("a", 0, rng, asr=False),
        _seg("a", 1, rng, comment=False),
        _seg("a", 2, rng, frame=False),
    ]
    cfg = dict(
        visual_dim=FD,
        speech_dim=TD,
        comment_dim=TD,
        d_model=8,
        heads=2,
        author_buckets=16,
        author_dim=4,
    )
    enc = build_encoder("mfq", cfg, seed=0)
    five = enc.predict(batch_from_segments([buf], [3], 5, FD, TD))
    ten = enc.predict(batch_from_segments([buf], [3], 10, FD, TD))
    torch.testing.assert_close(five, ten, atol=1e-5, rtol=1e-5)


def test_synthetic_batch_is_seeded() -> None:
    a = synthetic_batch(
        3, 4, visual_dim=4, speech_dim=2, comment_dim=2, generator=torch.Generator().manual_seed(9)
    )
    b = synthetic_batch(
        3, 4, visual_dim=4, speech_dim=2, comment_dim=2, generator=torch.Generator().manual_seed(9)
    )
    assert torch.equal(a.visual, b.visual) and torch.equal(a.segment_mask, b.segment_mask)
