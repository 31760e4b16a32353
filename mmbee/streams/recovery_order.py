"""Faust's end of recovery resumes the source partitions only after its final flow resume.

faust-streaming 0.15.3 ends table recovery (`Recovery.on_recovery_completed`, and
`Recovery._resume_streams` for an app without tables) in this order:

1. `consumer.resume_partitions(sources)`: every assigned partition that is not a changelog;
2. `await consumer.perform_seek()`: a round trip to the consumer thread;
3. `app.flow_control.resume()`, which empties every stream buffer (mode's `FlowControlEvent`);
4. `consumer.resume_flow()`.

After a recovery from the changelog, Faust's fetcher is already running at step 2 (it read the
changelogs). So it hands the streams the source messages that the client fetched from the
committed offsets, and step 3 deletes those the agents have not taken yet. The client's
positions have passed them: they are never fetched again, nothing is logged, and the worker
idles behind an uncommitted gap until its next restart. This was the occasional failure of the
SIGKILL-restart test (`tests/streams/test_worker.py`; about 1 start in 5 under a CPU burst, a
failing run's final resume dropped 59 buffered messages). `tests/streams/seek_race.py` forces the
race on every start; without this module the restarted worker lost part of its backlog in 3
of 3 runs (48 to 60 messages were in the buffers at the final resume).

`install_sources_resume_after_flow()` wraps both methods so that, while they run, the source
partitions are recorded instead of resumed, and resumed right after the flow resume of step 3,
with nothing awaited in between. The seek of step 2 then happens while no source message can
reach a stream, and nothing is buffered that step 3 could delete. Changelog partitions resume as
before. A resume is skipped when a rebalance started meanwhile (the generation changed): the next
recovery resumes that assignment itself.

This differs from making step 3 keep the buffers (tried on 2026-12-05 and backed out): that kept
messages fetched before the seek, and the seek then had the client fetch them a second time.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

__all__ = [
    "install_sources_resume_after_flow",
    "sources_resume_after_flow",
    "sources_resume_after_flow_installed",
]

log = logging.getLogger("mmbee.streams.recovery_order")

_ATTR = "_mmbee_sources_resume_after_flow"
_METHODS = ("on_recovery_completed", "_resume_streams")
# the calls, in this order, that each wrapped method must make (see the module docstring);
# whitespace-free, as they are looked up in the method's source with its whitespace removed
_ORDER = ("consumer.resume_partitions(", ".perform_seek()", "flow_control.resume()")


@contextlib.contextmanager
def _deferred_source_resume(recovery: Any, generation_id: int) -> Iterator[None]:
    """While open, `recovery.app.consumer.resume_partitions` resumes changelog partitions only;
    the others are resumed by the next `app.flow_control.resume()`, right after it empties the
    stream buffers, and at the end if no flow resume came."""
    app = recovery.app
    consumer, flow = app.consumer, app.flow_control
    resume_partitions, flow_resume = type(consumer).resume_partitions, type(flow).resume
    deferred: set[Any] = set()

    def resume_deferred() -> None:
        if deferred and app.consumer_generation_id == generation_id:
            resume_partitions(consumer, deferred & set(consumer.assignment()))
        deferred.clear()

    def record(tps: Iterable[Any]) -> None:
        tps = set(tps)
        changelogs = {tp for tp in tps if recovery._is_changelog_tp(tp)}
        deferred.update(tps - changelogs)
        if changelogs:
            resume_partitions(consumer, changelogs)

    def resume_flow() -> None:
        flow_resume(flow)  # empties the stream buffers: no source message can be in them
        resume_deferred()

    consumer.resume_partitions, flow.resume = record, resume_flow
    try:
        yield
        resume_deferred()
    finally:
        del consumer.resume_partitions, flow.resume


def sources_resume_after_flow(
    method: Callable[..., Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    """Wrap a `Recovery` method `(self, generation_id=0)` as `install_...` does."""

    @functools.wraps(method)
    async def wrapped(self: Any, generation_id: int = 0) -> None:
        with _deferred_source_resume(self, generation_id):
            await method(self, generation_id=generation_id)

    setattr(wrapped, _ATTR, True)
    return wrapped


def sources_resume_after_flow_installed() -> bool:
    """Whether `install_sources_resume_after_flow` patched this process's Faust."""
    from faust.tables.recovery import Recovery

    return all(getattr(getattr(Recovery, m), _ATTR, False) for m in _METHODS)


def _calls_in_order(source: str) -> bool:
    flat = "".join(source.split())
    at = [flat.find(call) for call in _ORDER]
    return all(i >= 0 for i in at) and at == sorted(at)


def install_sources_resume_after_flow() -> bool:
    """Patch Faust's `Recovery` for the whole process (idempotent). Returns False, with a
    warning, and leaves Faust unpatched when a method does not make the calls of the module
    docstring in that order (another faust-streaming version)."""
    from faust.tables.recovery import Recovery

    if sources_resume_after_flow_installed():
        return True
    originals = {m: getattr(Recovery, m) for m in _METHODS}
    unknown = [m for m, f in originals.items() if not _calls_in_order(inspect.getsource(f))]
    if unknown:
        log.warning(
            "faust Recovery.%s is not the code mmbee.streams.recovery_order patches; "
            "left unpatched (source messages fetched during the final seek may be dropped)",
            "/".join(unknown),
        )
        return False
    for name, original in originals.items():
        setattr(Recovery, name, sources_resume_after_flow(original))
    return True
