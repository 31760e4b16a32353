"""Resuming Faust's flow clears the stream buffers only when the flow was suspended.

Faust (mode's `FlowControlEvent`) empties every stream buffer (`clear_on_resume` queues) on
each `app.flow_control.resume()`. That is right after a rebalance, when the buffers may hold
messages of revoked partitions. But faust-streaming 0.15.3 also calls `resume()` while the flow
is already running. At the end of table recovery (`Recovery.on_recovery_completed`, and
`_resume_streams` without tables) it does this:

1. it resumes the source partitions;
2. it awaits `perform_seek()` (a round trip to the consumer thread);
3. it calls `flow_control.resume()`, although the flow has run since recovery began.

During step 2 the fetcher hands the source messages that the client fetched during recovery
to the streams. Step 3 then deletes the ones the agent has not taken yet. The client's fetch
positions have moved past them, so they are never fetched again. Nothing is logged, no error is
raised, and they stay uncommitted. The restarted worker then sits idle behind a gap until the
next restart.

This was the occasional failure of the SIGKILL-restart test in `tests/streams/test_worker.py`.
On 2026-12-05 it failed 12 of 65 runs of that test alone, most with a CPU burst at start-up. In
a failing run with debug logging, the final resume dropped 59 buffered messages; the replacement
worker took 1 message, then sat idle with its fetch positions at the high watermarks. With this
patch, 15 of 15 such runs passed.

`install_resume_clears_only_after_suspend()` patches `FlowControlEvent.resume` for the whole
process. It clears the buffers only when the flow was suspended, which is the rebalance case.
A resume while the flow is running then leaves buffered messages in place, and the agents
process them. If the seek then moves back, the redelivered messages are absorbed as after any
restart (segments by offset; gifts by event id, dead-lettered as `duplicate`). Revocation is
unchanged: it suspends the flow and clears the buffers itself, so the first resume after it
still clears. Messages of an older generation that reach a stream are skipped by Faust's
generation check.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["install_resume_clears_only_after_suspend", "resume_patch_installed"]

_ATTR = "_mmbee_resume_clears_only_after_suspend"

log = logging.getLogger("mmbee.streams.flow_resume")


def resume_patch_installed() -> bool:
    """Whether `install_resume_clears_only_after_suspend` patched this process."""
    from mode.utils.queues import FlowControlEvent

    return bool(getattr(FlowControlEvent.resume, _ATTR, False))


def install_resume_clears_only_after_suspend() -> bool:
    """Patch mode's `FlowControlEvent.resume` for the whole process (idempotent). Returns False,
    with a warning, and leaves mode unpatched when its event no longer keeps the `_suspend` and
    `_resume` events this patch reads (another mode version)."""
    from mode.utils.queues import FlowControlEvent

    if resume_patch_installed():
        return True
    probe = FlowControlEvent(initially_suspended=True)
    if not all(hasattr(getattr(probe, n, None), "is_set") for n in ("_suspend", "_resume")):
        log.warning("mode's FlowControlEvent changed: the flow-resume fix is not installed")
        return False
    original = FlowControlEvent.resume

    def resume(self: Any) -> None:
        """Resume production into the managed queues; empty them if the flow was suspended."""
        if self._suspend.is_set():
            original(self)
            return
        self._resume.set()  # already running: nothing stale can be buffered, keep it all

    setattr(resume, _ATTR, True)
    resume.__wrapped__ = original  # type: ignore[attr-defined]
    FlowControlEvent.resume = resume  # type: ignore[method-assign]
    return True
