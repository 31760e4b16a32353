"""Cheap memory of the last minutes for the live page: ring buffers of samples the worker's
existing timers already take, and the last few dead letters.

Nothing here runs per event. `SeriesRing.record` is called by the timers of `web.install`
(processed totals every second, lag at every lag sample); rates and charts are computed only
when a page asks (`rates()`, `points()`).

Example:
    >>> ring = SeriesRing(keep_s=60.0, step_s=1.0)
    >>> for t, n in ((0.0, 0), (1.0, 100), (2.0, 300)):
    ...     ring.record(t, {"segments": n})
    >>> ring.rates(now_s=2.0)
    {'segments': [[-1.0, 100.0], [0.0, 200.0]]}
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SeriesRing", "RecentDeadLetters", "DLQ_LOGGER"]

DLQ_LOGGER = "mmbee.streams.dlq"
"""The logger `DeadLetterSink` writes one structured `dead_letter ...` line to per letter."""


class SeriesRing:
    """Samples `(t, {key: value})` of the last `keep_s` seconds, at most one per `step_s`.

    Args:
        keep_s: how far back the ring reaches (seconds).
        step_s: the smallest spacing kept between two samples (later ones in between are
            dropped: a timer faster than the chart needs costs nothing more).
    """

    def __init__(self, keep_s: float = 300.0, step_s: float = 2.0) -> None:
        if not (keep_s > 0 and step_s > 0):
            raise ValueError(f"keep_s and step_s must be > 0, not {keep_s}, {step_s}")
        self.keep_s, self.step_s = keep_s, step_s
        self._samples: deque[tuple[float, dict[str, float]]] = deque(
            maxlen=max(2, int(keep_s / step_s) + 2)
        )

    def __len__(self) -> int:
        return len(self._samples)

    def due(self, now_s: float) -> bool:
        """Whether a sample taken at `now_s` would be kept (lets a caller skip building it)."""
        return not self._samples or now_s - self._samples[-1][0] >= self.step_s

    def record(self, now_s: float, values: Mapping[str, float | None]) -> None:
        """Keep `values` taken at `now_s` (None values are left out), unless the last sample is
        younger than `step_s`."""
        if not self.due(now_s):
            return
        self._samples.append((now_s, {k: float(v) for k, v in values.items() if v is not None}))
        while self._samples and now_s - self._samples[0][0] > self.keep_s:
            self._samples.popleft()

    def points(self, now_s: float) -> dict[str, list[list[float]]]:
        """Per key, `[seconds before now (<= 0), value]` pairs, oldest first."""
        out: dict[str, list[list[float]]] = {}
        for t, values in self._samples:
            for k, v in values.items():
                out.setdefault(k, []).append([round(t - now_s, 1), v])
        return out

    def rates(self, now_s: float) -> dict[str, list[list[float]]]:
        """Per key, the per-second rate between consecutive samples of monotonically growing
        totals, stamped at the later sample (a total that went down counts from zero)."""
        out: dict[str, list[list[float]]] = {}
        samples = list(self._samples)
        for (t0, a), (t1, b) in zip(samples, samples[1:], strict=False):
            dt = t1 - t0
            if dt <= 0:
                continue
            for k, v in b.items():
                before = a.get(k, 0.0)
                delta = v - before if v >= before else v
                out.setdefault(k, []).append([round(t1 - now_s, 1), round(delta / dt, 2)])
        return out


_KV = re.compile(r"(\w+)=%[-#0 +]*\d*(?:\.\d+)?[sdrfig]")


class RecentDeadLetters(logging.Handler):
    """The last `keep` dead letters, read from the structured log line `DeadLetterSink` writes
    for each one (`dead_letter agent=%s reason=%s event_id=%s topic=%s ...`): their agent,
    reason, source topic, partition, offset, event id and detail, with the wall-clock time.

    Records below the logger's effective level never reach a handler: a worker run with
    `log_level=ERROR` keeps counting dead letters by reason but lists none here.

    Args:
        keep: how many letters to keep.
        clock_ms: wall-clock milliseconds (injected).

    Example:
        >>> recent = RecentDeadLetters(keep=2, clock_ms=lambda: 5)
        >>> recent.handle(logging.makeLogRecord({"name": DLQ_LOGGER, "levelno": 30,
        ...     "msg": "dead_letter agent=%s reason=%s topic=%s", "args": ("g", "late", "t")}))
        True
        >>> [(x["reason"], x["topic"]) for x in recent.letters()]
        [('late', 't')]
    """

    def __init__(self, keep: int = 8, clock_ms: Callable[[], int] | None = None) -> None:
        super().__init__(level=logging.WARNING)
        self._letters: deque[dict[str, Any]] = deque(maxlen=keep)
        self._clock_ms = clock_ms

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg
        if not isinstance(msg, str) or not msg.startswith("dead_letter "):
            return
        args = record.args if isinstance(record.args, tuple) else ()
        keys = _KV.findall(msg)
        if len(keys) != len(args):
            return
        letter: dict[str, Any] = {
            k: v if isinstance(v, int | float | None) else str(v)
            for k, v in zip(keys, args, strict=True)
        }
        at = self._clock_ms() if self._clock_ms is not None else int(record.created * 1000)
        letter["at_ms"] = at
        self._letters.append(letter)

    def letters(self) -> list[dict[str, Any]]:
        """The kept letters, newest first."""
        return list(reversed(self._letters))
