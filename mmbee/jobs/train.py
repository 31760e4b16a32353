"""`mmbee train LOGDIR`: point-in-time examples from a log, a time split, and a trained GTR model.

`build_examples` replays a log directory (simulated, or a user's KuaiLive download) through the
same pure pieces the stream agents use, in event-time order: content events go through the
rolling segment buffers (`mmbee.state.segments`), closed segments, watches, comments and
gifts through `FeatureState`, every impression's snapshot through the `LabelJoiner`. Impressions
whose 1 h window the log cuts off are dropped (censored). The result (an `ExampleTable` and the
`MemorySegmentStore` its rows refer to) is cached on disk, keyed by the log and the configs, so
`evaluate` and the ablation reuse it.

`split_by_time` keeps the last `test_days` days of the log for testing; `run_train` trains one
variant on the rest and writes `{"config", "state_dict"}` plus a metrics file.

Example:
    >>> report = run_train(TrainJob(logdir=Path("logs/demo"), out=Path("runs/demo")))  # doctest: +SKIP
    >>> report["test"]["auc"] > report["popularity"]["auc"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mmbee.schemas.events import AsrSegment, CommentEvent, FrameEvent, WatchEvent
from mmbee.scorer.baselines import popularity_scores
from mmbee.scorer.dataset import ExampleTable
from mmbee.scorer.examples import LabelConfig, LabeledExample, LabelJoiner
from mmbee.scorer.features import FeatureConfig, FeatureState, MemorySegmentStore
from mmbee.scorer.gtr import config_for_variant, default_content_config
from mmbee.scorer.metrics import evaluate_scores
from mmbee.scorer.train import TrainConfig, score_table, train_model
from mmbee.state.segments import ContentItem, SegmentBuffer, SegmentConfig, close_all, update

__all__ = [
    "BuildConfig",
    "BuiltExamples",
    "build_examples",
    "load_or_build",
    "split_by_time",
    "TrainJob",
    "run_train",
    "test_report",
]

DAY_MS = 86_400_000
BUILD_VERSION = 7
"""Bumped whenever `build_examples` changes what it produces (invalidates caches)."""


@dataclass(frozen=True)
class BuildConfig:
    """How a log becomes examples.

    Attributes:
        features: what a snapshot keeps (H, L, N, graph settings).
        labels: the label definition (1 h window, watch threshold).
        segment_ms, allowed_lateness_ms: the segment buffer geometry (as the stream agents).
        store_dtype: "float16" halves the segment store's memory; "float32" keeps it exact.

    Example:
        >>> BuildConfig().features.segments
        10
    """

    features: FeatureConfig = field(default_factory=FeatureConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    segment_ms: int = 30_000
    allowed_lateness_ms: int = 10_000
    store_dtype: str = "float16"

    def to_dict(self) -> dict[str, Any]:
        """JSON-plain form (checkpoints, cache keys)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildConfig:
        """Inverse of `to_dict`."""
        return cls(
            features=FeatureConfig(**d["features"]),
            labels=LabelConfig(**d["labels"]),
            segment_ms=int(d["segment_ms"]),
            allowed_lateness_ms=int(d["allowed_lateness_ms"]),
            store_dtype=str(d["store_dtype"]),
        )


@dataclass
class BuiltExamples:
    """Examples of one log with everything needed to train and evaluate on them.

    Attributes:
        table: labeled snapshots (rows in event-time order of their emission).
        store: the closed segments the table refers to.
        truth: per example the simulator's true gift probability (NaN when unknown), or None.
        observable: per example the observable oracle's probability (the truth without the
            user's hidden propensity, `mmbee.simulator.oracle`), or None.
        start_ms, end_ms: the span of the log (manifest, or first/last event).
        stats: counts and timings of the build.
    """

    table: ExampleTable
    store: MemorySegmentStore
    truth: np.ndarray | None
    start_ms: int
    end_ms: int
    stats: dict[str, Any] = field(default_factory=dict)
    observable: np.ndarray | None = None


def _log_identity(logdir: Path) -> str:
    manifest = logdir / "mmbee_world.json"
    if manifest.exists():
        return manifest.read_text()
    parts = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in logdir.glob("*.csv"))
    return json.dumps(parts)


def cache_key(logdir: Path, config: BuildConfig) -> str:
    """Digest of the log's identity, the build config and `BUILD_VERSION`."""
    h = hashlib.sha1()
    h.update(_log_identity(logdir).encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(str(BUILD_VERSION).encode())
    return h.hexdigest()[:16]


class _TextVectors:
    """Text embeddings for content events that carry none (a KuaiLive dir without the cache)."""

    def __init__(self) -> None:
        self._embedder: Any = None
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, text: str) -> np.ndarray:
        v = self._cache.get(text)
        if v is None:
            if self._embedder is None:
                from mmbee.encoders.featurizers.text import TextEmbedder

                self._embedder = TextEmbedder()
            v = self._cache[text] = self._embedder.encode([text])[0].astype(np.float32)
        return v


def live_categories(bundle: Any) -> dict[str, str]:
    """live id -> `live_content_category` from room.csv (empty when the log has no room.csv).

    A live's category is announced when it starts and every impression of it comes after
    that, so using it at the impression is point-in-time safe.
    """
    from mmbee.simulator.reader import live_key

    if not bundle.has("room.csv"):
        return {}
    room = bundle.table("room.csv")
    return {
        live_key(int(lv)): str(cat)
        for lv, cat in zip(room["live_id"].tolist(), room["live_content_category"], strict=True)
    }


def build_examples(logdir: Path | str, config: BuildConfig, progress: bool = True) -> BuiltExamples:
    """Replay `logdir` in event-time order into point-in-time labeled examples (see module doc)."""
    from tqdm.auto import tqdm

    from mmbee.simulator.oracle import observable_truth
    from mmbee.simulator.reader import LogError, count_events, iter_events, read_log, read_truth

    t0 = time.perf_counter()
    root = Path(logdir)
    bundle = read_log(root)
    cached_text = bundle.text_embeddings
    attach = cached_text is not None
    text_dim = int(cached_text.shape[1]) if cached_text is not None else 384
    seg_cfg = SegmentConfig(
        segment_ms=config.segment_ms,
        segments_kept=config.features.segments,
        allowed_lateness_ms=config.allowed_lateness_ms,
        text_dim=text_dim,
    )
    store = MemorySegmentStore(seg_cfg.frame_dim, text_dim, config.store_dtype)
    state = FeatureState(config.features, store=store, live_categories=live_categories(bundle))
    joiner = LabelJoiner(config.labels)
    table = ExampleTable(config.features)
    texts = _TextVectors()
    buffers: dict[str, SegmentBuffer] = {}
    stats: dict[str, Any] = {
        "events": 0,
        "impressions": 0,
        "content_rejected": 0,
        "frames_without_embedding": 0,
    }
    first_ts: int | None = None
    last_ts = 0

    def emit(done: list[LabeledExample]) -> None:
        for ex in done:
            table.add(ex, store)

    total = count_events(bundle)
    for _topic, ev in tqdm(
        iter_events(bundle, attach_text_embeddings=attach),
        total=total,
        desc="examples",
        unit="ev",
        disable=not progress,
        mininterval=1.0,
    ):
        stats["events"] += 1
        ts = ev.ts_ms
        first_ts = ts if first_ts is None else first_ts
        last_ts = max(last_ts, ts)
        if isinstance(ev, FrameEvent | CommentEvent | AsrSegment):
            vec = None
            if isinstance(ev, CommentEvent | AsrSegment) and ev.text_embedding is None:
                vec = texts(ev.text)
            if isinstance(ev, FrameEvent) and ev.embedding is None:
                stats["frames_without_embedding"] += 1  # media-mode JPEG: not featurized here
            else:
                item = ContentItem.from_event(ev, vec)
                buf = buffers.get(item.author_id) or SegmentBuffer.empty(item.author_id)
                buf, closed, rejects = update(buf, item, seg_cfg)
                buffers[item.author_id] = buf
                stats["content_rejected"] += len(rejects)
                for seg in closed:
                    state.apply(seg, at_ms=ts)
            if not isinstance(ev, CommentEvent):
                continue
        if isinstance(ev, WatchEvent) and ev.action == "enter":
            stats["impressions"] += 1
            snap = state.snapshot(ev.event_id, ev.user_id, ev.author_id, ev.live_id, ts)
            emit(joiner.add(snap))
        emit(joiner.observe(ev))
        state.apply(ev)
    for author, buf in buffers.items():
        buffers[author], _ = close_all(buf, seg_cfg)
    censored = joiner.flush()
    stats.update(
        examples=len(table),
        positives=int(table.column("labels")[:, 2].sum()),
        censored=len(censored),
        segments=len(store),
        duplicates=state.duplicates + joiner.duplicates,
        seconds=round(time.perf_counter() - t0, 2),
    )
    truth = observable = None
    if (root / "truth" / "impressions.csv").exists():
        p = read_truth(bundle)
        truth = np.array([p.get(e, np.nan) for e in table.event_ids], dtype=np.float64)
        try:
            q = observable_truth(bundle)
        except LogError as exc:  # a log from before the unit rate was written
            stats["observable_oracle"] = str(exc)
        else:
            observable = np.array([q.get(e, np.nan) for e in table.event_ids], np.float64)
    manifest = bundle.manifest or {}
    start = int(manifest.get("start_ms", first_ts or 0))
    end = int(manifest.get("end_ms", last_ts + 1))
    return BuiltExamples(table, store, truth, start, end, stats, observable)


def load_or_build(
    logdir: Path | str,
    config: BuildConfig,
    cache_dir: Path | str | None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> BuiltExamples:
    """`build_examples`, cached as `.npz` files in `cache_dir` (None: no cache)."""
    root = Path(logdir)
    if cache_dir is None:
        return build_examples(root, config, progress)
    cache = Path(cache_dir)
    key = cache_key(root, config)
    meta_path = cache / f"examples-{key}.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        table = ExampleTable.load(cache / f"examples-{key}.table.npz")
        store = MemorySegmentStore.load(cache / f"examples-{key}.store.npz")
        truth_path = cache / f"examples-{key}.truth.npy"
        truth = np.load(truth_path) if truth_path.exists() else None
        obs_path = cache / f"examples-{key}.observable.npy"
        observable = np.load(obs_path) if obs_path.exists() else None
        log(f"examples: cached {meta_path}")
        return BuiltExamples(
            table, store, truth, meta["start_ms"], meta["end_ms"], meta["stats"], observable
        )
    built = build_examples(root, config, progress)
    cache.mkdir(parents=True, exist_ok=True)
    built.table.save(cache / f"examples-{key}.table.npz")
    built.store.save(cache / f"examples-{key}.store.npz")
    if built.truth is not None:
        np.save(cache / f"examples-{key}.truth.npy", built.truth)
    if built.observable is not None:
        np.save(cache / f"examples-{key}.observable.npy", built.observable)
    meta = {"start_ms": built.start_ms, "end_ms": built.end_ms, "stats": built.stats}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return built


def split_by_time(built: BuiltExamples, test_days: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) example indices: test = impressions in the last `test_days` days."""
    ts = built.table.column("ts")
    cut = built.end_ms - int(test_days * DAY_MS)
    if cut <= built.start_ms:
        raise ValueError(
            f"the log spans {(built.end_ms - built.start_ms) / DAY_MS:.2f} days; "
            f"cannot hold out the last {test_days}"
        )
    return np.flatnonzero(ts < cut), np.flatnonzero(ts >= cut)


def test_report(
    built: BuiltExamples, test_idx: np.ndarray, scores: np.ndarray | None, k: int = 10
) -> dict[str, dict[str, float]]:
    """Metrics on `test_idx`: the model (`scores`), the popularity baseline, the oracle and the
    observable oracle (simulated logs)."""
    t = built.table
    users, items = t.column("user")[test_idx], t.column("author")[test_idx]
    y = t.column("labels")[test_idx, 2]
    out: dict[str, dict[str, float]] = {}
    if scores is not None:
        out["test"] = evaluate_scores(users, items, y, scores, k)
    out["popularity"] = evaluate_scores(users, items, y, popularity_scores(t, test_idx), k)
    for name, ref in (("oracle", built.truth), ("observable_oracle", built.observable)):
        if ref is not None:
            r = ref[test_idx]
            known = ~np.isnan(r)
            out[name] = evaluate_scores(users[known], items[known], y[known], r[known], k)
    return out


@dataclass(frozen=True)
class TrainJob:
    """One `mmbee train` run.

    Attributes:
        logdir: the log directory; out: output directory (model.pt, metrics.json).
        variant: Table 2 name (`sim`, ..., `mmoe_mfq_gie`); content_encoder replaces MFQ.
        build: how examples are built; train: how the model is trained.
        model_overrides: GTRConfig fields to override (JSON-plain).
        test_days: days held out at the end of the log.
        cache_dir: example cache (None: out/cache).
        threads: torch CPU threads (1 suits a shared 2-core machine).
    """

    logdir: Path
    out: Path
    variant: str = "sim_mfq_gie"
    content_encoder: str = "mfq"
    build: BuildConfig = field(default_factory=BuildConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    test_days: float = 1.0
    cache_dir: Path | None = None
    threads: int = 1


def model_config(job: TrainJob, built: BuiltExamples) -> Any:
    """The GTRConfig of a job, with content widths taken from the data."""
    overrides = dict(job.model_overrides)
    if "mfq" in job.variant.split("_"):
        categories = tuple(sorted(built.table.categories.ids))
        overrides.setdefault("categories", categories)
        if "content_config" not in overrides:
            overrides["content_config"] = default_content_config(
                job.content_encoder,
                built.store.frame_dim,
                built.store.text_dim,
                len(overrides["categories"]),
            )
    return config_for_variant(job.variant, content_encoder=job.content_encoder, **overrides)


def run_train(job: TrainJob, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build (or load) examples, train on the time split's train part, score the test part.

    Writes `out/model.pt` and `out/metrics.json`; returns the metrics report.
    """
    import torch

    torch.set_num_threads(job.threads)
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    built = load_or_build(
        job.logdir, job.build, job.cache_dir or out / "cache", job.train.progress, log
    )
    train_idx, test_idx = split_by_time(built, job.test_days)
    cfg = model_config(job, built)
    log(
        f"examples {len(built.table)} (train {len(train_idx)}, test {len(test_idx)}), "
        f"positives {built.stats.get('positives')}; training {cfg.variant}"
    )
    ckpt = out / "model.pt"
    extra = {
        "build": job.build.to_dict(),
        "data": {
            "logdir": str(job.logdir),
            "test_days": job.test_days,
            "train_examples": int(len(train_idx)),
        },
    }
    result = train_model(cfg, built.table, built.store, train_idx, job.train, ckpt, extra)
    scores = score_table(result.model, built.table, built.store, test_idx)
    report: dict[str, Any] = {
        "variant": cfg.variant,
        "checkpoint": str(ckpt),
        "train_samples_per_s": round(result.samples_per_s, 1),
        "train_seconds": round(result.seconds, 2),
        "device": result.device,
        "losses": result.losses,
        "build": built.stats,
        **test_report(built, test_idx, scores),
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def with_train(job: TrainJob, **changes: Any) -> TrainJob:
    """A copy of `job` with TrainConfig fields changed."""
    return replace(job, train=replace(job.train, **changes))
