"""The GTR model's input batch: integer id rows, behaviour sequence, dense counts, expansions.

Letters used in shapes across `mmbee.scorer`:
    B  impressions in the batch             H  behaviours kept per user (SIM's long sequence)
    K  behaviours retrieved by SIM's GSU     P  metapath expansions (5: `EXPANSIONS` order)
    N  nodes per expansion (top-N)           U  distinct content buffers in the batch
    L  segments per buffer                   D  model width (`dim`)
    T  tasks (watch, comment, gift)

Ids are strings on the wire and hashed rows inside the model (`id_row`): the tables have a fixed
number of rows, row 0 is reserved for "none / padding", so unseen ids at serving time still get a
row and never fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmbee.encoders.base import SegmentBatch, author_row

__all__ = [
    "KINDS",
    "TASKS",
    "EXPANSIONS",
    "USER_EXPANSIONS",
    "AUTHOR_EXPANSIONS",
    "DENSE_FEATURES",
    "AGE_BUCKETS",
    "GTRBatch",
    "id_row",
    "age_bucket",
    "age_buckets",
]

KINDS = ("watch", "comment", "gift")
"""Behaviour kinds in a user's sequence (index = kind id)."""
TASKS = ("watch", "comment", "gift")
"""Tasks, in label-column order: watched >= the threshold, commented, gifted within 1 h."""
USER_EXPANSIONS = ("u2a2u", "u2a2u2a", "u2a2a")
AUTHOR_EXPANSIONS = ("a2a", "a2u2a")
EXPANSIONS = USER_EXPANSIONS + AUTHOR_EXPANSIONS
"""MMBee's five metapath expansions; u2a2u holds users, the other four hold authors."""
DENSE_FEATURES = (
    "log_user_gift_rate",
    "log_user_gifts",
    "log_user_value_per_gift",
    "user_has_gifted",
    "log_author_gift_rate",
    "log_author_watches",
    "log_pair_watches",
    "log_pair_gifts",
    "log_pair_watch_share",
    "log_room_gifts_5m",
    "log_room_gifts_15m",
    "log_room_entries_5m",
    "log_room_gift_rate_15m",
    "hour_sin",
    "hour_cos",
)
"""Dense point-in-time counters (see `mmbee.scorer.features.dense_vector`)."""
AGE_BUCKETS = 16
"""Behaviour age buckets: floor(log2(1 + age in minutes)), clipped to 0..15."""


def id_row(key: str, rows: int) -> int:
    """Stable hashed table row of a user or author id: 1..rows-1, "" -> 0 (padding).

    The encoders' `author_row` hash (blake2b-64 mod rows-1), so the scorer's id tables and the
    content encoders' author queries agree across processes without a shared vocabulary.
    """
    return author_row(key, rows)


def age_bucket(age_ms: int) -> int:
    """Bucket of a behaviour's age: floor(log2(1 + minutes)), 0..AGE_BUCKETS-1."""
    minutes = max(age_ms, 0) / 60_000.0
    return min(int(math.log2(1.0 + minutes)), AGE_BUCKETS - 1)


def age_buckets(age_ms: np.ndarray) -> np.ndarray:
    """`age_bucket` of an array of ages: int8, same shape."""
    minutes = np.maximum(age_ms, 0) / 60_000.0
    return np.minimum(np.log2(1.0 + minutes).astype(np.int64), AGE_BUCKETS - 1).astype(np.int8)


@dataclass
class GTRBatch:
    """One batch of impressions for `GTRModel`.

    Shapes:
        user, author: (B,) int64 hashed rows of the viewer and the target streamer.
        hist_author, hist_kind, hist_age: (B, H) int64 behaviour author rows, kinds (`KINDS`),
            age buckets; hist_mask (B, H) bool, True = a real behaviour (oldest -> newest).
        dense: (B, len(DENSE_FEATURES)) float32 point-in-time counters.
        exp_ids: (B, P, N) int64 rows (user rows for u2a2u, author rows for the rest);
            exp_weight (B, P, N) float32 >= 0; exp_mask (B, P, N) bool.
        content: a SegmentBatch of U distinct segment buffers, and content_index (B,) int64
            (each impression's buffer); both None for models without a content encoder.
        labels: (B, T) float32 in `TASKS` order, or None at serving time.
        extra: (B, E) float32 diagnostic inputs of the wide term (`GTRConfig.extra_wide`), or
            None; only the ablation's ceiling variants set it.

    Example:
        >>> b = GTRBatch.empty_like_for_tests(batch_size=2, history=3, n=4)
        >>> b.batch_size, tuple(b.exp_ids.shape)
        (2, (2, 5, 4))
    """

    user: Tensor
    author: Tensor
    hist_author: Tensor
    hist_kind: Tensor
    hist_age: Tensor
    hist_mask: Tensor
    dense: Tensor
    exp_ids: Tensor
    exp_weight: Tensor
    exp_mask: Tensor
    content: SegmentBatch | None = None
    content_index: Tensor | None = None
    labels: Tensor | None = None
    extra: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.user.shape[0])

    def to(self, device: torch.device | str) -> GTRBatch:
        """The same batch with every tensor (and the content batch) on `device`."""
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor | SegmentBatch):
                value = value.to(device)
            moved[f.name] = value
        return GTRBatch(**moved)

    @classmethod
    def empty_like_for_tests(cls, batch_size: int, history: int, n: int) -> GTRBatch:
        """An all-padding batch of the given sizes (no behaviours, no expansions)."""
        b, h, p = batch_size, history, len(EXPANSIONS)
        return cls(
            user=torch.ones(b, dtype=torch.long),
            author=torch.ones(b, dtype=torch.long),
            hist_author=torch.zeros(b, h, dtype=torch.long),
            hist_kind=torch.zeros(b, h, dtype=torch.long),
            hist_age=torch.zeros(b, h, dtype=torch.long),
            hist_mask=torch.zeros(b, h, dtype=torch.bool),
            dense=torch.zeros(b, len(DENSE_FEATURES)),
            exp_ids=torch.zeros(b, p, n, dtype=torch.long),
            exp_weight=torch.zeros(b, p, n),
            exp_mask=torch.zeros(b, p, n, dtype=torch.bool),
        )
