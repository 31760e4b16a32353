"""The live page's top streams: the live streamers the served model ranks highest for a
reference viewer right now, and which modality of their segment buffer moved that score most.

Reference audience: one viewer the model knows nothing about (no history, no expansions), so
the ranking shows what the streamer side alone (its state, graph expansions and content) is
worth to the model, the same for every worker and every refresh. Attribution: an ablation, not
MFQ attention: for each of the top streams the buffer is re-encoded with one modality removed
(visual, speech or comments treated as absent in every segment, as the encoder sees a segment
without it) and scored again; the modality whose removal changes the score most is named, with
the change. It works for every content encoder (MFQ, CVA, VBF++, mean-pool), measures the
score the operator sees rather than an internal weight, and costs 3 extra encoder passes over
the top streams only (docs/operations.md, "The live page").

Computed only when a page asks, at most once per `ttl_s` however many pages are open, on a
thread of its own (off the event loop, and not queued behind or ahead of score requests on the
serving executor; forward passes in inference mode share the model safely).

Example:
    >>> from mmbee.scorer.predict import ContentBuffer
    >>> buf = ContentBuffer("a1", ((None, None, None),))
    >>> ablate(buf, 0).segments
    ((None, None, None),)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from mmbee.schemas.events import MAX_CANDIDATES, ScoreRequest
from mmbee.scorer.features import AuthorFeatures, author_features
from mmbee.scorer.predict import ContentBuffer, LoadedModel, encode_buffers, score_request

if TYPE_CHECKING:
    from mmbee.streams.runtime.context import StreamContext
    from mmbee.streams.views import SegmentEntry, SegmentView

__all__ = ["MODALITIES", "REFERENCE_VIEWER", "TopStreams", "ablate", "live_streams", "rank"]

MODALITIES = ("visual", "speech", "comments")
"""The content modalities, in the order of a segment's features (frames, ASR, comments)."""
REFERENCE_VIEWER = "mmbee-page-reference-viewer"
"""The user id of the reference viewer (a cold user: nothing of it is on any worker)."""


def ablate(buffer: ContentBuffer, modality: int) -> ContentBuffer:
    """`buffer` with modality `modality` (index into `MODALITIES`) absent from every segment."""
    segs = tuple(
        tuple(None if m == modality else v for m, v in enumerate(seg)) for seg in buffer.segments
    )
    return ContentBuffer(buffer.author_id, segs)  # type: ignore[arg-type]


def live_streams(view: SegmentView, within_ms: int) -> list[tuple[str, SegmentEntry]]:
    """(author, newest closed segment) of the streamers whose newest segment ended within
    `within_ms` of the newest segment of any streamer (the stream's "now"), newest first."""
    now = view.newest_end_ms
    out = [(a, es[-1]) for a, es in view.by_author.items() if es and es[-1].end_ms >= now - within_ms]
    out.sort(key=lambda x: (-x[1].end_ms, x[0]))
    return out[:MAX_CANDIDATES]


def _scores(
    loaded: LoadedModel, ts_ms: int, user: Any, state: Any, sides: Sequence[AuthorFeatures],
    content: Any,
) -> np.ndarray:  # fmt: skip
    req = ScoreRequest(
        request_id="page", user_id=REFERENCE_VIEWER,
        candidate_author_ids=[s.author_id for s in sides], ts_ms=ts_ms,
    )  # fmt: skip
    resp = score_request(loaded, req, user, sides, state, None, content=content)
    if resp.error is not None:
        raise ValueError(resp.error)
    return np.asarray([s.score for s in resp.scores], dtype=np.float64)


def rank(
    loaded: LoadedModel, ts_ms: int, user: Any, state: Any, sides: Sequence[AuthorFeatures],
    buffers: Sequence[ContentBuffer], n: int, frame_dim: int, text_dim: int,
    cached: Sequence[Tensor | None] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Score every streamer of `sides` for the reference viewer; return the top `n`, best
    first, each with its score and, when the model reads content, the score change when each
    modality is removed (`without`: modality -> score without it minus score with it, None when
    the buffer never had that modality) and the modality that moved it most (`moved_by`).
    `cached`: content encoder outputs (D_enc,) already computed for these buffers (serving's
    cache), None where there is none. Runs the encoder and the model (call it off the event
    loop)."""
    with_content = loaded.rows.with_content
    content = None
    if with_content:
        have = list(cached) if cached is not None else [None] * len(buffers)
        todo = [i for i, c in enumerate(have) if c is None]
        if todo:
            enc = encode_buffers(loaded, [buffers[i] for i in todo], frame_dim, text_dim)
            for i, vec in zip(todo, enc, strict=True):
                have[i] = vec
        content = torch.stack(have)  # type: ignore[arg-type]  # (B, D_enc)
    full = _scores(loaded, ts_ms, user, state, sides, content)
    top = [int(i) for i in np.argsort(-full, kind="stable")[:n]]
    scores = [float(full[i]) for i in top]
    deltas: list[dict[str, float | None]] = [{} for _ in top]
    if with_content and top:
        top_sides = [sides[i] for i in top]
        for m, name in enumerate(MODALITIES):
            present = [any(seg[m] is not None for seg in buffers[i].segments) for i in top]
            ablated = [ablate(buffers[i], m) for i in top]
            enc = encode_buffers(loaded, ablated, frame_dim, text_dim)  # (n, D_enc)
            without = _scores(loaded, ts_ms, user, state, top_sides, enc)
            for d, had, s, base in zip(deltas, present, without, scores, strict=True):
                d[name] = round(float(s) - base, 6) if had else None
    out = []
    for i, score, d in zip(top, scores, deltas, strict=True):
        moved = {k: v for k, v in d.items() if v is not None}
        out.append({
            "author_id": sides[i].author_id, "score": score, "without": d,
            "moved_by": max(moved, key=lambda k: abs(moved[k])) if moved else None,
        })  # fmt: skip
    return out


def _timed_rank(*args: Any) -> tuple[list[dict[str, Any]], float]:
    """`rank(*args)` and the CPU seconds this thread spent on it."""
    t0 = time.thread_time()
    out = rank(*args)
    return out, time.thread_time() - t0


def _segment(e: SegmentEntry) -> dict[str, Any]:
    return {
        "start_ms": e.start_ms,
        "end_ms": e.end_ms,
        "frames": e.counts[0],
        "speech": e.counts[1],
        "comments": e.counts[2],
    }


@dataclass
class TopStreams:
    """The top-streams panel of one worker, cached for `ttl_s`.

    Args:
        ctx: the stream context (its `views` and `serving` runtimes are read).
        n: streams listed.
        ttl_s: an answer is reused this long (every open page refreshes every few seconds).
        live_within_ms: a streamer is live when its newest segment ended this close to the
            newest segment seen (None: 10 segment lengths).
        clock: monotonic seconds.
    """

    ctx: StreamContext
    n: int = 10
    ttl_s: float = 2.0
    live_within_ms: int | None = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._cached: tuple[float, dict[str, Any]] | None = None
        self.computed = 0

    async def get(self) -> dict[str, Any]:
        """The panel's data (recomputed when older than `ttl_s`)."""
        async with self._lock:
            now = self.clock()
            if self._cached is not None and now - self._cached[0] < self.ttl_s:
                return self._cached[1]
            data = await self._compute()
            self.computed += 1
            self._cached = (self.clock(), data)
            return data

    async def _compute(self) -> dict[str, Any]:
        from mmbee.streams.components.serving import ServingRuntime
        from mmbee.streams.views import Views

        cpu0 = time.thread_time()
        settings = self.ctx.settings
        within = self.live_within_ms or 10 * settings.segment_ms
        views = self.ctx.runtimes.get("views")
        base: dict[str, Any] = {
            "reference": "a viewer with no history (cold user)",
            "attribution": "ablation: score without one modality, minus the score",
            "live_within_s": within / 1000,
        }
        if not isinstance(views, Views):
            return {**base, "streams": [], "note": "this worker holds no segment views "
                    "(components without joiner/serving)"}  # fmt: skip
        live = live_streams(views.segments, within)
        if not live:
            return {**base, "streams": [], "note": "no closed segment yet"}
        ts = views.segments.newest_end_ms + settings.allowed_lateness_ms + 1
        base["ts_ms"] = ts
        runtime = self.ctx.runtimes.get("serving")
        loaded = None
        if isinstance(runtime, ServingRuntime):
            try:
                loaded = runtime.holder.current()
            except RuntimeError:  # no model yet
                loaded = None
        length = settings.segments_kept if loaded is None else loaded.features.segments
        # the segment buffer a request at `ts` reads (at most L of the latest live session)
        held = {a: views.segments.buffer(a, None, ts, length) for a, _ in live}
        rows = {a: {"author_id": a, "live_id": e.live_id, "segment": _segment(e),
                    "segments": len(held[a])} for a, e in live}  # fmt: skip
        if loaded is None or not isinstance(runtime, ServingRuntime):
            listed = [{**rows[a], "score": None, "moved_by": None, "without": {}}
                      for a, _ in live[: self.n]]  # fmt: skip
            return {**base, "streams": listed, "model": None,
                    "note": "no model loaded: newest live streams, unscored"}  # fmt: skip
        sources = views.sources
        feats = loaded.features
        from mmbee.state.users import user_side_now

        user, state = user_side_now(REFERENCE_VIEWER, None, sources, ts, feats)
        sides = [
            author_features(
                a, None, ts, sources.author_state(a, ts), sources.author_expansions(a, ts), feats
            )
            for a, _ in live
        ]
        buffers = [
            ContentBuffer(a, tuple(e.features for e in held[a] if e.features is not None))
            for a, _ in live
        ]
        # serving's content cache, where it was computed from the same segments (its keys are
        # the buffer's segment starts, as here)
        cached = []
        for a, _ in live:
            hit = loaded.content.get(a)
            keys = tuple(e.start_ms for e in held[a])
            cached.append(hit[1] if hit is not None and hit[0] == keys else None)
        cfg = runtime.config
        loop_cpu_s = time.thread_time() - cpu0
        t0 = time.perf_counter()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="mmbee-page")
        ranked, rank_cpu_s = await asyncio.get_running_loop().run_in_executor(
            self._executor, _timed_rank, loaded, ts, user, state, sides, buffers, self.n,
            cfg.frame_dim, cfg.text_dim, cached,
        )  # fmt: skip
        compute_ms = (time.perf_counter() - t0) * 1000
        streams = [{**rows[r["author_id"]], **r} for r in ranked]
        return {**base, "streams": streams, "model": loaded.version, "scored": len(live),
                "content_cached": sum(c is not None for c in cached),
                "compute_ms": round(compute_ms, 1),
                "cpu_ms": round(1000 * (loop_cpu_s + rank_cpu_s), 2)}  # fmt: skip
