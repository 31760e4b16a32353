"""The serving component: score requests over Kafka and HTTP, hot-swapped models, cached h_m.

Component `serving` (needs `joiner` in the same worker: it reads the user state the joiner
keeps on the same user partitions):

- agent over `score.requests` (key user): each `ScoreRequest` is answered on `score.responses`
  (key user) with a `ScoreResponse` (scores in candidate order, model version, latency), or with
  `error` set: undecodable or invalid JSON (also dead-lettered), too many candidates, unknown
  user or streamers (configurable), no model yet, views still loading. Never silence.
- `POST /mmbee/score/` with a ScoreRequest body: the same answer as JSON (200; 400 for a bad
  request, 503 while no model is loaded, 421 when the user's partition is on another worker).
- a timer that watches `model.versions` (compacted; the latest `ModelVersion` of
  `serving_model_name`) and, optionally, a checkpoint path: a new checkpoint is loaded on the
  executor, its content embeddings are computed for every streamer, and only then is it swapped
  in (one reference assignment in `ModelHolder`): no request sees a half-loaded model.
- content embeddings h_m: computed with the served model's content encoder when a segment
  closes (a listener on the segment view marks the streamer, a timer encodes the marked ones in
  one batch on the executor) and for all streamers before a swap, cached per model by the
  segment keys they were computed from. A request looks them up; only a streamer whose segment
  closed after the last pass (a cache miss) is encoded inline.

Features are the joiner's: the user side from the user's row (`user_side_now`), the streamer
side from the global views as of the request time (`ViewSources`), through the shared
`author_features` / `snapshot_features`; tensors and the forward pass run on the executor
(`serving_threads`), off the event loop.

Example:
    >>> from mmbee.settings import Settings
    >>> serving_config(Settings(serving_max_candidates=50)).max_candidates
    50
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import faust
import torch
from faust.types import TP, EventT, StreamT

from mmbee.schemas.events import ScoreRequest, ScoreResponse
from mmbee.schemas.topics import partition_for
from mmbee.scorer.features import AuthorFeatures, author_features
from mmbee.scorer.predict import (
    LoadedModel,
    score_request,
)
from mmbee.settings import Settings
from mmbee.state.users import user_side_now
from mmbee.streams.codec import Rejected
from mmbee.streams.components.joiner import AGENT_JOINER, JoinerRuntime
from mmbee.streams.observability import observability
from mmbee.streams.runtime.agent import Envelope
from mmbee.streams.runtime.context import StreamContext, clear_event_context, in_event_context
from mmbee.streams.serving_models import SCORING_ERRORS, ContentCache, Miss, ModelSlot
from mmbee.streams.views import Views, views

__all__ = [
    "AGENT_SERVING",
    "SCORE_PATH",
    "ServingConfig",
    "serving_config",
    "ServingRuntime",
    "register",
]

log = logging.getLogger("mmbee.streams.components.serving")

T = TypeVar("T")

AGENT_SERVING = "serving"
SCORE_PATH = "/mmbee/score/"
SCORING_FAILED = "scoring failed"
"""Prefix of the error of a request whose scoring raised (HTTP 500)."""


@dataclass(frozen=True)
class ServingConfig:
    """How requests are answered and models picked up.

    Attributes:
        model_name: the key followed on `model.versions`.
        model_path: a checkpoint file to serve and watch (None: only the topic).
        poll_s: how often the model version and the path are checked.
        max_candidates: more candidates in one request is an error.
        reject_unknown_users / reject_unknown_authors: answer with an error when the user /
            a candidate has no state at all on this worker (False: score them cold).
        threads: inference threads.
        frame_dim, text_dim: feature widths of the segments.

    Example:
        >>> ServingConfig().max_candidates
        300
    """

    model_name: str = "gtr"
    model_path: Path | None = None
    poll_s: float = 0.5
    max_candidates: int = 300
    reject_unknown_users: bool = True
    reject_unknown_authors: bool = True
    threads: int = 1
    frame_dim: int = 1280
    text_dim: int = 384


def serving_config(settings: Settings) -> ServingConfig:
    """The serving config under these settings."""
    return ServingConfig(
        model_name=settings.serving_model_name,
        model_path=settings.serving_model_path,
        poll_s=settings.serving_poll_s,
        max_candidates=settings.serving_max_candidates,
        reject_unknown_users=settings.serving_reject_unknown_users,
        reject_unknown_authors=settings.serving_reject_unknown_authors,
        threads=settings.serving_threads,
        frame_dim=settings.frame_dim,
        text_dim=settings.text_dim,
    )


def _request_ids(raw: bytes | None) -> tuple[str, str]:
    """(request_id, user_id) of an undecodable request, as far as the JSON allows."""
    try:
        obj = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "", ""
    if not isinstance(obj, dict):
        return "", ""
    rid, uid = obj.get("request_id"), obj.get("user_id")
    return (
        rid[:256] if isinstance(rid, str) else "",
        uid[:256] if isinstance(uid, str) else "",
    )


class ServingRuntime:
    """The serving worker's state: the model holder, its content cache, request answering.

    Args:
        ctx: the stream context.
        config: the serving config.
        views: the global views.
        joiner: the joiner runtime whose user rows serving reads.
        clock: seconds for latencies (perf_counter).
    """

    def __init__(
        self,
        ctx: StreamContext,
        config: ServingConfig,
        views: Views,
        joiner: JoinerRuntime,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.ctx = ctx
        self.envelope = Envelope(ctx, AGENT_SERVING, ("score.requests",))
        self.config = config
        self.views = views
        self.joiner = joiner
        self.clock = clock
        self.executor = ThreadPoolExecutor(config.threads, thread_name_prefix="mmbee-serving")
        self.obs = observability(ctx)
        self.cache = ContentCache(views, config.frame_dim, config.text_dim)
        self.models = ModelSlot(ctx, AGENT_SERVING, config.model_name, config.model_path,
                                self.cache, self._blocking)  # fmt: skip
        self.holder = self.models.holder
        self.swap_to = self.models.swap_to
        self.poll_models = self.models.poll
        self.refresh_content = self.models.refresh_content
        self.describe = self.models.describe

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # --- answering ------------------------------------------------------------------------
    def _error(
        self, request_id: str, user_id: str, error: str, t0: float, ts: int
    ) -> ScoreResponse:
        self.ctx.metrics.count(AGENT_SERVING, "errors")
        return ScoreResponse(
            request_id=request_id[:256],
            user_id=user_id[:256],
            model_version=self.holder.version or "",
            latency_ms=max(0.0, (self.clock() - t0) * 1000.0),
            ts_ms=ts,
            error=error,
        )

    def validate(self, req: ScoreRequest, partition: int) -> str | None:
        """Why this request cannot be scored here (None: it can)."""
        n = len(req.candidate_author_ids)
        if n > self.config.max_candidates:
            return f"too many candidates: {n} > {self.config.max_candidates}"
        if self.holder.version is None:
            return "no model loaded yet"
        if not self.views.reader.caught_up.is_set():
            return "worker is starting: its views are still loading"
        if self.config.reject_unknown_users and not self._known_user(partition, req.user_id):
            return f"unknown user {req.user_id!r}: no history on this worker"
        if self.config.reject_unknown_authors:
            unknown = [
                a for a in req.candidate_author_ids if not self.views.sources.known_author(a)
            ]
            if unknown:
                more = f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else ""
                return f"unknown streamers: {', '.join(map(repr, unknown[:10]))}{more}"
        return None

    def _known_user(self, partition: int, user_id: str) -> bool:
        return (
            self.joiner.user_row(partition, user_id) is not None
            or self.views.user_exp.latest(user_id) is not None
        )

    async def answer(
        self, raw: bytes | None, key: bytes | None, partition: int, t0: float, event: EventT | None
    ) -> ScoreResponse:
        """The response to one raw request (never raises on bad input)."""
        decoded = self.ctx.codec.decode(ScoreRequest, raw, max_bytes=1 << 20)
        if isinstance(decoded, Rejected):
            rid, uid = _request_ids(raw)
            if not uid and key:
                uid = key.decode(errors="replace")
            if event is not None:  # over Kafka; an HTTP caller only gets the error
                await self.envelope.rejected(event, decoded)
            return self._error(rid, uid, f"bad request ({decoded.reason}): {decoded.detail}", t0, 0)
        assert isinstance(decoded, ScoreRequest)
        return await self.score(decoded, partition, t0, event)

    async def score(
        self, req: ScoreRequest, partition: int, t0: float, event: EventT | None = None
    ) -> ScoreResponse:
        """Score a valid request: features on the loop, tensors and forward on the executor."""
        if event is not None:
            in_event_context(event)
        else:
            clear_event_context()
        problem = self.validate(req, partition)
        if problem is not None:
            return self._error(req.request_id, req.user_id, problem, t0, req.ts_ms)
        loaded = self.holder.current()  # one whole model for this request
        try:
            resp, n_misses = await self._features_and_infer(loaded, req, partition)
        except SCORING_ERRORS as exc:
            # a model that does not fit this worker's data (e.g. other feature widths) or a bug:
            # the caller gets the reason, the log the traceback, the metrics a count
            log.exception("scoring_failed request_id=%s version=%s", req.request_id,
                          loaded.version)  # fmt: skip
            self.ctx.metrics.count(AGENT_SERVING, "failures")
            return self._error(
                req.request_id, req.user_id, f"{SCORING_FAILED}: {type(exc).__name__}: {exc}"[:2000],
                t0, req.ts_ms,
            )  # fmt: skip
        latency = max(0.0, (self.clock() - t0) * 1000.0)
        resp = resp.model_copy(update={"latency_ms": latency})
        self.obs.observe_scoring_latency(latency / 1000.0)
        m = self.ctx.metrics
        m.count(AGENT_SERVING, "scored")
        m.count(AGENT_SERVING, "candidates", len(req.candidate_author_ids))
        m.count(AGENT_SERVING, "content_misses", n_misses)
        if resp.error is not None:
            m.count(AGENT_SERVING, "errors")
        return resp

    async def _features_and_infer(
        self, loaded: LoadedModel, req: ScoreRequest, partition: int
    ) -> tuple[ScoreResponse, int]:
        """Features on the loop (they read the tables and views), the rest on the executor;
        returns the response and the content cache misses."""
        ts = req.ts_ms
        sources = self.views.sources
        features = loaded.features
        row = self.joiner.user_row(partition, req.user_id)
        user, state = user_side_now(req.user_id, row, sources, ts, features)
        sides: list[AuthorFeatures] = [
            author_features(
                a, None, ts, sources.author_state(a, ts), sources.author_expansions(a, ts), features
            )
            for a in req.candidate_author_ids
        ]
        content, misses = self.cache.lookup(loaded, sides)
        resp = await self._blocking(self._infer, loaded, req, user, sides, state, content, misses)
        return resp, len(misses)

    def _infer(
        self,
        loaded: LoadedModel,
        req: ScoreRequest,
        user: Any,
        sides: list[AuthorFeatures],
        state: Any,
        content: list[torch.Tensor | None],
        misses: list[Miss],
    ) -> ScoreResponse:
        matrix = None
        if loaded.rows.with_content:
            self.cache.fill(loaded, content, misses)
            matrix = torch.stack(content)  # type: ignore[arg-type]  # (B, D_enc)
        return score_request(loaded, req, user, sides, state, None, self.clock, content=matrix)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def register(ctx: StreamContext) -> None:
    """Component `serving`: the request agent, `POST /mmbee/score/`, the model watcher, the
    content embedding timer and `/mmbee/serving/`."""
    joiner = ctx.runtimes.get(AGENT_JOINER)
    if not isinstance(joiner, JoinerRuntime):
        raise RuntimeError(
            "component 'serving' needs component 'joiner' in the same worker (it reads the user "
            "state the joiner keeps); list 'joiner' before 'serving'"
        )
    settings = ctx.settings
    runtime = ServingRuntime(ctx, serving_config(settings), views(ctx), joiner)
    ctx.runtimes[AGENT_SERVING] = runtime
    requests_topic = ctx.topic_name("score.requests")

    async def serving(stream: StreamT) -> None:
        async for ev in stream.events():
            t0 = runtime.clock()
            msg = ev.message
            resp = await runtime.answer(ev.value, ev.key, msg.partition, t0, ev)
            key = resp.user_id.encode() if resp.user_id else ev.key
            await ctx.publish("score.responses", key, ctx.codec.encode(resp))
            ctx.metrics.count(AGENT_SERVING, "processed")

    ctx.app.agent(ctx.topic("score.requests"), name="mmbee.serving")(serving)

    @ctx.app.timer(settings.serving_poll_s, name="mmbee.serving.models")
    async def poll_models() -> None:
        await runtime.poll_models()

    @ctx.app.timer(0.05, name="mmbee.serving.content")
    async def content_embeddings() -> None:
        if runtime.cache.dirty and not runtime.models.loading:
            await runtime.refresh_content()

    @ctx.app.page("/mmbee/serving/")
    async def serving_state(self: faust.web.View, request: faust.web.Request) -> Any:
        return self.json(runtime.describe())

    @ctx.app.page(SCORE_PATH)
    class ScoreView(faust.web.View):
        async def post(self, request: faust.web.Request) -> Any:
            t0 = runtime.clock()
            raw = await request.read()
            _, uid = _request_ids(raw)
            partition = partition_for(uid.encode(), settings.partitions) if uid else 0
            if uid and TP(requests_topic, partition) not in _assigned_requests(ctx):
                resp = runtime._error(
                    _request_ids(raw)[0], uid,
                    f"user {uid!r} is served by the worker that owns partition {partition}",
                    t0, 0,
                )  # fmt: skip
                return self.json(resp.model_dump(mode="json"), status=421)
            resp = await runtime.answer(raw, None, partition, t0, None)
            ctx.metrics.count(AGENT_SERVING, "http")
            status = 200
            if resp.error is not None:
                unavailable = resp.error.startswith(("no model", "worker is starting"))
                status = (
                    503 if unavailable else 500 if resp.error.startswith(SCORING_FAILED) else 400
                )
            return self.json(resp.model_dump(mode="json"), status=status)


def _assigned_requests(ctx: StreamContext) -> set[TP]:
    try:
        return set(ctx.app.assignor.assigned_actives())
    except AttributeError:
        return set()
