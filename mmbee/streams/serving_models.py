"""Serving's shared parts: the served model, the content embeddings h_m, the request helpers.

- `ContentCache`: h_m per streamer, computed with the served model's content encoder, kept
  with the model (`LoadedModel.content`) under the segment keys it was computed from. A segment
  that closes marks its streamer dirty (a listener on the segment view); a timer encodes the
  dirty ones in one batch; a request encodes only the streamers whose segments closed since.
- `ModelSlot`: which model serves, and how a new one comes in. It watches `model.versions`
  (compacted; the latest `ModelVersion` of `serving_model_name`) and, optionally, a checkpoint
  path. A new checkpoint is loaded on the executor, every streamer's h_m is computed with it,
  and only then is it swapped in (one reference assignment in `ModelHolder`): no request sees a
  half-loaded model. A checkpoint that fails to load is remembered and never retried; the model
  before it keeps serving.
- request helpers of `mmbee.streams.components.serving`, kept here so that the component reads
  as its request path: the features a request is scored on (`request_features`), the
  unknown-streamer error, the ids of an undecodable request (`request_ids`), its counters and
  HTTP status, this worker's partitions.

Example:
    >>> ContentCache.__name__, ModelSlot.__name__
    ('ContentCache', 'ModelSlot')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faust
import torch

from mmbee.schemas.events import ScoreRequest, ScoreResponse
from mmbee.schemas.serving import ModelVersion
from mmbee.scorer.features import AuthorFeatures, UserFeatures, author_features
from mmbee.scorer.predict import (
    ContentBuffer,
    LoadedModel,
    ModelHolder,
    encode_buffers,
    load_model,
)
from mmbee.state.users import FeatureSources, UserRow, UserState, user_side_now
from mmbee.streams.metrics import StreamMetrics
from mmbee.streams.observability import observability
from mmbee.streams.views import Views

if TYPE_CHECKING:
    from mmbee.streams.runtime.context import StreamContext

__all__ = [
    "LOAD_ERRORS",
    "SCORING_ERRORS",
    "SCORING_FAILED",
    "ContentCache",
    "Miss",
    "ModelSlot",
    "assigned",
    "count_scored",
    "http_status",
    "request_features",
    "request_ids",
    "unknown_streamers",
]

log = logging.getLogger("mmbee.streams.components.serving")

SCORING_ERRORS = (RuntimeError, ValueError, IndexError, KeyError, TypeError)
"""What a forward pass or a feature read may raise on data the model does not fit."""
LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError)
"""What loading an announced checkpoint may raise (`ModelLoadError` is a ValueError; a
sha256 mismatch too; RuntimeError: its content encoder does not fit the segments here)."""

SCORING_FAILED = "scoring failed"
"""Prefix of the error of a request whose scoring raised (HTTP 500)."""

Miss = tuple[int, ContentBuffer, tuple[int, ...]]
"""A candidate whose h_m is not cached: (its index in the request, its buffer, segment keys)."""


class ContentCache:
    """The served model's h_m per streamer.

    Args:
        views: the segment view the buffers are read from.
        frame_dim, text_dim: widths of the segment features.
    """

    def __init__(self, views: Views, frame_dim: int, text_dim: int) -> None:
        self.views = views
        self.frame_dim = frame_dim
        self.text_dim = text_dim
        self.dirty: dict[str, None] = {}  # streamers with a segment closed since the last pass
        views.segment_listeners.append(self.segment_closed)

    def segment_closed(self, author: str) -> None:
        self.dirty[author] = None

    def lookup(
        self, loaded: LoadedModel, sides: Sequence[AuthorFeatures]
    ) -> tuple[list[torch.Tensor | None], list[Miss]]:
        """Cached h_m per candidate, and the buffers to encode for the misses."""
        if not loaded.rows.with_content:
            return [], []
        out: list[torch.Tensor | None] = []
        misses = []
        for i, side in enumerate(sides):
            keys = side.segment_starts
            hit = loaded.content.get(side.author_id)
            if hit is not None and hit[0] == keys:
                out.append(hit[1])
            else:
                out.append(None)
                misses.append((i, self.buffer(side.author_id, keys), keys))
        return out, misses

    def fill(
        self, loaded: LoadedModel, content: list[torch.Tensor | None], misses: Sequence[Miss]
    ) -> None:
        """Encode the misses into `content` and the cache (on the executor)."""
        if not misses:
            return
        enc = encode_buffers(loaded, [b for _, b, _ in misses], self.frame_dim, self.text_dim)
        for (i, buf, keys), vec in zip(misses, enc, strict=True):
            content[i] = vec
            loaded.content[buf.author_id] = (keys, vec.clone())

    def buffer(self, author: str, keys: tuple[int, ...]) -> ContentBuffer:
        segs = []
        for start in keys:
            e = self.views.segments.entry(author, start)
            if e is not None and e.features is not None:
                segs.append(e.features)
        return ContentBuffer(author, tuple(segs))

    def stale(
        self, loaded: LoadedModel, authors: Sequence[str]
    ) -> list[tuple[ContentBuffer, tuple[int, ...]]]:
        """The current segment buffer of each author whose cached h_m is out of date."""
        out = []
        far = 1 << 62
        for a in authors:
            keys = tuple(
                e.start_ms
                for e in self.views.segments.buffer(a, None, far, loaded.features.segments)
            )
            hit = loaded.content.get(a)
            if hit is None or hit[0] != keys:
                out.append((self.buffer(a, keys), keys))
        return out

    def encode_into(
        self, loaded: LoadedModel, items: Sequence[tuple[ContentBuffer, tuple[int, ...]]]
    ) -> int:
        """Encode `items` into the model's cache (on the executor), 256 at a time."""
        for lo in range(0, len(items), 256):
            chunk = items[lo : lo + 256]
            enc = encode_buffers(loaded, [b for b, _ in chunk], self.frame_dim, self.text_dim)
            for (buf, keys), vec in zip(chunk, enc, strict=True):
                loaded.content[buf.author_id] = (keys, vec.clone())
        return len(items)


class ModelSlot:
    """The served model: loading, swapping, watching for new ones, and the h_m refresh.

    Args:
        ctx: the stream context (metrics, clock).
        agent: the agent's name in metrics.
        model_name: the `model.versions` key to follow.
        model_path: a checkpoint file to follow too (None: the topic only).
        cache: the content cache of the served model.
        blocking: runs a function on serving's executor.
    """

    def __init__(
        self, ctx: StreamContext, agent: str, model_name: str, model_path: Path | None,
        cache: ContentCache, blocking: Callable[..., Awaitable[Any]],
    ) -> None:  # fmt: skip
        self.ctx = ctx
        self.agent = agent
        self.model_name = model_name
        self.model_path = model_path
        self.cache = cache
        self.blocking = blocking
        self.holder = ModelHolder()
        self.loading = False
        self.failed: set[str] = set()
        self.topic_version: str | None = None
        self.last_failure: str | None = None
        self.source: dict[str, Any] = {}
        self._path_stamp: tuple[int, int] | None = None
        self.obs = observability(ctx)

    def _load(self, path: Path, version: str | None, sha256: str | None) -> LoadedModel:
        data = path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"{path}: sha256 differs from the announced one")
        torch.set_num_threads(1)
        loaded = load_model(path, version)
        if loaded.rows.with_content:  # every streamer's h_m before anyone can see the model
            cache = self.cache
            cache.encode_into(loaded, cache.stale(loaded, list(cache.views.segments.by_author)))
        return loaded

    async def swap_to(
        self, path: Path, version: str | None = None, sha256: str | None = None,
        source: dict[str, Any] | None = None,
    ) -> LoadedModel:  # fmt: skip
        """Load a checkpoint off the event loop (weights and content embeddings), then make it
        current in one step."""
        self.loading = True
        try:
            loaded = await self.blocking(self._load, path, version, sha256)
        finally:
            self.loading = False
        previous = self.holder.swap(loaded)
        self.source = dict(source or {}, path=str(path), version=loaded.version)
        self.obs.set_model_version(loaded.version, loaded_at_ms=self.ctx.clock_ms())
        self.ctx.metrics.count(self.agent, "swaps")
        log.info(
            "model_swapped version=%s previous=%s path=%s",
            loaded.version,
            None if previous is None else previous.version,
            path,
        )
        await self.refresh_content(everyone=True)  # segments that closed while it loaded
        return loaded

    async def poll(self) -> None:
        """Pick up a new `model.versions` entry, or a changed checkpoint file.

        A topic version is loaded once: after it was swapped in (or failed) only a newer
        announcement moves the topic side again, so a checkpoint file changed in between
        (`model_path`) stays served until then instead of flipping back.
        """
        views = self.cache.views
        if self.loading or not views.reader.caught_up.is_set():
            return
        mv: ModelVersion | None = views.models.get(self.model_name)
        if mv is not None and mv.version != self.topic_version and mv.version not in self.failed:
            try:
                await self.swap_to(
                    Path(mv.path), mv.version, mv.sha256, {"kind": "topic", "source": mv.source}
                )
            except LOAD_ERRORS as exc:
                self.failed.add(mv.version)
                self._load_failed(mv.path, exc)
            else:
                self.topic_version = mv.version
            return
        path = self.model_path
        if path is None:
            return
        try:
            st = os.stat(path)
        except OSError:  # not there (yet)
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._path_stamp:
            return
        self._path_stamp = stamp  # a failed file is retried when it changes again
        try:
            await self.swap_to(path, None, None, {"kind": "path"})
        except LOAD_ERRORS as exc:
            self._load_failed(str(path), exc)

    async def refresh_content(self, everyone: bool = False) -> int:
        """Encode the streamers whose segments changed (all of them: `everyone`) with the
        served model; returns how many were encoded."""
        cache = self.cache
        try:
            loaded = self.holder.current()
        except RuntimeError:
            return 0
        if not loaded.rows.with_content:
            cache.dirty.clear()
            return 0
        authors = list(cache.views.segments.by_author) if everyone else list(cache.dirty)
        cache.dirty.clear()
        items = cache.stale(loaded, authors)
        if not items:
            return 0
        try:
            n = int(await self.blocking(cache.encode_into, loaded, items))
        except SCORING_ERRORS:
            # the streamers stay uncached: their requests encode inline and answer the error
            log.exception("content_encoding_failed version=%s authors=%d", loaded.version,
                          len(items))  # fmt: skip
            self.ctx.metrics.count(self.agent, "content_failures")
            return 0
        self.ctx.metrics.count(self.agent, "content_encoded", n)
        return n

    def register(self, poll_s: float) -> None:
        """Declare on the app: the model watcher (every `poll_s`), the h_m timer (encodes the
        streamers whose segments closed, unless a model is loading) and `/mmbee/serving/`."""
        app = self.ctx.app

        @app.timer(poll_s, name="mmbee.serving.models")
        async def poll_models() -> None:
            await self.poll()

        @app.timer(0.05, name="mmbee.serving.content")
        async def content_embeddings() -> None:
            if self.cache.dirty and not self.loading:
                await self.refresh_content()

        @app.page("/mmbee/serving/")
        async def serving_state(view: faust.web.View, request: faust.web.Request) -> Any:
            return view.json(self.describe())

    def _load_failed(self, path: str, exc: BaseException) -> None:
        self.ctx.metrics.count(self.agent, "load_failures")
        self.last_failure = f"{type(exc).__name__}: {exc}"[:2000]
        log.error("model_load_failed path=%s error=%s", path, self.last_failure)

    def describe(self) -> dict[str, Any]:
        """The served model and cache sizes (`/mmbee/serving/`)."""
        state = {
            "loading": self.loading,
            "failed": sorted(self.failed),
            "last_failure": self.last_failure,
        }
        try:
            loaded = self.holder.current()
        except RuntimeError:
            return {"model": None, "version": None, **state}
        return {
            "model": self.source,
            "version": loaded.version,
            "variant": loaded.model.config.variant,
            "content_cached": len(loaded.content),
            "swaps": self.holder.swaps,
            **state,
        }


# --- requests ---------------------------------------------------------------------------------
def request_features(
    sources: FeatureSources, row: UserRow | None, req: ScoreRequest, loaded: LoadedModel
) -> tuple[UserFeatures, UserState | None, list[AuthorFeatures]]:
    """The features `req` is scored on, as of its time (read on the event loop: they read the
    tables and views): the user side and state from the joiner's `row`, and each candidate's
    streamer side, in order."""
    ts, features = req.ts_ms, loaded.features
    user, state = user_side_now(req.user_id, row, sources, ts, features)
    sides = [
        author_features(
            a, None, ts, sources.author_state(a, ts), sources.author_expansions(a, ts), features
        )
        for a in req.candidate_author_ids
    ]
    return user, state, sides


def unknown_streamers(candidates: Sequence[str], known: Callable[[str], bool]) -> str | None:
    """The error for candidates with no state at all on this worker (None: all are known)."""
    unknown = [a for a in candidates if not known(a)]
    if not unknown:
        return None
    more = f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else ""
    return f"unknown streamers: {', '.join(map(repr, unknown[:10]))}{more}"


def request_ids(raw: bytes | None, key: bytes | None = None) -> tuple[str, str]:
    """(request_id, user_id) of an undecodable request, as far as the JSON allows; the user id
    falls back to the message `key`."""
    rid = uid = ""
    try:
        obj = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        r, u = obj.get("request_id"), obj.get("user_id")
        rid, uid = (r[:256] if isinstance(r, str) else ""), (u[:256] if isinstance(u, str) else "")
    if not uid and key:
        uid = key.decode(errors="replace")
    return rid, uid


def count_scored(
    metrics: StreamMetrics, agent: str, req: ScoreRequest, resp: ScoreResponse, misses: int
) -> None:
    """The counters of a scored request (one whose response may still carry an error)."""
    metrics.count(agent, "scored")
    metrics.count(agent, "candidates", len(req.candidate_author_ids))
    metrics.count(agent, "content_misses", misses)
    if resp.error is not None:
        metrics.count(agent, "errors")


def http_status(resp: ScoreResponse) -> int:
    """200; 503 while no model or views are ready; 500 when scoring raised; 400 otherwise."""
    if resp.error is None:
        return 200
    if resp.error.startswith(("no model", "worker is starting")):
        return 503
    return 500 if resp.error.startswith(SCORING_FAILED) else 400


def assigned(ctx: StreamContext) -> set[Any]:
    """This worker's assigned active partitions (empty without an assignor: a test context)."""
    try:
        return set(ctx.app.assignor.assigned_actives())
    except AttributeError:
        return set()
