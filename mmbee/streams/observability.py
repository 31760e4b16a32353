"""Operational telemetry of a worker: Prometheus exposition, rates, lag, latency, model version, logs.

One `Observability` object lives in each app's context (`observability(ctx)`); the web module
serves it (`/metrics`, `/mmbee/status/`). What agents already count (`StreamMetrics`: events,
dead letters by reason, gauges) is exported as is; this module adds what an operator needs on
top: events/s per agent over a sliding window, consumer lag per partition (sampled by a timer),
a scoring latency histogram and the model version (fed by the serving component), and counts of
WARNING/ERROR log records. Logs can be written as one JSON object per line (`JsonLogFormatter`)
with the record's key=value fields, `event_id` included, as separate keys.

For the serving component:
    >>> obs = Observability(clock=lambda: 0.0)
    >>> obs.observe_scoring_latency(0.004)
    >>> obs.set_model_version("gtr-2025-05-06", loaded_at_ms=1_746_500_000_000)
    >>> obs.scoring_latency.count, obs.model_version
    (1, 'gtr-2025-05-06')
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmbee.settings import Settings
    from mmbee.streams.metrics import StreamMetrics
    from mmbee.streams.runtime.context import StreamContext

__all__ = [
    "LATENCY_BUCKETS_S",
    "Histogram",
    "RateTracker",
    "PartitionLag",
    "Observability",
    "LogRecordCounter",
    "JsonLogFormatter",
    "observability",
    "logging_config",
    "render_prometheus",
    "Sample",
]

Sample = tuple[str, dict[str, str], float]
"""(metric name, labels, value): one line of the Prometheus text format."""

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds (seconds) of the scoring latency histogram; +Inf is implied."""

_RUNTIME_KEY = "observability"

_HELP: dict[str, tuple[str, str]] = {
    "mmbee_agent_processed_total": ("counter", "messages an agent finished (applied, rejected or skipped)"),
    "mmbee_agent_events_per_second": ("gauge", "processed messages per second over the rate window"),
    "mmbee_agent_errors_total": ("counter", "messages an agent dead-lettered (all reasons)"),
    "mmbee_dead_letters_total": ("counter", "dead letters by agent and reason"),
    "mmbee_duplicates_total": ("counter", "redelivered events an agent had applied already (acked, not dead-lettered)"),
    "mmbee_consumer_lag": ("gauge", "log end offset minus committed offset, per assigned partition"),
    "mmbee_consumer_committed_offset": ("gauge", "next offset to consume (committed), per partition"),
    "mmbee_consumer_end_offset": ("gauge", "log end offset (high watermark), per partition"),
    "mmbee_consumer_lag_sample_age_seconds": ("gauge", "seconds since the lag was last sampled"),
    "mmbee_assigned_partitions": ("gauge", "source partitions this worker is active for"),
    "mmbee_segment_buffer_streams": ("gauge", "live streams whose segment buffer is held in memory"),
    "mmbee_segment_buffer_open_segments": ("gauge", "open (not yet closed) segments in memory"),
    "mmbee_segment_buffer_closed_segments": ("gauge", "closed segments referenced by in-memory buffers"),
    "mmbee_segment_buffer_held_events": ("gauge", "events waiting for event-time alignment"),
    "mmbee_segment_buffer_unpersisted_events": ("gauge", "applied events not yet covered by a table write"),
    "mmbee_graph_loaded": ("gauge", "1 when this worker owns the gift graph"),
    "mmbee_graph_users": ("gauge", "users in the gift graph"),
    "mmbee_graph_authors": ("gauge", "authors in the gift graph"),
    "mmbee_graph_edges": ("gauge", "U2A edges in the gift graph"),
    "mmbee_graph_gifts": ("gauge", "gifts applied to the gift graph"),
    "mmbee_scoring_latency_seconds": ("histogram", "score request latency (serving)"),
    "mmbee_model_version_info": ("gauge", "the GTR model being served (value 1; 'none' = 0)"),
    "mmbee_model_loaded_timestamp_seconds": ("gauge", "when the served model was loaded"),
    "mmbee_log_records_total": ("counter", "log records at WARNING or above, by level and logger"),
    "mmbee_worker_ready": ("gauge", "1 when the readiness probe passes"),
    "mmbee_watchdog_members_removed_total": ("counter", "dead group members this worker removed (embedded broker)"),
    "mmbee_worker_uptime_seconds": ("gauge", "seconds since the worker's app was built"),
}  # fmt: skip


class Histogram:
    """A cumulative-bucket histogram in the Prometheus sense.

    Args:
        buckets: finite upper bounds, ascending; +Inf is added.

    Example:
        >>> h = Histogram((0.01, 0.1))
        >>> for v in (0.005, 0.05, 0.05, 3.0):
        ...     h.observe(v)
        >>> h.count, h.cumulative()
        (4, [1, 3, 4])
        >>> round(h.quantile(0.5), 3)
        0.055
    """

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS_S) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets))
        if not self.bounds or any(not math.isfinite(b) for b in self.bounds):
            raise ValueError("histogram buckets must be finite and non-empty")
        self._counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        """Record `n` observations of `value` (NaN is ignored: it has no bucket)."""
        if math.isnan(value) or n <= 0:
            return
        i = 0
        while i < len(self.bounds) and value > self.bounds[i]:
            i += 1
        self._counts[i] += n
        self.sum += value * n
        self.count += n

    def cumulative(self) -> list[int]:
        """Observations <= each bound, then the total (+Inf)."""
        out, running = [], 0
        for c in self._counts:
            running += c
            out.append(running)
        return out

    def quantile(self, q: float) -> float | None:
        """Estimate of quantile `q` by linear interpolation inside the bucket (as PromQL's
        `histogram_quantile`); None when empty; the last finite bound for the +Inf bucket."""
        if self.count == 0:
            return None
        rank = q * self.count
        lower, seen = 0.0, 0
        for bound, c in zip(self.bounds, self._counts, strict=False):
            if seen + c >= rank and c > 0:
                return lower + (bound - lower) * (rank - seen) / c
            seen += c
            lower = bound
        return self.bounds[-1]

    def samples(self, name: str, labels: Mapping[str, str] | None = None) -> Iterator[Sample]:
        """`name_bucket{le=...}`, `name_sum`, `name_count` lines."""
        base = dict(labels or {})
        for bound, n in zip((*self.bounds, math.inf), self.cumulative(), strict=True):
            le = "+Inf" if bound == math.inf else _fmt_number(bound)
            yield f"{name}_bucket", {**base, "le": le}, float(n)
        yield f"{name}_sum", base, self.sum
        yield f"{name}_count", base, float(self.count)


class RateTracker:
    """Per-key rates of monotonically growing totals over a sliding window of samples.

    Example:
        >>> r = RateTracker(window_s=10.0)
        >>> r.sample(0.0, {"segments": 0})
        >>> r.sample(5.0, {"segments": 2500})
        >>> r.rates()
        {'segments': 500.0}
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, float]]] = deque()

    def sample(self, now_s: float, totals: Mapping[str, float]) -> None:
        """Record the totals seen at `now_s`; samples older than the window are dropped (the
        newest one beyond it is kept as the rate's base)."""
        self._samples.append((now_s, dict(totals)))
        while len(self._samples) > 2 and now_s - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def rates(
        self, now_s: float | None = None, current: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """Per second over the window: from the oldest kept sample to the newest one, or to
        `current` totals read at `now_s` when given. 0.0 without two points in time. A total
        that went down (a restart of the counter) counts from zero."""
        points = list(self._samples)
        if now_s is not None and current is not None:
            points.append((now_s, dict(current)))
        if len(points) < 2:
            return {k: 0.0 for k in (points[-1][1] if points else {})}
        (t0, first), (t1, last) = points[0], points[-1]
        dt = t1 - t0
        out = {}
        for key, value in last.items():
            before = first.get(key, 0.0)
            delta = value - before if value >= before else value
            out[key] = delta / dt if dt > 0 else 0.0
        return out


@dataclass(frozen=True)
class PartitionLag:
    """Lag of one assigned partition: end offset - committed offset (the next offset to read)."""

    topic: str
    partition: int
    committed: int | None
    end: int | None

    @property
    def lag(self) -> int | None:
        """Messages not yet committed (None when the end offset is unknown)."""
        if self.end is None:
            return None
        return max(0, self.end - (self.committed or 0))


class LogRecordCounter(logging.Handler):
    """Counts log records at WARNING or above by (level, logger); formats nothing.

    Example:
        >>> c = LogRecordCounter()
        >>> c.handle(logging.makeLogRecord({"levelno": 40, "levelname": "ERROR", "name": "x"}))
        True
        >>> dict(c.counts)
        {('error', 'x'): 1}
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.counts: Counter[tuple[str, str]] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[(record.levelname.lower(), record.name)] += 1


@dataclass
class Observability:
    """What a worker exports beyond its agents' counters. Agents and the serving component
    write into it; the web module reads it.

    Args:
        clock: monotonic seconds (injected).
        rate_window_s: window of the events/s figures.
        latency_buckets_s: bounds of the scoring latency histogram.

    Example:
        >>> obs = Observability(clock=lambda: 12.0)
        >>> obs.set_lag([PartitionLag("mmbee.live.frames", 0, committed=90, end=100)])
        >>> obs.lag_total()
        10
    """

    clock: Callable[[], float]
    rate_window_s: float = 30.0
    latency_buckets_s: tuple[float, ...] = LATENCY_BUCKETS_S
    started_s: float = field(init=False)
    scoring_latency: Histogram = field(init=False)
    rates: RateTracker = field(init=False)
    lag: list[PartitionLag] = field(default_factory=list)
    lag_sampled_s: float | None = None
    lag_error: str | None = None
    model_version: str | None = None
    model_loaded_at_ms: int | None = None
    log_counter: LogRecordCounter = field(default_factory=LogRecordCounter)

    def __post_init__(self) -> None:
        self.started_s = self.clock()
        self.scoring_latency = Histogram(self.latency_buckets_s)
        self.rates = RateTracker(self.rate_window_s)
        self.rates.sample(self.started_s, {})  # every total is 0 at the start

    # --- API for serving -----------------------------------------------------------------
    def observe_scoring_latency(self, seconds: float, n: int = 1) -> None:
        """Record the latency of `n` score requests answered together (a batch) in seconds."""
        self.scoring_latency.observe(seconds, n)

    def set_model_version(self, version: str, *, loaded_at_ms: int | None = None) -> None:
        """The model now being served (call after a successful load or hot swap)."""
        self.model_version = version
        self.model_loaded_at_ms = loaded_at_ms

    # --- lag and rates (timers) ----------------------------------------------------------
    def set_lag(self, lags: Iterable[PartitionLag], error: str | None = None) -> None:
        """Replace the lag snapshot (sampled now); `error` notes a failed sample (the previous
        figures are then kept)."""
        if error is not None:
            self.lag_error = error
            return
        self.lag = sorted(lags, key=lambda x: (x.topic, x.partition))
        self.lag_sampled_s = self.clock()
        self.lag_error = None

    def lag_total(self) -> int:
        """Sum of the known per-partition lags."""
        return sum(x.lag or 0 for x in self.lag)

    def sample_rates(self, metrics: StreamMetrics) -> None:
        """Record every agent's `processed` total now (a timer calls this every second)."""
        self.rates.sample(self.clock(), _processed(metrics))

    def agent_rates(self, metrics: StreamMetrics) -> dict[str, float]:
        """Processed messages per second per agent over the window, up to now."""
        return self.rates.rates(self.clock(), _processed(metrics))

    # --- export ---------------------------------------------------------------------------
    def samples(self, metrics: StreamMetrics) -> Iterator[Sample]:
        """Every exported sample except the per-component gauges (see `web.collect`). The
        agents' own counters come from `StreamMetrics.samples()` (`mmbee_agent_<name>_total`,
        `mmbee_agent_<gauge>`, `mmbee_duplicates_total{agent}`,
        `mmbee_dead_letters_total{agent,reason}`)."""
        agents = metrics.snapshot()["agents"]
        rates = self.agent_rates(metrics)
        for agent, a in sorted(agents.items()):
            labels = {"agent": agent}
            yield "mmbee_agent_events_per_second", labels, rates.get(agent, 0.0)
            yield "mmbee_agent_errors_total", labels, float(sum(a["dlq"].values()))
        yield from metrics.samples()
        for x in self.lag:
            labels = {"topic": x.topic, "partition": str(x.partition)}
            if x.lag is not None:
                yield "mmbee_consumer_lag", labels, float(x.lag)
            if x.committed is not None:
                yield "mmbee_consumer_committed_offset", labels, float(x.committed)
            if x.end is not None:
                yield "mmbee_consumer_end_offset", labels, float(x.end)
        if self.lag_sampled_s is not None:
            age = self.clock() - self.lag_sampled_s
            yield "mmbee_consumer_lag_sample_age_seconds", {}, age
        yield from self.scoring_latency.samples("mmbee_scoring_latency_seconds")
        if self.model_version is None:
            yield "mmbee_model_version_info", {"version": "none"}, 0.0
        else:
            yield "mmbee_model_version_info", {"version": self.model_version}, 1.0
            if self.model_loaded_at_ms is not None:
                yield "mmbee_model_loaded_timestamp_seconds", {}, self.model_loaded_at_ms / 1000
        for (level, logger), n in sorted(self.log_counter.counts.items()):
            yield "mmbee_log_records_total", {"level": level, "logger": logger}, float(n)
        yield "mmbee_worker_uptime_seconds", {}, self.clock() - self.started_s


def _processed(metrics: StreamMetrics) -> dict[str, float]:
    agents = metrics.snapshot()["agents"]
    return {a: float(m["counters"].get("processed", 0)) for a, m in agents.items()}


def observability(ctx: StreamContext) -> Observability:
    """The context's `Observability` (made on first use, kept in `ctx.runtimes`)."""
    got = ctx.runtimes.get(_RUNTIME_KEY)
    if got is None:
        got = ctx.runtimes[_RUNTIME_KEY] = Observability(
            clock=ctx.monotonic, rate_window_s=ctx.settings.metrics_rate_window_s
        )
    assert isinstance(got, Observability)
    return got


# --- Prometheus text format -----------------------------------------------------------------


def _fmt_number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_NAME_OK = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def _family(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and _HELP.get(base, ("",))[0] == "histogram":
            return base
    return name


def render_prometheus(samples: Iterable[Sample]) -> str:
    """The Prometheus text exposition format (version 0.0.4) of `samples`, grouped by family
    with `# HELP` / `# TYPE` lines; families keep their first-seen order.

    Example:
        >>> print(render_prometheus([("mmbee_graph_users", {}, 3.0)]), end="")
        # HELP mmbee_graph_users users in the gift graph
        # TYPE mmbee_graph_users gauge
        mmbee_graph_users 3
    """
    families: dict[str, list[Sample]] = {}
    for name, labels, value in samples:
        if not _NAME_OK.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        families.setdefault(_family(name), []).append((name, labels, value))
    lines = []
    for family, rows in families.items():
        kind, text = _HELP.get(family, ("counter" if family.endswith("_total") else "gauge", ""))
        lines.append(f"# HELP {family} {text or family.replace('_', ' ')}")
        lines.append(f"# TYPE {family} {kind}")
        for name, labels, value in rows:
            if labels:
                inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                lines.append(f"{name}{{{inner}}} {_fmt_number(value)}")
            else:
                lines.append(f"{name} {_fmt_number(value)}")
    return "\n".join(lines) + "\n"


# --- structured logs ------------------------------------------------------------------------

_KV = re.compile(r"(\w+)=%[-#0 +]*\d*(?:\.\d+)?[sdrfig]")
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC ISO 8601), level, logger, msg, and fields.

    Fields come from `extra={...}` and from `key=%s` placeholders in the format string (mmbee's
    log lines are written that way, e.g. `dead_letter agent=%s reason=%s event_id=%s`), so an
    event's `event_id` is a key of its own; the first word of such a line is `event`.

    Example:
        >>> rec = logging.makeLogRecord({"name": "mmbee.streams.dlq", "levelno": 30,
        ...     "levelname": "WARNING", "msg": "dead_letter reason=%s event_id=%s",
        ...     "args": ("late", "e1"), "created": 0.0})
        >>> json.loads(JsonLogFormatter().format(rec))["event_id"]
        'e1'
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if isinstance(record.msg, str) and isinstance(record.args, tuple):
            keys = _KV.findall(record.msg)
            if keys and len(keys) <= len(record.args):
                head = record.msg.split(" ", 1)[0]
                if head.isidentifier() and "=" not in head:
                    out["event"] = head
                # the key=%s placeholders are the last ones in mmbee's lines
                for key, value in zip(keys, record.args[-len(keys) :], strict=True):
                    out[key] = value if isinstance(value, int | float | bool | None) else str(value)
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in out:
                out[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def logging_config(settings: Settings) -> dict[str, Any] | None:
    """A `logging.config.dictConfig` for the worker: JSON lines on stdout when
    `settings.log_format == "json"`; None keeps Faust's default (coloured text)."""
    if settings.log_format != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonLogFormatter"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
                "level": settings.log_level,
            }
        },
        "root": {"level": settings.log_level, "handlers": ["default"]},
    }
