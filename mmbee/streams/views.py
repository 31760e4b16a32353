"""Global views: every worker's local copy of the author-side topics (the GlobalTables of the design).

The user-partitioned joiner and serving agents need, for every streamer, state that lives on
other partitions: its time-indexed counters (`author.state`, compacted), its closed segments
(`content.segments`), the metapath expansions (`graph.author_expansions` /
`graph.user_expansions`, compacted) and the model to serve (`model.versions`, compacted). A
`GlobalReader` reads every partition of those topics from the beginning with its own aiokafka
consumer (no consumer group: every worker reads everything) and applies each message to a view:

* `AuthorView`: the latest `AuthorTimeline` per streamer (it carries its own recent history).
* `SegmentView`: per streamer its closed segments (references and visibility time) and, for
  the newest ones and those inside `retain_ms`, their pooled features (float16, like the offline
  segment store): what serving's content embeddings and the online refresh are computed from.
* `ExpansionView`: per node the versions received (`built_at_ms`), so a read *as of t* takes the
  newest entry built strictly before t; the latest one serves "now".
* `ModelView`: the latest `ModelVersion` per model name.

Why not Faust's `GlobalTable`: readers here need decoded objects (a timeline parsed once per
update, not per candidate of a request), version histories for point-in-time reads, and a
callback per update (content embeddings are recomputed when a segment closes). A table of raw
bytes would give none of them.

Point in time (`ViewSources`, the joiner's and serving's `FeatureSources`): counters are the
timeline's counts before t; a segment is visible at t when `end_ms + allowed_lateness_ms < t`
(the segment agent closes it once the stream's watermark reaches that point; the exact closing
event time is not on the message, see docs/serving.md); expansions are the newest built before t.

Example:
    >>> v = ExpansionView(keep_ms=1_000)
    >>> v.put("a1", 10, {"a2a": [("a2", 0.5)]})
    >>> v.put("a1", 20, {"a2a": [("a3", 0.5)]})
    >>> v.at("a1", 20), v.at("a1", 21)
    ({'a2a': [('a2', 0.5)]}, {'a2a': [('a3', 0.5)]})
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel

from mmbee.graph.metapaths import Expansions
from mmbee.schemas.events import SegmentClosed
from mmbee.schemas.graph import AuthorExpansions, UserExpansions
from mmbee.schemas.serving import AuthorTimeline, ModelVersion
from mmbee.schemas.types import decode_embedding, encode_embedding
from mmbee.scorer.features import AuthorState, FeatureConfig, MemorySegmentStore
from mmbee.settings import Settings
from mmbee.streams.runtime.compat import force_metadata_update

__all__ = [
    "SegmentEntry",
    "SegmentView",
    "AuthorView",
    "ExpansionView",
    "ModelView",
    "ViewSources",
    "GlobalReader",
    "feature_config",
]

log = logging.getLogger("mmbee.streams.views")


@dataclass(frozen=True)
class SegmentEntry:
    """A closed segment as a view holds it: its keys, when it becomes visible, its features
    (float16; None once it fell out of the retained set, or when the modality was absent)."""

    live_id: str
    start_ms: int
    end_ms: int
    visible_ms: int
    counts: tuple[int, int, int]
    features: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None] | None


class SegmentView:
    """Closed segments of every streamer (from `content.segments`).

    Args:
        frame_dim, text_dim: feature widths.
        lateness_ms: the segment buffer's allowed lateness (visibility = end + lateness).
        keep: segments whose features are kept per streamer however old (2 L covers serving).
        retain_ms: also keep features of segments that ended within this long of the newest
            segment seen (what the online refresh trains on).
        refs_ms: keep segment references (not features) this long (point-in-time reads of the
            joiner reach back about one label window).
        on_segment: called with the author id after a new segment was added.

    Example:
        >>> v = SegmentView(frame_dim=2, text_dim=2, lateness_ms=10, keep=2)
        >>> seg = SegmentClosed.model_validate(dict(author_id="a1", live_id="l1",
        ...     start_ms=1_700_000_000_000, end_ms=1_700_000_030_000, n_frames=1, n_comments=0,
        ...     n_asr=0, frame_mean=[1.0, 0.0]), context={"frame_dim": 2, "text_dim": 2})
        >>> v.put(seg)
        True
        >>> [e.start_ms for e in v.visible("a1", 1_700_000_030_011)]
        [1700000000000]
    """

    def __init__(
        self,
        frame_dim: int,
        text_dim: int,
        lateness_ms: int,
        keep: int = 20,
        retain_ms: int = 0,
        refs_ms: int = 3 * 3600 * 1000,
        on_segment: Callable[[str], None] | None = None,
    ) -> None:
        self.frame_dim, self.text_dim = frame_dim, text_dim
        self.lateness_ms = lateness_ms
        self.keep = keep
        self.retain_ms = retain_ms
        self.refs_ms = max(refs_ms, retain_ms)
        self.on_segment = on_segment
        self.by_author: dict[str, list[SegmentEntry]] = {}  # by start_ms
        # beside each author's entries, for bisection: their start_ms and visible_ms; and the
        # authors whose visible_ms are not ascending in start order (overlapping segments,
        # which one live at a time never makes: then visibility falls back to a scan)
        self._starts: dict[str, list[int]] = {}
        self._visibles: dict[str, list[int]] = {}
        self._unordered: set[str] = set()
        self.newest_end_ms = 0
        self.count = 0

    def put(self, seg: SegmentClosed) -> bool:
        """Add a closed segment (idempotent by (author, start)); True when it was new."""
        author = seg.author_id
        entries = self.by_author.setdefault(author, [])
        starts = self._starts.setdefault(author, [])
        visibles = self._visibles.setdefault(author, [])
        i = bisect.bisect_left(starts, seg.start_ms)
        if i < len(entries) and entries[i].start_ms == seg.start_ms:
            return False
        feats = tuple(
            None if v is None else decode_embedding(v).astype(np.float16)
            for v in (seg.frame_mean, seg.asr_mean, seg.comment_mean)
        )
        entry = SegmentEntry(
            seg.live_id,
            seg.start_ms,
            seg.end_ms,
            seg.end_ms + self.lateness_ms,
            (seg.n_frames, seg.n_asr, seg.n_comments),
            feats,  # type: ignore[arg-type]
        )
        entries.insert(i, entry)
        starts.insert(i, entry.start_ms)
        visibles.insert(i, entry.visible_ms)
        if (i > 0 and visibles[i - 1] > entry.visible_ms) or (
            i + 1 < len(visibles) and visibles[i + 1] < entry.visible_ms
        ):
            self._unordered.add(author)
        self.count += 1
        self.newest_end_ms = max(self.newest_end_ms, seg.end_ms)
        self._trim(seg.author_id, entries)
        if self.on_segment is not None:
            self.on_segment(seg.author_id)
        return True

    def _trim(self, author: str, entries: list[SegmentEntry]) -> None:
        """Drop the features of segments outside the kept / retained set, and the entries that
        ended more than `refs_ms` before the newest segment (the newest `keep` always stay)."""
        n = len(entries)
        feature_horizon = self.newest_end_ms - self.retain_ms
        for j in range(n - self.keep):
            e = entries[j]
            if e.features is not None and e.end_ms < feature_horizon:
                entries[j] = SegmentEntry(
                    e.live_id, e.start_ms, e.end_ms, e.visible_ms, e.counts, None
                )
        ref_horizon = self.newest_end_ms - self.refs_ms
        drop = 0
        while drop < n - self.keep and entries[drop].end_ms < ref_horizon:
            drop += 1
        if drop:
            del entries[:drop]
            del self._starts[author][:drop]
            del self._visibles[author][:drop]

    def visible(self, author: str, ts_ms: int, last: int | None = None) -> list[SegmentEntry]:
        """The streamer's segments visible at `ts_ms` (closed before it), oldest first; only
        the newest `last` of them when given. O(log n) (a bisection on visibility times)."""
        entries = self.by_author.get(author)
        if not entries:
            return []
        if author in self._unordered:
            out = [e for e in entries if e.visible_ms < ts_ms]
            return out if last is None else out[len(out) - min(last, len(out)) :]
        k = bisect.bisect_left(self._visibles[author], ts_ms)
        return entries[0 if last is None else max(0, k - last) : k]

    def buffer(
        self, author: str, live_id: str | None, ts_ms: int, length: int
    ) -> list[SegmentEntry]:
        """The newest `length` visible segments of `live_id` (None: the latest live), oldest
        first: the segment buffer a snapshot refers to."""
        done = [e for e in self.visible(author, ts_ms) if e.end_ms <= ts_ms]
        if not done:
            return []
        live = done[-1].live_id if live_id is None else live_id
        return [e for e in done if e.live_id == live][-length:]

    def entry(self, author: str, start_ms: int) -> SegmentEntry | None:
        """The stored segment (author, start), or None."""
        entries = self.by_author.get(author)
        if not entries:
            return None
        i = bisect.bisect_left(self._starts[author], start_ms)
        return entries[i] if i < len(entries) and entries[i].start_ms == start_ms else None

    def store_for(self, keys: Iterable[tuple[str, int]]) -> MemorySegmentStore:
        """A float16 `MemorySegmentStore` holding the segments `keys` whose features are kept
        (what `ExampleTable` resolves segment references against)."""
        store = MemorySegmentStore(self.frame_dim, self.text_dim, "float16")
        for author, start in dict.fromkeys(keys):
            e = self.entry(author, start)
            if e is None or e.features is None:
                continue
            v, s, c = e.features
            store.put(
                SegmentClosed.model_construct(
                    author_id=author,
                    live_id=e.live_id,
                    start_ms=e.start_ms,
                    end_ms=e.end_ms,
                    n_frames=e.counts[0],
                    n_asr=e.counts[1],
                    n_comments=e.counts[2],
                    frame_mean=None if v is None else encode_embedding(v.astype(np.float32)),
                    asr_mean=None if s is None else encode_embedding(s.astype(np.float32)),
                    comment_mean=None if c is None else encode_embedding(c.astype(np.float32)),
                )
            )
        return store


class AuthorView:
    """The latest `AuthorTimeline` of every streamer, and the author agent's marks.

    Example:
        >>> v = AuthorView()
        >>> v.put(AuthorTimeline(author_id="a1", as_of_ms=3, base_ms=0, gift_ts=[2]))
        >>> v.get("a1").counts_before(3)
        (0, 1)
        >>> v.put(AuthorTimeline(kind="mark", partition=0, as_of_ms=3))
        >>> v.complete_through(partitions=1)
        3.0
    """

    def __init__(self) -> None:
        self.timelines: dict[str, AuthorTimeline] = {}
        self.marks: dict[int, int | None] = {}

    def put(self, tl: AuthorTimeline) -> None:
        """Keep `tl` unless an applied one is further along (messages may be re-read)."""
        if tl.kind == "mark":
            assert tl.partition is not None
            self.marks[tl.partition] = tl.as_of_ms
            return
        assert tl.author_id is not None and tl.as_of_ms is not None
        old = self.timelines.get(tl.author_id)
        if old is None or tl.as_of_ms >= (old.as_of_ms or 0):
            self.timelines[tl.author_id] = tl

    def get(self, author: str) -> AuthorTimeline | None:
        return self.timelines.get(author)

    def complete_through(self, partitions: int) -> float | None:
        """Event time up to which every author event is in the timelines: the least mark of
        the author agent's partitions (None while one has not reported, infinity when all are
        idle)."""
        if any(q not in self.marks for q in range(partitions)):
            return None
        busy = [m for q, m in self.marks.items() if q < partitions and m is not None]
        return float(min(busy)) if busy else float("inf")


class ExpansionView:
    """Per node, the expansion entries received, by `built_at_ms`.

    Args:
        keep_ms: versions built more than this before the newest are dropped (the newest one
            before that point stays, so reads back to `keep_ms` are exact).
    """

    def __init__(self, keep_ms: int) -> None:
        self.keep_ms = keep_ms
        self._v: dict[str, list[tuple[int, Expansions]]] = {}

    def __len__(self) -> int:
        return len(self._v)

    def put(self, key: str, built_at_ms: int, expansions: Expansions) -> None:
        versions = self._v.setdefault(key, [])
        bisect.insort(versions, (built_at_ms, expansions), key=lambda v: v[0])
        stamps = [b for b, _ in versions]
        cut = bisect.bisect_left(stamps, stamps[-1] - self.keep_ms)
        if cut > 1:  # keep the newest version built before the cut: reads there stay exact
            del versions[: cut - 1]

    def at(self, key: str, ts_ms: int) -> Expansions | None:
        """The newest entry built strictly before `ts_ms` (None: none)."""
        versions = self._v.get(key)
        if not versions:
            return None
        i = bisect.bisect_left([b for b, _ in versions], ts_ms)
        return versions[i - 1][1] if i else None

    def latest(self, key: str) -> Expansions | None:
        versions = self._v.get(key)
        return versions[-1][1] if versions else None


class ModelView:
    """The latest `ModelVersion` per model name (by `created_at_ms`, then arrival)."""

    def __init__(self) -> None:
        self.versions: dict[str, ModelVersion] = {}

    def put(self, mv: ModelVersion) -> None:
        old = self.versions.get(mv.model_name)
        if old is None or mv.created_at_ms >= old.created_at_ms:
            self.versions[mv.model_name] = mv

    def get(self, name: str) -> ModelVersion | None:
        return self.versions.get(name)


@dataclass
class ViewSources:
    """The joiner's and serving's `FeatureSources` over the views (point-in-time reads).

    Attributes:
        authors, segments, user_exp, author_exp: the views.
        features: segment buffer length L and the rest of the snapshot config.
        counts: reads that could not be exact ("folded": t before a timeline's base).
    """

    authors: AuthorView
    segments: SegmentView
    user_exp: ExpansionView
    author_exp: ExpansionView
    features: FeatureConfig
    counts: dict[str, int] = field(default_factory=dict)

    def author_state(self, author_id: str, ts_ms: int) -> AuthorState:
        """The streamer's `AuthorState` from events before `ts_ms`."""
        state = AuthorState()
        tl = self.authors.get(author_id)
        if tl is not None:
            if ts_ms < tl.base_ms:
                self.counts["folded"] = self.counts.get("folded", 0) + 1
            state.watches, state.gifts = tl.counts_before(ts_ms)
            # sorted event times: AuthorState.recent counts the windows before ts_ms from them
            state.recent_watches, state.recent_gifts = tl.watch_ts, tl.gift_ts
        visible = self.segments.visible(author_id, ts_ms, last=2 * self.features.segments)
        state.segments = sorted(
            ((e.live_id, e.start_ms, e.end_ms) for e in visible), key=_seg_order
        )
        return state

    def author_expansions(self, author_id: str, ts_ms: int) -> Expansions | None:
        return self.author_exp.at(author_id, ts_ms)

    def user_expansions(self, user_id: str, ts_ms: int) -> Expansions | None:
        return self.user_exp.at(user_id, ts_ms)

    def known_author(self, author_id: str) -> bool:
        """Whether anything is known about the streamer."""
        return (
            author_id in self.authors.timelines
            or author_id in self.segments.by_author
            or self.author_exp.latest(author_id) is not None
        )


def _seg_order(s: tuple[str, int, int]) -> tuple[int, str]:
    return (s[1], s[0])


Handler = Callable[[BaseModel], None]


class GlobalReader:
    """Reads every partition of some catalogue topics from the beginning and applies each
    message to a handler; `caught_up` is set once it has read what existed at start.

    Args:
        settings: connection settings (`mmbee.settings.Settings`).
        codec: the app's codec (validation, dead-letter reasons).
        handlers: catalogue topic -> handler of the decoded model.
        on_reject: called with (topic, raw value, Rejected) for a message that does not decode.
    """

    def __init__(
        self,
        settings: Any,
        codec: Any,
        handlers: dict[str, Handler],
        on_reject: Callable[[str, bytes | None, Any, int, int], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.handlers = dict(handlers)
        self.on_reject = on_reject
        self.caught_up = asyncio.Event()
        self.read = 0
        self.rejected = 0
        self._topics = {settings.topic(n): n for n in handlers}

    def add_handler(self, name: str, handler: Handler) -> None:
        """Also read catalogue topic `name` (before the reader starts)."""
        self.handlers[name] = handler
        self._topics[self.settings.topic(name)] = name

    def apply(self, name: str, raw: bytes | None) -> BaseModel | None:
        """Decode one value of catalogue topic `name` and hand it to its handler."""
        from mmbee.streams.codec import Rejected

        decoded = self.codec.decode_topic(name, raw)
        if isinstance(decoded, Rejected):
            self.rejected += 1
            return None
        self.handlers[name](decoded)
        self.read += 1
        return decoded

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until cancelled (or `stop` is set)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from mmbee.streams.codec import Rejected

        consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
            max_partition_fetch_bytes=4 << 20,
            fetch_max_bytes=16 << 20,
            **_client_kwargs(self.settings),
        )
        await consumer.start()
        try:
            tps: list[TopicPartition] = []
            for full in self._topics:
                parts = consumer.partitions_for_topic(full)
                while not parts:
                    await force_metadata_update(consumer)
                    parts = consumer.partitions_for_topic(full)
                    if not parts:
                        await asyncio.sleep(0.2)
                tps.extend(TopicPartition(full, p) for p in sorted(parts))
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            pending = {tp for tp, end in ends.items() if end > 0}
            if not pending:
                self.caught_up.set()
            while stop is None or not stop.is_set():
                batch = await consumer.getmany(timeout_ms=50, max_records=2000)
                for tp, records in batch.items():
                    name = self._topics[tp.topic]
                    for rec in records:
                        decoded = self.codec.decode_topic(name, rec.value)
                        if isinstance(decoded, Rejected):
                            self.rejected += 1
                            if self.on_reject is not None:
                                await self.on_reject(
                                    name, rec.value, decoded, tp.partition, rec.offset
                                )
                            continue
                        self.handlers[name](decoded)
                        self.read += 1
                    if tp in pending and records and records[-1].offset + 1 >= ends[tp]:
                        pending.discard(tp)
                if pending and not self.caught_up.is_set():
                    for tp in list(pending):
                        if await consumer.position(tp) >= ends[tp]:
                            pending.discard(tp)
                if not pending and not self.caught_up.is_set():
                    self.caught_up.set()
                    log.info("global views caught up (%d messages)", self.read)
        finally:
            await consumer.stop()


def _client_kwargs(settings: Any) -> dict[str, Any]:
    """aiokafka client arguments from the settings (security included)."""
    kw = dict(settings.kafka_client_kwargs())
    files = {k: kw.pop(k) for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if k in kw}
    if files:
        from aiokafka.helpers import create_ssl_context

        kw["ssl_context"] = create_ssl_context(
            cafile=files.get("ssl_cafile"),
            certfile=files.get("ssl_certfile"),
            keyfile=files.get("ssl_keyfile"),
        )
    return {"bootstrap_servers": settings.bootstrap_list(), **kw}


def expansions_of(msg: UserExpansions | AuthorExpansions) -> Expansions:
    """The expansion lists of a graph message, as the walk cache holds them."""
    names = ("u2a2u", "u2a2u2a", "u2a2a") if isinstance(msg, UserExpansions) else ("a2a", "a2u2a")
    return {n: [(str(k), float(w)) for k, w in getattr(msg, n)] for n in names}


@dataclass
class Views:
    """The views of one worker and the reader that feeds them (`views(ctx)`).

    Attributes:
        segments, authors, user_exp, author_exp, models: the views.
        sources: point-in-time reads over them (the joiner's and serving's `FeatureSources`).
        reader: the global reader (its `caught_up` event says the views hold what existed at
            start).
        segment_listeners: called with an author id when a segment of that author arrives.
    """

    segments: SegmentView
    authors: AuthorView
    user_exp: ExpansionView
    author_exp: ExpansionView
    models: ModelView
    sources: ViewSources
    reader: GlobalReader
    segment_listeners: list[Callable[[str], None]] = field(default_factory=list)

    def _on_segment(self, author: str) -> None:
        for listener in self.segment_listeners:
            listener(author)


def feature_config(settings: Settings) -> FeatureConfig:
    """The point-in-time feature config of the joiner and serving under these settings (it
    must be the offline build's: H = joiner_history, L = segments_kept, N = graph_top_n)."""
    return FeatureConfig(
        history=settings.joiner_history,
        segments=settings.segments_kept,
        expansion_n=settings.graph_top_n,
        graph_half_life_ms=settings.graph_half_life_ms,
        expansion_staleness_ms=settings.graph_cache_staleness_ms,
    )


def views(ctx: Any) -> Views:
    """The context's `Views` (made on first use: the first component that needs them registers
    the reader as an app task; later components may add handlers before the worker starts)."""
    got = ctx.runtimes.get("views")
    if got is not None:
        assert isinstance(got, Views)
        return got
    s = ctx.settings
    features = feature_config(s)
    user_exp = ExpansionView(s.author_horizon_ms)
    author_exp = ExpansionView(s.author_horizon_ms)
    seg = SegmentView(
        s.frame_dim,
        s.text_dim,
        s.allowed_lateness_ms,
        keep=2 * features.segments,
        retain_ms=s.views_retain_ms,
        refs_ms=s.author_horizon_ms,
    )
    authors, models = AuthorView(), ModelView()

    def on_user_exp(m: BaseModel) -> None:
        assert isinstance(m, UserExpansions)
        user_exp.put(m.user_id, m.built_at_ms, expansions_of(m))

    def on_author_exp(m: BaseModel) -> None:
        assert isinstance(m, AuthorExpansions)
        author_exp.put(m.author_id, m.built_at_ms, expansions_of(m))

    def on_segment(m: BaseModel) -> None:
        assert isinstance(m, SegmentClosed)
        seg.put(m)

    async def on_reject(
        name: str, raw: bytes | None, rej: Any, partition: int, offset: int
    ) -> None:
        await ctx.dlq.send(
            raw,
            source_topic=s.topic(name),
            agent="views",
            reason=rej.reason,
            detail=rej.detail,
            partition=partition,
            offset=offset,
            event_id=rej.event_id,
        )

    reader = GlobalReader(
        s,
        ctx.codec,
        {
            "author.state": lambda m: authors.put(m),  # type: ignore[arg-type]
            "content.segments": on_segment,
            "graph.user_expansions": on_user_exp,
            "graph.author_expansions": on_author_exp,
            "model.versions": lambda m: models.put(m),  # type: ignore[arg-type]
        },
        on_reject,
    )
    v = Views(
        seg,
        authors,
        user_exp,
        author_exp,
        models,
        ViewSources(authors, seg, user_exp, author_exp, features),
        reader,
    )
    seg.on_segment = v._on_segment
    ctx.runtimes["views"] = v

    async def read_views() -> None:
        await reader.run()

    ctx.app.task(read_views)
    return v
