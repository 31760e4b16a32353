"""The predict API: a checkpoint loaded once, batched no-grad scoring, atomic hot swap.

`load_model` reads a `mmbee train` checkpoint (config + weights, `torch.load(weights_only=True)`)
into an immutable `LoadedModel` that carries everything serving must not re-derive: the model in
eval mode, the feature config, the table sizes and a version string. `ModelHolder` holds the
current one; `swap` builds the new model completely off to the side and then replaces a single
reference under a lock, so a request that took `holder.current()` scores with one whole model
from start to end and never sees a half-loaded one.

`score_request` answers a ScoreRequest from the user side and the candidates' streamer sides
(built with `mmbee.scorer.features`, exactly as the training joiner builds them): one batched
forward pass over all candidates. Bad requests come back as a ScoreResponse with `error` set.
Latency is measured with an injected clock.

Content embeddings without the encoder per request: `encode_buffers` computes the content
encoder's outputs for a list of segment buffers (the serving worker does it when a segment closes
and for every author before a model swap), and `score_request(..., content=...)` scores with them
through `GTRModel.forward(content_embedding=...)`: the rest of the forward pass (projection, GIE,
base, wide term) runs unchanged, so scores equal the full forward (tested).

Example:
    >>> holder = ModelHolder()  # doctest: +SKIP
    >>> holder.swap(load_model("runs/demo/model.pt"))  # doctest: +SKIP
    >>> score_request(holder.current(), request, user, authors, user_state, store)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmbee.encoders.base import SegmentBatch
from mmbee.schemas.events import AuthorScore, ScoreRequest, ScoreResponse
from mmbee.scorer.batch import id_row
from mmbee.scorer.dataset import RowCache, Rows, collate, collate_request
from mmbee.scorer.features import (
    AuthorFeatures,
    FeatureConfig,
    FeatureSnapshot,
    MemorySegmentStore,
    UserFeatures,
    UserState,
    snapshot_features,
)
from mmbee.scorer.gtr import GTRModel, load_checkpoint
from mmbee.scorer.train import rows_for

__all__ = [
    "NoModelError",
    "ModelLoadError",
    "LoadedModel",
    "ContentBuffer",
    "encode_buffers",
    "checkpoint_features",
    "load_model",
    "ModelHolder",
    "predict_snapshots",
    "score_request",
]


class NoModelError(RuntimeError):
    """Raised by `ModelHolder.current` before any model was loaded."""


class ModelLoadError(ValueError):
    """A checkpoint that cannot be served (missing, unreadable, not a GTR checkpoint, or
    inconsistent with its own config); the message names the file and the cause."""


_LOAD_ERRORS = (
    OSError,
    EOFError,
    pickle.UnpicklingError,
    RuntimeError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
)
"""What reading an arbitrary file as a checkpoint raises: torch.load's unpickler errors on a
non-checkpoint or truncated file, KeyError/TypeError/ValueError on a config that does not fit,
RuntimeError on weights that do not fit the model."""


@dataclass(frozen=True)
class LoadedModel:
    """One loaded checkpoint, ready to serve. No field is reassigned after creation; `cache` and
    `content` are caches that fill up while it serves.

    Attributes:
        version: identifies the weights (given, or a digest of the checkpoint file).
        model: the GTR model, eval mode.
        features: the feature config the model was trained with.
        rows: the table sizes batches must be cut with.
        config: the whole checkpoint config.
        cache: memoised id -> table row hashing (thread-safe enough: a race only re-hashes).
        content: author -> (segment keys, encoder output (D_enc,)) computed with this model's
            encoder (serving's content embedding cache; filled by the serving worker).
    """

    version: str
    model: GTRModel
    features: FeatureConfig
    rows: Rows
    config: dict[str, Any]
    cache: RowCache = field(default_factory=RowCache)
    content: dict[str, tuple[tuple[int, ...], Tensor]] = field(default_factory=dict)


def checkpoint_features(config: dict[str, Any]) -> FeatureConfig:
    """The feature config a checkpoint was trained with (its `build` section; defaults for a
    checkpoint written without one)."""
    build = config.get("build", {})
    return FeatureConfig(**build["features"]) if "features" in build else FeatureConfig()


def load_model(
    path: str | PathLike[str], version: str | None = None, device: str = "cpu"
) -> LoadedModel:
    """Load a checkpoint into a LoadedModel (weights_only; the config travels with it).

    Raises:
        ModelLoadError: the file cannot be served (its cause chained).
    """
    try:
        model, config = load_checkpoint(path, map_location=device)
        features = checkpoint_features(config)
        if version is None:
            version = hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]
        rows = rows_for(model)
    except _LOAD_ERRORS as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(
            f"{path}: not a servable checkpoint ({type(exc).__name__}: {first})"
        ) from exc
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(version, model, features, rows, config)


@dataclass(frozen=True)
class ContentBuffer:
    """One streamer's segment buffer for the content encoder: its pooled features, oldest
    first (at most L; a modality absent from a segment is None).

    Example:
        >>> ContentBuffer("a1", ((None, None, None),)).author_id
        'a1'
    """

    author_id: str
    segments: tuple[tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None], ...]


def encode_buffers(
    loaded: LoadedModel, buffers: Sequence[ContentBuffer], frame_dim: int, text_dim: int
) -> Tensor:
    """The content encoder's outputs for `buffers`, as the training collate feeds it (segments
    right-aligned in L slots, float16 features as float32, masks from the present modalities):
    (len(buffers), D_enc), inference mode."""
    encoder = loaded.model.content
    if encoder is None:
        raise ValueError(f"model {loaded.version} has no content encoder")
    u, seg = len(buffers), loaded.features.segments
    visual = np.zeros((u, seg, frame_dim), np.float32)
    speech = np.zeros((u, seg, text_dim), np.float32)
    comments = np.zeros((u, seg, text_dim), np.float32)
    present = np.zeros((u, seg, 3), bool)
    valid = np.zeros((u, seg), bool)
    for i, buf in enumerate(buffers):
        segs = buf.segments[-seg:]
        off = seg - len(segs)
        for j, feats in enumerate(segs):
            valid[i, off + j] = True
            for m, (vec, arr) in enumerate(zip(feats, (visual, speech, comments), strict=True)):
                if vec is not None:
                    arr[i, off + j] = vec
                    present[i, off + j, m] = True
    rows = loaded.rows.content_author_rows
    batch = SegmentBatch(
        visual=torch.from_numpy(visual),  # (U, L, d_v)
        speech=torch.from_numpy(speech),  # (U, L, d_s)
        comments=torch.from_numpy(comments),  # (U, L, d_t)
        segment_mask=torch.from_numpy(valid),
        modality_mask=torch.from_numpy(present.any(axis=1)),
        author_ids=torch.tensor([id_row(b.author_id, rows) for b in buffers], dtype=torch.long),
        segment_modality_mask=torch.from_numpy(present),
    )
    device = loaded.model.logit_offset.device
    with torch.inference_mode():
        out: Tensor = encoder(batch.to(device)).embedding  # (U, D_enc)
        return out


class ModelHolder:
    """The serving model, swappable while requests are in flight.

    Example:
        >>> h = ModelHolder()
        >>> h.version is None
        True
    """

    def __init__(self, loaded: LoadedModel | None = None) -> None:
        self._lock = threading.Lock()
        self._current = loaded
        self.swaps = 0

    @property
    def version(self) -> str | None:
        """Version of the current model (None before the first load)."""
        current = self._current
        return None if current is None else current.version

    def current(self) -> LoadedModel:
        """The model to use for one whole request (take it once per request)."""
        current = self._current
        if current is None:
            raise NoModelError("no model loaded yet")
        return current

    def swap(self, loaded: LoadedModel) -> LoadedModel | None:
        """Make `loaded` current (one reference assignment); returns the previous one."""
        with self._lock:
            previous, self._current = self._current, loaded
            self.swaps += 1
        return previous

    def load(self, path: str | PathLike[str], version: str | None = None) -> LoadedModel:
        """Load a checkpoint off to the side, then swap it in."""
        loaded = load_model(path, version)
        self.swap(loaded)
        return loaded


def predict_snapshots(
    loaded: LoadedModel,
    snapshots: Sequence[FeatureSnapshot],
    store: MemorySegmentStore | None,
    content: Tensor | None = None,
) -> np.ndarray:
    """P(gift within 1 h) of each snapshot: one batch, inference mode. (N,) float64.

    `content` (N, D_enc): precomputed content encoder outputs, one per snapshot, instead of
    running the encoder over segments from `store`.
    """
    if not snapshots:
        return np.zeros(0)
    user = snapshots[0].user
    rows = loaded.rows
    if content is not None:
        rows = replace(rows, with_content=False)
    if all(s.user is user for s in snapshots):  # one score request: user side once
        batch = collate_request(snapshots, loaded.features, rows, store, loaded.cache)
    else:
        batch = collate(snapshots, loaded.features, rows, store)
    device = loaded.model.logit_offset.device
    if content is not None and loaded.rows.with_content:
        if content.shape[0] != len(snapshots):
            raise ValueError(f"content has {content.shape[0]} rows for {len(snapshots)} snapshots")
        batch = replace(batch, content_index=torch.arange(len(snapshots)))  # buffer i: impression i
        content = content.to(device)  # (N, D_enc)
    else:
        content = None
    with torch.inference_mode():
        logits = loaded.model(batch.to(device), content_embedding=content).logits["gift"]
        return torch.sigmoid(logits).double().cpu().numpy()


def score_request(
    loaded: LoadedModel,
    request: ScoreRequest,
    user: UserFeatures,
    authors: Sequence[AuthorFeatures],
    user_state: UserState | None,
    store: MemorySegmentStore | None,
    clock: Callable[[], float] = time.perf_counter,
    now_ms: int | None = None,
    content: Tensor | None = None,
) -> ScoreResponse:
    """Score every candidate of `request`; `authors` are their streamer sides, in order.

    The response keeps the candidates' order, carries the model version and the latency
    measured with `clock` (seconds), and sets `error` instead of raising on bad input.
    `content`: precomputed content encoder outputs of the candidates (see `encode_buffers`).
    """
    t0 = clock()
    ts = request.ts_ms if now_ms is None else now_ms

    def reply(scores: list[AuthorScore], error: str | None = None) -> ScoreResponse:
        return ScoreResponse(
            request_id=request.request_id,
            user_id=request.user_id,
            scores=scores,
            model_version=loaded.version,
            latency_ms=max(0.0, (clock() - t0) * 1000.0),
            ts_ms=ts,
            error=error,
        )

    ids = [a.author_id for a in authors]
    if ids != list(request.candidate_author_ids):
        return reply([], "streamer features do not match the request's candidates")
    if user.user_id != request.user_id:
        return reply([], f"user features are for {user.user_id!r}, not {request.user_id!r}")
    snaps = [
        snapshot_features(f"{request.request_id}:{i}", request.ts_ms, user, a, user_state)
        for i, a in enumerate(authors)
    ]
    p = predict_snapshots(loaded, snaps, store, content)
    if not np.isfinite(p).all():
        return reply([], "model produced a non-finite score")
    return reply([AuthorScore(author_id=a, score=float(s)) for a, s in zip(ids, p, strict=True)])
