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

Example:
    >>> holder = ModelHolder()  # doctest: +SKIP
    >>> holder.swap(load_model("runs/demo/model.pt"))  # doctest: +SKIP
    >>> score_request(holder.current(), request, user, authors, user_state, store)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmbee.schemas.events import AuthorScore, ScoreRequest, ScoreResponse
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
    "LoadedModel",
    "load_model",
    "ModelHolder",
    "predict_snapshots",
    "score_request",
]


class NoModelError(RuntimeError):
    """Raised by `ModelHolder.current` before any model was loaded."""


@dataclass(frozen=True)
class LoadedModel:
    """One loaded checkpoint, ready to serve (never mutated after creation).

    Attributes:
        version: identifies the weights (given, or a digest of the checkpoint file).
        model: the GTR model, eval mode.
        features: the feature config the model was trained with.
        rows: the table sizes batches must be cut with.
        config: the whole checkpoint config.
        cache: memoised id -> table row hashing (thread-safe enough: a race only re-hashes).
    """

    version: str
    model: GTRModel
    features: FeatureConfig
    rows: Rows
    config: dict[str, Any]
    cache: RowCache = field(default_factory=RowCache)


def load_model(
    path: str | PathLike[str], version: str | None = None, device: str = "cpu"
) -> LoadedModel:
    """Load a checkpoint into a LoadedModel (weights_only; the config travels with it)."""
    model, config = load_checkpoint(path, map_location=device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    build = config.get("build", {})
    features = FeatureConfig(**build["features"]) if "features" in build else FeatureConfig()
    if version is None:
        version = hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]
    return LoadedModel(version, model, features, rows_for(model), config)


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
    loaded: LoadedModel, snapshots: Sequence[FeatureSnapshot], store: MemorySegmentStore | None
) -> np.ndarray:
    """P(gift within 1 h) of each snapshot: one batch, inference mode. (N,) float64."""
    if not snapshots:
        return np.zeros(0)
    user = snapshots[0].user
    if all(s.user is user for s in snapshots):  # one score request: user side once
        batch = collate_request(snapshots, loaded.features, loaded.rows, store, loaded.cache)
    else:
        batch = collate(snapshots, loaded.features, loaded.rows, store)
    device = loaded.model.logit_offset.device
    with torch.inference_mode():
        logits = loaded.model(batch.to(device)).logits["gift"]  # model is in eval mode
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
) -> ScoreResponse:
    """Score every candidate of `request`; `authors` are their streamer sides, in order.

    The response keeps the candidates' order, carries the model version and the latency
    measured with `clock` (seconds), and sets `error` instead of raising on bad input.
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
    p = predict_snapshots(loaded, snaps, store)
    if not np.isfinite(p).all():
        return reply([], "model produced a non-finite score")
    return reply([AuthorScore(author_id=a, score=float(s)) for a, s in zip(ids, p, strict=True)])
