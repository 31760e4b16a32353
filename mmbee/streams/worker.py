"""Running a Faust worker process (`mmbee worker`): prepare topics, build the app, serve.

A worker runs until SIGINT/SIGTERM (graceful: Faust commits what is acked and leaves the group).
It is an ordinary process, so tests start it with `subprocess` and can SIGKILL it; everything it
needs comes from `Settings` (i.e. `MMBEE_*` environment variables).

Example:
    $ MMBEE_COMPONENTS='["segments"]' mmbee worker      # doctest: +SKIP
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence

import faust

from mmbee.settings import Settings
from mmbee.streams.app import build_app
from mmbee.streams.deployment import provision, verify_worker_topics
from mmbee.streams.observability import logging_config, observability
from mmbee.streams.runtime.compat import install_fetch_wait
from mmbee.streams.runtime.component import Component
from mmbee.streams.runtime.context import Register
from mmbee.streams.topics import verify_copartitioning

__all__ = ["prepare_topics", "run_worker"]

log = logging.getLogger("mmbee.streams.worker")


def prepare_topics(
    settings: Settings, components: Sequence[str | Component | Register] | None = None
) -> list[str]:
    """Create missing topics (dev profile only; production topics are provisioned with
    `mmbee topics create`), then refuse to run if co-partitioned topics disagree.

    The table changelogs are created here too, before Faust starts: left to Faust, they were
    still being created on Apache Kafka when the first event wrote a table, and the agent crashed
    on `PartitionsMismatch` ('changelog topic ... has 0 partitions'; 2 worker starts of about 30
    in the tests of 2026-12-07)."""
    created = provision(settings, components) if settings.profile == "dev" else []
    verify_copartitioning(settings)
    return created


def run_worker(
    settings: Settings, components: Sequence[str | Component | Register] | None = None
) -> None:
    """Run one Faust worker with `components` (None: `settings.components`, else all) until it
    is stopped by a signal. Raises SystemExit when the worker ends, like any Faust worker."""
    if settings.profile == "dev":
        install_fetch_wait(settings.embedded_fetch_wait_ms)
    created = prepare_topics(settings, components)
    if created:
        log.info("created topics: %s", ", ".join(created))
    ctx = build_app(settings, components)
    verify_worker_topics(ctx)  # changelog/internal partition counts; production: all topics exist
    # A worker holds tens of thousands of long-lived objects (unacked events, open segments);
    # with the default thresholds the cyclic collector rescans them constantly (measured:
    # about 7 % of the segment agent's throughput). Collect young objects less often and move
    # everything alive after start-up out of the collector's view.
    gc.set_threshold(50_000, 20, 100)
    gc.freeze()
    worker = faust.Worker(
        ctx.app,
        loglevel=settings.log_level,
        quiet=True,
        logging_config=logging_config(settings),  # JSON lines when log_format == "json"
    )
    worker.loghandlers.append(observability(ctx).log_counter)  # WARNING+ records in /metrics
    # No terminal spinner: below INFO it hangs a DEBUG-level handler on the root logger, so
    # every debug record of aiokafka and faust gets built (measured: ~7 % of a worker's time).
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    finally:
        ctx.shutdown()
