"""Per-agent counters of a worker (events, duplicates, dead letters by reason) and ingest timing.

One `StreamMetrics` object lives in each app's `StreamContext`; agents count into it and the
worker serves `snapshot()` as JSON at `/mmbee/metrics/`. `samples()` gives flat
(name, labels, value) triples for a Prometheus exporter.

A redelivered event whose id an agent has applied already is a duplicate: the normal
at-least-once path after a rebalance or restart, not poison. It changes nothing, is acked, and
is counted (`duplicate()`: counter `duplicates`, `mmbee_duplicates_total{agent}`), never
dead-lettered.

Example:
    >>> m = StreamMetrics(clock=lambda: 0.0)
    >>> m.count("segments", "events", 3)
    >>> m.dead_letter("segments", "late")
    >>> m.duplicate("segments")
    >>> m.snapshot()["agents"]["segments"]["dlq"], m.get("segments", "duplicates")
    ({'late': 1}, 1)
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AgentMetrics", "StreamMetrics"]


@dataclass
class AgentMetrics:
    """Counters and gauges of one agent. `first_s`/`last_s`: clock time of the first and latest
    batch seen."""

    counters: Counter[str] = field(default_factory=Counter)
    dlq: Counter[str] = field(default_factory=Counter)
    gauges: dict[str, float] = field(default_factory=dict)
    first_s: float | None = None
    last_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view."""
        return {
            "counters": dict(sorted(self.counters.items())),
            "dlq": dict(sorted(self.dlq.items())),
            "gauges": dict(sorted(self.gauges.items())),
            "first_s": self.first_s,
            "last_s": self.last_s,
        }


class StreamMetrics:
    """Counters of every agent of one worker.

    Args:
        clock: monotonic seconds (injected; `time.monotonic` in a worker).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._agents: dict[str, AgentMetrics] = {}

    def agent(self, name: str) -> AgentMetrics:
        """The counters of agent `name` (created on first use)."""
        got = self._agents.get(name)
        if got is None:
            got = self._agents[name] = AgentMetrics()
        return got

    def count(self, agent: str, name: str, n: int = 1) -> None:
        """Add `n` to counter `name` of `agent`."""
        self.agent(agent).counters[name] += n

    def gauge(self, agent: str, name: str, value: float) -> None:
        """Set gauge `name` of `agent` (a level, e.g. events held, not a running total)."""
        self.agent(agent).gauges[name] = value

    def dead_letter(self, agent: str, reason: str, n: int = 1) -> None:
        """Count `n` messages dead-lettered by `agent` for `reason`."""
        self.agent(agent).dlq[reason] += n

    def duplicate(self, agent: str, n: int = 1) -> None:
        """Count `n` redelivered events `agent` had applied already (acked, not dead-lettered)."""
        self.agent(agent).counters["duplicates"] += n

    def observe(self, agent: str, n: int) -> None:
        """Count `n` consumed messages and stamp the clock (ingest rate = events / (last - first))."""
        a = self.agent(agent)
        now = self._clock()
        if a.first_s is None:
            a.first_s = now
        a.last_s = now
        a.counters["events"] += n

    def get(self, agent: str, name: str) -> int:
        """Current value of a counter (0 if never counted)."""
        a = self._agents.get(agent)
        return 0 if a is None else a.counters[name]

    def dlq_total(self, agent: str | None = None) -> int:
        """Dead letters of one agent, or of all agents."""
        agents = self._agents.values() if agent is None else [self.agent(agent)]
        return sum(sum(a.dlq.values()) for a in agents)

    def snapshot(self) -> dict[str, Any]:
        """All counters as a JSON-able dict: {"agents": {name: {...}}}."""
        return {"agents": {k: v.as_dict() for k, v in sorted(self._agents.items())}}

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """(metric name, labels, value) for every counter, Prometheus-style names."""
        for agent, a in sorted(self._agents.items()):
            for name, value in sorted(a.counters.items()):
                metric = (
                    "mmbee_duplicates_total"
                    if name == "duplicates"
                    else f"mmbee_agent_{name}_total"
                )
                yield metric, {"agent": agent}, float(value)
            for name, level in sorted(a.gauges.items()):
                yield f"mmbee_agent_{name}", {"agent": agent}, float(level)
            for reason, value in sorted(a.dlq.items()):
                yield "mmbee_dead_letters_total", {"agent": agent, "reason": reason}, float(value)
