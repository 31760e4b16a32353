"""Component `serving`: score requests over Kafka and HTTP on a hot-swapped model, h_m cached.
It needs `joiner` in the same worker: it reads the user rows the joiner keeps.

- agent over `score.requests` (key user): each `ScoreRequest` is answered on `score.responses`
  (key user) with a `ScoreResponse` (scores in candidate order, model version, latency), or with
  `error` set: undecodable or invalid JSON (also dead-lettered), too many candidates, unknown
  user or streamers (configurable), no model yet, views still loading. Never silence.
- `POST /mmbee/score/`: the same answer as JSON (200; 400 for a bad request, 503 while no model
  is loaded, 421 when the user's partition is on another worker).
- the served model and its content embeddings h_m (`mmbee.streams.serving_models.ModelSlot`,
  `ContentCache`): watched on `model.versions`, swapped in whole, h_m computed ahead.

A request's features are read on the event loop (the user's row, the streamer sides from the
views as of the request time); `apply` scores them on the executor (`score_request`, the cached
h_m passed to the model as `content_embedding`). Serving keeps no state of its own (state and
codec None): the user rows are the joiner's, the model and h_m a cache rebuilt on start.

Example:
    >>> from mmbee.settings import Settings
    >>> config(Settings(serving_max_candidates=50)).max_candidates
    50
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import faust
import torch
from faust.types import TP, EventT, StreamT

from mmbee.schemas.events import ScoreRequest, ScoreResponse
from mmbee.schemas.topics import partition_for
from mmbee.scorer.features import AuthorFeatures, UserFeatures
from mmbee.scorer.predict import LoadedModel, score_request
from mmbee.settings import Settings
from mmbee.state.users import UserState
from mmbee.streams import serving_models as shared
from mmbee.streams.codec import Rejected
from mmbee.streams.components.users import AGENT_JOINER, JoinerRuntime
from mmbee.streams.observability import observability
from mmbee.streams.runtime.agent import Envelope
from mmbee.streams.runtime.component import Component, Step
from mmbee.streams.runtime.context import StreamContext, clear_event_context, in_event_context
from mmbee.streams.views import Views, views

__all__ = ["AGENT_SERVING", "COMPONENT", "SCORE_PATH", "SCORING_FAILED", "Scoring",
           "ServingConfig", "ServingRuntime", "apply", "config", "register"]  # fmt: skip

log = logging.getLogger("mmbee.streams.components.serving")
T = TypeVar("T")
Clock = Callable[[], float]

AGENT_SERVING = "serving"
SCORE_PATH = "/mmbee/score/"
SCORING_FAILED = shared.SCORING_FAILED


@dataclass(frozen=True)
class ServingConfig:
    """How requests are answered and models picked up: the `model.versions` key and a file to
    watch (None: the topic only), how often both are checked, the most candidates, whether a user
    / candidate with no state here is an error (False: scored cold), threads, feature widths."""

    model_name: str = "gtr"
    model_path: Path | None = None
    poll_s: float = 0.5
    max_candidates: int = 300
    reject_unknown_users: bool = True
    reject_unknown_authors: bool = True
    threads: int = 1
    frame_dim: int = 1280
    text_dim: int = 384


def config(s: Settings) -> ServingConfig:
    """The serving config under these settings."""
    return ServingConfig(
        s.serving_model_name, s.serving_model_path, s.serving_poll_s, s.serving_max_candidates,
        s.serving_reject_unknown_users, s.serving_reject_unknown_authors, s.serving_threads,
        s.frame_dim, s.text_dim,
    )  # fmt: skip


@dataclass(frozen=True)
class Scoring:
    """A valid request and what it is scored on, as read on the event loop."""

    request: ScoreRequest
    model: LoadedModel
    user: UserFeatures
    user_state: UserState | None
    sides: list[AuthorFeatures]
    content: torch.Tensor | None  # (B, D_enc) the candidates' h_m (None: no content branch)


def apply(cfg: ServingConfig, state: None, item: Scoring) -> Step[None, ScoreResponse]:
    """The response to one request: scores in candidate order, or `error` set (never raises on
    bad input). Its `latency_ms` is 0 here: the runtime measures the whole answer."""
    resp = score_request(item.model, item.request, item.user, item.sides, item.user_state,
                         None, lambda: 0.0, content=item.content)  # fmt: skip
    return Step(None, outputs=(resp,))


class ServingRuntime:
    """The serving worker: the model slot, its content cache, request answering (`joiner`:
    whose user rows it reads; `clock`: seconds, for latencies)."""

    def __init__(self, ctx: StreamContext, config: ServingConfig, views: Views,
                 joiner: JoinerRuntime, clock: Clock = time.perf_counter) -> None:  # fmt: skip
        self.ctx, self.config, self.views = ctx, config, views
        self.joiner, self.clock = joiner, clock
        self.envelope = Envelope(ctx, AGENT_SERVING, ("score.requests",))
        self.executor = ThreadPoolExecutor(config.threads, thread_name_prefix="mmbee-serving")
        self.obs = observability(ctx)
        self.cache = shared.ContentCache(views, config.frame_dim, config.text_dim)
        slot = (ctx, AGENT_SERVING, config.model_name, config.model_path, self.cache)
        self.models = m = shared.ModelSlot(*slot, self._blocking)
        self.holder, self.describe, self.poll_models = m.holder, m.describe, m.poll

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def error(self, request_id: str, user_id: str, error: str, t0: float, ts: int) -> ScoreResponse:
        """An error response (counted)."""
        self.ctx.metrics.count(AGENT_SERVING, "errors")
        latency = max(0.0, (self.clock() - t0) * 1000.0)
        return ScoreResponse(request_id=request_id[:256], user_id=user_id[:256], ts_ms=ts,
                             model_version=self.holder.version or "", latency_ms=latency,
                             error=error)  # fmt: skip

    def validate(self, req: ScoreRequest, partition: int) -> str | None:
        """Why this request cannot be scored here (None: it can)."""
        cfg, views, n = self.config, self.views, len(req.candidate_author_ids)
        if n > cfg.max_candidates:
            return f"too many candidates: {n} > {cfg.max_candidates}"
        if self.holder.version is None:
            return "no model loaded yet"
        if not views.reader.caught_up.is_set():
            return "worker is starting: its views are still loading"
        uid = req.user_id
        if cfg.reject_unknown_users and self.joiner.user_row(partition, uid) is None:
            if views.user_exp.latest(uid) is None:
                return f"unknown user {uid!r}: no history on this worker"
        if cfg.reject_unknown_authors:
            return shared.unknown_streamers(req.candidate_author_ids, views.sources.known_author)
        return None

    async def answer(self, raw: bytes | None, key: bytes | None, partition: int, t0: float,
                     event: EventT | None) -> ScoreResponse:  # fmt: skip
        """The response to one raw request (never raises on bad input)."""
        decoded = self.ctx.codec.decode(ScoreRequest, raw, max_bytes=1 << 20)
        if isinstance(decoded, Rejected):
            rid, uid = shared.request_ids(raw, key)
            if event is not None:  # over Kafka; an HTTP caller only gets the error
                await self.envelope.rejected(event, decoded)
            return self.error(rid, uid, f"bad request ({decoded.reason}): {decoded.detail}", t0, 0)
        assert isinstance(decoded, ScoreRequest)
        return await self.score(decoded, partition, t0, event)

    async def score(self, req: ScoreRequest, partition: int, t0: float,
                    event: EventT | None = None) -> ScoreResponse:  # fmt: skip
        """Score a valid request: features on the loop, `apply` on the executor."""
        if event is not None:
            in_event_context(event)
        else:
            clear_event_context()
        problem = self.validate(req, partition)
        if problem is not None:
            return self.error(req.request_id, req.user_id, problem, t0, req.ts_ms)
        loaded = self.holder.current()  # one whole model for this request
        try:
            row = self.joiner.user_row(partition, req.user_id)
            user, state, sides = shared.request_features(self.views.sources, row, req, loaded)
            content, misses = self.cache.lookup(loaded, sides)
            item = Scoring(req, loaded, user, state, sides, None)
            resp = await self._blocking(self._infer, item, content, misses)
        except shared.SCORING_ERRORS as exc:  # a model that does not fit the data here, or a bug
            log.exception("scoring_failed request_id=%s version=%s", req.request_id, loaded.version)
            self.ctx.metrics.count(AGENT_SERVING, "failures")
            why = f"{SCORING_FAILED}: {type(exc).__name__}: {exc}"[:2000]
            return self.error(req.request_id, req.user_id, why, t0, req.ts_ms)
        latency = max(0.0, (self.clock() - t0) * 1000.0)
        resp = resp.model_copy(update={"latency_ms": latency})
        self.obs.observe_scoring_latency(latency / 1000.0)
        shared.count_scored(self.ctx.metrics, AGENT_SERVING, req, resp, len(misses))
        return resp

    def _infer(self, item: Scoring, content: list[torch.Tensor | None],
               misses: list[shared.Miss]) -> ScoreResponse:  # fmt: skip
        """On the executor: encode the h_m misses into `content`, then the step."""
        if item.model.rows.with_content:
            self.cache.fill(item.model, content, misses)
            matrix = torch.stack(content)  # type: ignore[arg-type]  # (B, D_enc)
            item = replace(item, content=matrix)
        return apply(self.config, None, item).outputs[0]

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def register(ctx: StreamContext) -> None:
    """The request agent, `POST /mmbee/score/`, the model watcher, the content embedding timer
    and `/mmbee/serving/`."""
    joiner = ctx.runtimes.get(AGENT_JOINER)
    if not isinstance(joiner, JoinerRuntime):
        raise RuntimeError(
            "component 'serving' needs component 'joiner' in the same worker (it reads the user "
            "state the joiner keeps); list 'joiner' before 'serving'"
        )
    settings = ctx.settings
    runtime = ServingRuntime(ctx, config(settings), views(ctx), joiner)
    ctx.runtimes[AGENT_SERVING] = runtime
    requests_topic = ctx.topic_name("score.requests")

    async def serving(stream: StreamT) -> None:
        async for ev in stream.events():
            t0 = runtime.clock()
            resp = await runtime.answer(ev.value, ev.key, ev.message.partition, t0, ev)
            key = resp.user_id.encode() if resp.user_id else ev.key
            await ctx.publish("score.responses", key, ctx.codec.encode(resp))
            ctx.metrics.count(AGENT_SERVING, "processed")

    ctx.app.agent(ctx.topic("score.requests"), name="mmbee.serving")(serving)
    runtime.models.register(settings.serving_poll_s)  # its timers and `/mmbee/serving/`

    @ctx.app.page(SCORE_PATH)
    class ScoreView(faust.web.View):
        async def post(self, request: faust.web.Request) -> Any:
            t0 = runtime.clock()
            raw = await request.read()
            rid, uid = shared.request_ids(raw)
            partition = partition_for(uid.encode(), settings.partitions) if uid else 0
            if uid and TP(requests_topic, partition) not in shared.assigned(ctx):
                where = f"user {uid!r} is served by the worker that owns partition {partition}"
                resp = runtime.error(rid, uid, where, t0, 0)
                return self.json(resp.model_dump(mode="json"), status=421)
            resp = await runtime.answer(raw, None, partition, t0, None)
            ctx.metrics.count(AGENT_SERVING, "http")
            return self.json(resp.model_dump(mode="json"), status=shared.http_status(resp))


COMPONENT = Component(name="serving", config=config, apply=apply, codec=None, register=register)
