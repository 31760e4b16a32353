"""Helpers of the joiner/serving/e2e tests: simulated logs with real text embeddings, the pure
streaming joiner driven in log order, and the comparison with the offline example build."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmbee.jobs.train import BuildConfig, BuiltExamples
from mmbee.schemas import AsrSegment, CommentEvent, FrameEvent, GiftEvent, WatchEvent
from mmbee.schemas.scoring import TrainingExample
from mmbee.schemas.topics import partition_for
from mmbee.scorer.dataset import ExampleTable
from mmbee.scorer.examples import from_message, to_message
from mmbee.state.authors import Timeline
from mmbee.state.segments import ContentItem, SegmentBuffer, SegmentConfig, update
from mmbee.state.users import JoinerConfig, PartitionJoiner, complete
from mmbee.streams.views import AuthorView, ExpansionView, SegmentView, ViewSources

FAR = 10**13


def text_vectors(config: pytest.Config) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings of the simulator's text catalogue (the real model, computed
    once and kept in pytest's cache directory)."""
    from mmbee.simulator.content import text_catalogue

    texts = list(text_catalogue().texts)
    digest = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:12]
    path = Path(config.cache.mkdir("mmbee-text")) / f"minilm-{digest}.npy"
    if path.exists():
        return np.load(path)
    from mmbee.encoders.featurizers.text import TextEmbedder

    vecs = np.asarray(TextEmbedder().encode(texts), dtype=np.float32)
    np.save(path, vecs)
    return vecs


def make_log(
    outdir: Path, vectors: np.ndarray, *, n_users: int, n_streamers: int, days: int, seed: int = 0
) -> Path:
    """A simulated world's log with cached text embeddings (replay attaches them)."""
    from mmbee.simulator.config import preset
    from mmbee.simulator.logs import write_log
    from mmbee.simulator.world import generate_world

    world = generate_world(
        preset("tiny", n_users=n_users, n_streamers=n_streamers, days=days), seed
    )
    write_log(world, outdir, preset_name="tiny", text_embedder=lambda texts: vectors[: len(texts)])
    return outdir


def drive(log: Path, build: BuildConfig, partitions: int = 4) -> list[TrainingExample]:
    """The streaming joiner's logic on `log`: one `PartitionJoiner` per user partition, the
    author side in the views (timelines, closed segments from the segment buffers), every event
    in log order, then every settled example completed and converted to its message."""
    from mmbee.simulator.reader import iter_events

    config = JoinerConfig(features=build.features, labels=build.labels, settle_s=0.0)
    joiners = [PartitionJoiner(config) for _ in range(partitions)]
    seg_cfg = SegmentConfig(
        segment_ms=build.segment_ms,
        segments_kept=build.features.segments,
        allowed_lateness_ms=build.allowed_lateness_ms,
        text_dim=384,
    )
    segments = SegmentView(1280, 384, build.allowed_lateness_ms, keep=2 * build.features.segments,
                           retain_ms=FAR)  # fmt: skip
    authors = AuthorView()
    sources = ViewSources(authors, segments, ExpansionView(FAR), ExpansionView(FAR), build.features)
    timelines: dict[str, Timeline] = {}
    buffers: dict[str, SegmentBuffer] = {}
    for _topic, ev in iter_events(log, attach_text_embeddings=True):
        if isinstance(ev, FrameEvent | CommentEvent | AsrSegment):
            item = ContentItem.from_event(ev, None)
            buf = buffers.get(item.author_id) or SegmentBuffer.empty(item.author_id)
            buffers[item.author_id], closed, _ = update(buf, item, seg_cfg)
            for seg in closed:
                segments.put(seg)
            if not isinstance(ev, CommentEvent):
                continue
        if (isinstance(ev, WatchEvent) and ev.action == "enter") or isinstance(ev, GiftEvent):
            tl = timelines.setdefault(ev.author_id, Timeline(ev.author_id))
            tl.add("gift" if isinstance(ev, GiftEvent) else "watch", ev.event_id, ev.ts_ms, FAR)
            authors.put(tl.message())
        joiners[partition_for(ev.user_id.encode(), partitions)].apply(ev, 0.0)
    out = []
    for j in joiners:
        out.extend(to_message(complete(u, p, sources, build.features)) for u, p in j.due(FAR))
    return out


def compare(
    examples: Iterable[TrainingExample], built: BuiltExamples, build: BuildConfig
) -> dict[str, Any]:
    """Streaming examples against the offline build of the same log.

    Returns counts: `common`, `missing` (offline examples the stream has not emitted) and
    `missing_not_tail` (of those, the ones whose window ended more than `tail_ms` before the
    stream's last impression), `extra` (stream examples the offline build lacks), and per
    compared column the rows that differ; `segments_explained` counts segment lists that differ
    only by newer segments visible under the streaming rule (end + lateness < t) that the
    offline build had not closed yet (its closing event came later). `segments_unexplained`
    must be 0.
    """
    stream = {m.event_id: m for m in examples}
    t = built.table
    ids = t.event_ids
    idx = [i for i, e in enumerate(ids) if e in stream]
    out: Counter[str] = Counter(common=len(idx), extra=len(set(stream) - set(ids)))
    last = max((m.ts_ms for m in stream.values()), default=0)
    window = build.labels.window_ms
    for i, e in enumerate(ids):
        if e not in stream:
            out["missing"] += 1
            if int(t.column("ts")[i]) + window < last - 2 * window:
                out["missing_not_tail"] += 1
    table = ExampleTable(build.features)
    for i in idx:
        table.add(from_message(stream[ids[i]]), built.store)
    for col in ("ts", "user", "hist_kind", "hist_age", "dense", "labels", "gift_value"):
        a, b = t.column(col)[idx], table.column(col)
        if col == "user":
            a = np.array(t.users.ids)[a]
            b = np.array(table.users.ids)[b]
        out[col] = int((a.reshape(len(idx), -1) != b.reshape(len(idx), -1)).any(axis=1).sum())
    from mmbee.scorer.batch import DENSE_FEATURES

    bad = t.column("dense")[idx] != table.column("dense")
    for j, name in enumerate(DENSE_FEATURES):
        if bad[:, j].any():
            out["dense:" + name] = int(bad[:, j].sum())
    hist_a = np.array(t.authors.ids + [""])[t.column("hist_author")[idx]]
    hist_b = np.array(table.authors.ids + [""])[table.column("hist_author")]
    out["hist_author"] = int((hist_a != hist_b).any(axis=1).sum())
    positive = t.column("labels")[idx, 2] > 0
    lateness = build.allowed_lateness_ms
    for k, i in enumerate(idx):
        m = stream[ids[i]]
        if positive[k] and not _positive_emitted_at_gift(m):
            out["emitted_at"] += 1
        offline = [s for s in _starts(built, i)]
        if offline != m.segment_starts:
            extra = [s for s in m.segment_starts if s not in offline]
            newer = bool(extra) and (not offline or min(extra) > max(offline))
            visible = all(s + build.segment_ms + lateness < m.ts_ms for s in extra)
            expected = (offline + sorted(extra))[-build.features.segments :]
            if newer and visible and expected == m.segment_starts:
                out["segments_explained"] += 1
            else:
                out["segments_unexplained"] += 1
    return dict(out)


def _positive_emitted_at_gift(m: TrainingExample) -> bool:
    return m.ts_ms <= m.emitted_at_ms


def _starts(built: BuiltExamples, i: int) -> list[int]:
    """Segment start times the offline example `i` refers to (rows of its store)."""
    rows = built.table.column("seg_rows")[i]
    return [_row_start(built, int(r)) for r in rows if r >= 0]


def _row_start(built: BuiltExamples, row: int) -> int:
    cache = getattr(built, "_row_starts", None)
    if cache is None:
        cache = {r: s for (_, s), r in built.store._index.items()}  # noqa: SLF001
        built._row_starts = cache  # type: ignore[attr-defined]
    return int(cache[row])
