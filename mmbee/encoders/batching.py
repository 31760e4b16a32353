"""Segment buffers (lists of `SegmentClosed`) -> a padded `SegmentBatch` for any content encoder.

Used by the content agent (one author's buffer at a time, or many after a rebalance), by the
trainer's point-in-time examples and by serving, so training and serving batch identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmbee.encoders.base import DEFAULT_AUTHOR_BUCKETS, SegmentBatch
from mmbee.schemas import FRAME_DIM, TEXT_DIM, SegmentClosed, decode_embedding

__all__ = ["DecodedSegment", "decode_segment", "batch_from_segments", "synthetic_batch"]

# SegmentClosed field per modality, in MODALITIES order (visual, speech, comments)
_FIELDS = ("frame_mean", "asr_mean", "comment_mean")


@dataclass(frozen=True)
class DecodedSegment:
    """A `SegmentClosed` with its pooled vectors decoded once into one float32 row.

    `features` is [frame_mean | asr_mean | comment_mean] (d_v + 2 d_t values, zeros where that
    modality is absent); `present` says which modality the segment has (visual, speech,
    comments). Base64 decoding costs ~40 us per 1280-d vector on the 2-core CI box, so a
    buffer that is batched more than once (every score request, every training example) should
    hold these rather than the wire messages.

    Example:
        >>> seg = SegmentClosed(author_id="a1", live_id="l1", start_ms=1_700_000_000_000,
        ...                     end_ms=1_700_000_010_000, n_frames=0, n_comments=0, n_asr=0)
        >>> decode_segment(seg, frame_dim=4, text_dim=2).features.shape
        (8,)
    """

    author_id: str
    start_ms: int
    features: np.ndarray
    present: tuple[bool, bool, bool]


def decode_segment(
    seg: SegmentClosed, frame_dim: int = FRAME_DIM, text_dim: int = TEXT_DIM
) -> DecodedSegment:
    """Decode a segment's pooled vectors (`mmbee.schemas.decode_embedding`) into one row.

    Raises:
        ValueError: a vector has the wrong width (names the author, segment start and field).
    """
    dims = (frame_dim, text_dim, text_dim)
    out = np.zeros(sum(dims), dtype=np.float32)
    present = [False, False, False]
    lo = 0
    for m, name in enumerate(_FIELDS):
        wire = getattr(seg, name)
        if wire is not None:
            vec = decode_embedding(wire)
            if vec.shape[0] != dims[m]:
                raise ValueError(
                    f"author {seg.author_id!r} segment {seg.start_ms}: {name} has width "
                    f"{vec.shape[0]}, expected {dims[m]}"
                )
            out[lo : lo + dims[m]] = vec
            present[m] = True
        lo += dims[m]
    return DecodedSegment(seg.author_id, seg.start_ms, out, (present[0], present[1], present[2]))


def batch_from_segments(
    buffers: Sequence[Sequence[SegmentClosed | DecodedSegment]],
    author_rows: Sequence[int],
    segments_kept: int,
    frame_dim: int = FRAME_DIM,
    text_dim: int = TEXT_DIM,
) -> SegmentBatch:
    """Stack per-stream segment buffers into one left-padded batch.

    Each buffer is ordered oldest -> newest; its newest `segments_kept` segments are kept and
    right-aligned, so slot L-1 is always the newest segment and missing older slots are padding
    (`segment_mask` False, features zero). A segment whose pooled vector of a modality is None
    (no frame / comment / ASR event in it) has that token masked in `segment_modality_mask`;
    `modality_mask` is True where the stream has that modality in any kept segment. Segments
    may be wire messages (decoded here) or `DecodedSegment`s (copied: the fast path).

    Args:
        buffers: B buffers, each oldest -> newest (may be empty).
        author_rows: B embedding rows (`mmbee.encoders.base.author_row`), 0 = unknown.
        segments_kept: L, the number of slots.
        frame_dim / text_dim: expected vector widths.

    Raises:
        ValueError: on a length mismatch, a buffer out of time order, or a vector of the wrong
            width (the message names the author, segment start and field).

    Shapes:
        visual (B, L, frame_dim), speech (B, L, text_dim), comments (B, L, text_dim) (views of
        one (B, L, frame_dim + 2 text_dim) block), segment_mask (B, L),
        segment_modality_mask (B, L, 3), modality_mask (B, 3), author_ids (B,).
    """
    B, L = len(buffers), int(segments_kept)
    if len(author_rows) != B:
        raise ValueError(f"{B} buffers but {len(author_rows)} author rows")
    if L < 1:
        raise ValueError(f"segments_kept must be >= 1, got {segments_kept}")
    width = frame_dim + 2 * text_dim
    zero_row = np.zeros(width, dtype=np.float32)
    absent = (False, False, False)
    rows: list[np.ndarray] = []  # B * L rows in slot order; padding shares `zero_row`
    flags: list[tuple[bool, bool, bool]] = []
    n_pad = np.empty(B, dtype=np.int64)
    for b, buf in enumerate(buffers):
        kept = buf[-L:]
        pad = L - len(kept)
        n_pad[b] = pad
        if pad:
            rows.extend([zero_row] * pad)
            flags.extend([absent] * pad)
        decs = [
            s if type(s) is DecodedSegment else decode_segment(s, frame_dim, text_dim)  # type: ignore[arg-type]
            for s in kept
        ]
        starts = [d.start_ms for d in decs]
        if starts != sorted(starts):
            raise ValueError(
                f"buffer of author {decs[0].author_id!r} is not oldest -> newest "
                f"(segment starts {starts})"
            )
        rows.extend([d.features for d in decs])
        flags.extend([d.present for d in decs])
    block = np.empty((B, L, width), dtype=np.float32)
    if rows:
        try:
            np.concatenate(rows, out=block.reshape(-1))  # one copy of every feature row
        except ValueError:
            bad = next(r for r in rows if r.shape != (width,))
            raise ValueError(
                f"a decoded segment has features of shape {bad.shape}, expected ({width},) "
                f"(frame_dim {frame_dim} + 2 x text_dim {text_dim})"
            ) from None
        present = np.array(flags, dtype=np.bool_).reshape(B, L, 3)
    else:
        present = np.zeros((B, L, 3), dtype=np.bool_)
    segment_mask = np.arange(L)[None, :] >= n_pad[:, None]  # (B, L)
    feats = torch.from_numpy(block)  # (B, L, d_v + 2 d_t)
    return SegmentBatch(
        visual=feats[..., :frame_dim],
        speech=feats[..., frame_dim : frame_dim + text_dim],
        comments=feats[..., frame_dim + text_dim :],
        segment_mask=torch.from_numpy(segment_mask),
        modality_mask=torch.from_numpy(present.any(axis=1)),
        author_ids=torch.as_tensor(np.asarray(author_rows, dtype=np.int64)),
        segment_modality_mask=torch.from_numpy(present),
    )


def synthetic_batch(
    batch_size: int,
    segments: int,
    *,
    frames: int | None = None,
    comments: int | None = None,
    visual_dim: int = FRAME_DIM,
    speech_dim: int = TEXT_DIM,
    comment_dim: int = TEXT_DIM,
    author_buckets: int = DEFAULT_AUTHOR_BUCKETS,
    full: bool = False,
    generator: torch.Generator | None = None,
) -> SegmentBatch:
    """A random `SegmentBatch` for tests and benchmarks (Gaussian features, random masks).

    Unless `full`, each stream keeps a random number (>= 1) of its newest segments (left
    padding), has each modality with probability 0.8 (at least one), keeps a random non-empty
    prefix of its frames / comments, and segments miss a modality with probability 0.1.
    Padded values are Gaussian noise too, so a model that reads padding is caught.

    Shapes: see `SegmentBatch`; visual is (B, L, F, d_v) when `frames` is set, comments
    (B, L, C, d_t) when `comments` is set.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    B, L = batch_size, segments

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    def keep_prefix(n: int, lead: tuple[int, ...]) -> torch.Tensor:
        if full:
            return torch.ones(*lead, n, dtype=torch.bool)
        count = torch.randint(1, n + 1, lead, generator=g)  # (...,)
        return torch.arange(n) < count.unsqueeze(-1)  # prefix of length count

    visual = rnd(B, L, visual_dim) if frames is None else rnd(B, L, frames, visual_dim)
    comment = rnd(B, L, comment_dim) if comments is None else rnd(B, L, comments, comment_dim)
    present = torch.randint(1, L + 1, (B,), generator=g) if not full else torch.full((B,), L)
    segment_mask = torch.arange(L)[None, :] >= (L - present)[:, None]  # (B, L)
    if full:
        modality_mask = torch.ones(B, 3, dtype=torch.bool)
        seg_mod = torch.ones(B, L, 3, dtype=torch.bool)
    else:
        modality_mask = torch.rand(B, 3, generator=g) < 0.8
        modality_mask[~modality_mask.any(dim=1), 0] = True
        seg_mod = torch.rand(B, L, 3, generator=g) >= 0.1
    return SegmentBatch(
        visual=visual,
        speech=rnd(B, L, speech_dim),
        comments=comment,
        segment_mask=segment_mask,
        modality_mask=modality_mask,
        author_ids=torch.randint(0, author_buckets, (B,), generator=g),
        frame_mask=None if frames is None else keep_prefix(frames, (B, L)),
        comment_mask=None if comments is None else keep_prefix(comments, (B, L)),
        segment_modality_mask=seg_mod,
    )
