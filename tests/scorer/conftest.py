"""Fixtures of the scorer tests: random GTR batches with tiny sizes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from mmbee.encoders.base import SegmentBatch
from mmbee.schemas import CommentEvent, GiftEvent, SegmentClosed, WatchEvent
from mmbee.scorer.batch import AGE_BUCKETS, DENSE_FEATURES, EXPANSIONS, KINDS, TASKS, GTRBatch

ROWS = 64
DIMS = {"visual_dim": 12, "speech_dim": 6, "comment_dim": 6}


def make_batch(
    seed: int = 0, b: int = 6, h: int = 7, n: int = 5, u: int = 3, seg: int = 4
) -> GTRBatch:
    """A random batch: ids in 1..ROWS-1, partly padded sequences, expansions and content."""
    g = torch.Generator().manual_seed(seed)
    hist_mask = torch.rand(b, h, generator=g) < 0.7
    hist_mask[0] = False  # one user without history
    exp_mask = torch.rand(b, len(EXPANSIONS), n, generator=g) < 0.6
    exp_mask[1] = False  # one impression without expansions
    author = torch.randint(1, ROWS, (b,), generator=g)
    exp_ids = torch.randint(1, ROWS, (b, len(EXPANSIONS), n), generator=g) * exp_mask
    exp_ids[2, 1, 0] = author[2]  # the target appears in an author expansion
    exp_mask[2, 1, 0] = True
    seg_mask = torch.rand(u, seg, generator=g) < 0.8
    seg_mask[:, -1] = True
    content = SegmentBatch(
        visual=torch.randn(u, seg, DIMS["visual_dim"], generator=g),
        speech=torch.randn(u, seg, DIMS["speech_dim"], generator=g),
        comments=torch.randn(u, seg, DIMS["comment_dim"], generator=g),
        segment_mask=seg_mask,
        modality_mask=torch.ones(u, 3, dtype=torch.bool),
        author_ids=torch.randint(1, ROWS, (u,), generator=g),
    )
    return GTRBatch(
        user=torch.randint(1, ROWS, (b,), generator=g),
        author=author,
        hist_author=torch.randint(1, ROWS, (b, h), generator=g) * hist_mask,
        hist_kind=torch.randint(0, len(KINDS), (b, h), generator=g),
        hist_age=torch.randint(0, AGE_BUCKETS, (b, h), generator=g),
        hist_mask=hist_mask,
        dense=torch.randn(b, len(DENSE_FEATURES), generator=g),
        exp_ids=exp_ids,
        exp_weight=torch.rand(b, len(EXPANSIONS), n, generator=g) * exp_mask,
        exp_mask=exp_mask,
        content=content,
        content_index=torch.randint(0, u, (b,), generator=g),
        labels=(torch.rand(b, len(TASKS), generator=g) < 0.5).float(),
    )


@pytest.fixture
def batch_factory() -> Callable[..., GTRBatch]:
    """`make_batch(seed=..., b=..., ...)`."""
    return make_batch


T0 = 1_700_000_000_000
SEG_MS = 30_000
FRAME_DIM, TEXT_DIM = 8, 4


def segment(author: str, live: str, start: int, rng: np.random.Generator) -> SegmentClosed:
    """A closed segment with small random features (some modalities missing)."""
    has = rng.random(3) < 0.8
    return SegmentClosed.model_validate(
        {
            "author_id": author,
            "live_id": live,
            "start_ms": start,
            "end_ms": start + SEG_MS,
            "n_frames": int(has[0]),
            "n_comments": int(has[2]),
            "n_asr": int(has[1]),
            "frame_mean": rng.standard_normal(FRAME_DIM).tolist() if has[0] else None,
            "asr_mean": rng.standard_normal(TEXT_DIM).tolist() if has[1] else None,
            "comment_mean": rng.standard_normal(TEXT_DIM).tolist() if has[2] else None,
        },
        context={"frame_dim": FRAME_DIM, "text_dim": TEXT_DIM},
    )


def make_stream(
    seed: int,
    n_users: int = 6,
    n_authors: int = 3,
    minutes: int = 120,
    start: int = T0,
    prefix: str = "",
) -> list[tuple[int, BaseModel]]:
    """A small random world as (emission time, event), in emission order: watches (enter/leave), comments, gifts, and
    closed segments (emitted 10 s after their end, as a segment buffer with lateness would).
    Ties in ts are frequent on purpose (second resolution)."""
    rng = np.random.default_rng(seed)
    events: list[tuple[int, int, BaseModel]] = []
    end = start + minutes * 60_000
    for a in range(n_authors):
        s = start - start % SEG_MS
        while s + SEG_MS <= end:
            seg = segment(f"a{a}", f"l{a}", s, rng)
            events.append((s + SEG_MS + 10_000, 0, seg))  # closed after the lateness
            s += SEG_MS
    n = 0
    for _ in range(minutes * 3):
        ts = int(start + rng.integers(0, minutes * 60) * 1000)
        u, a = f"u{rng.integers(n_users)}", f"a{rng.integers(n_authors)}"
        n += 1
        events.append(
            (
                ts,
                1,
                WatchEvent(
                    event_id=f"{prefix}w{n}", ts_ms=ts, user_id=u, author_id=a, live_id=f"l{a[1:]}"
                ),
            )
        )
        stay = int(rng.integers(5, 600)) * 1000
        events.append(
            (
                ts + stay,
                1,
                WatchEvent(
                    event_id=f"{prefix}x{n}",
                    ts_ms=ts + stay,
                    user_id=u,
                    author_id=a,
                    live_id=f"l{a[1:]}",
                    action="leave",
                    watch_ms=stay,
                ),
            )
        )
        if rng.random() < 0.3:
            c = ts + int(rng.integers(0, 300)) * 1000
            events.append(
                (
                    c,
                    1,
                    CommentEvent(
                        event_id=f"{prefix}c{n}",
                        ts_ms=c,
                        user_id=u,
                        author_id=a,
                        live_id=f"l{a[1:]}",
                        text="nice",
                    ),
                )
            )
        if rng.random() < 0.2:
            g = ts + int(rng.integers(0, 5400)) * 1000
            events.append(
                (
                    g,
                    1,
                    GiftEvent(
                        event_id=f"{prefix}g{n}",
                        ts_ms=g,
                        user_id=u,
                        author_id=a,
                        live_id=f"l{a[1:]}",
                        gift_value=float(rng.integers(1, 50)),
                    ),
                )
            )
    order = rng.permutation(len(events))  # random tie order
    events = [events[i] for i in order]
    events.sort(key=lambda e: e[0])
    return [(e[0], e[2]) for e in events]


@pytest.fixture
def stream_factory() -> Callable[..., list[tuple[int, BaseModel]]]:
    """`make_stream(seed, ...)`: a random event stream in event-time order."""
    return make_stream


@pytest.fixture
def segment_factory() -> Callable[..., SegmentClosed]:
    """`segment(author, live, start_ms, rng)`: a closed segment with small random features."""
    return segment
