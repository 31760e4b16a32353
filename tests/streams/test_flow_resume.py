"""`mmbee.streams.flow_resume`: resuming a running flow keeps the buffered messages; resuming a
suspended flow (after a rebalance) still empties the buffers, as Faust expects."""

from __future__ import annotations

import asyncio
import logging

import pytest
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from mmbee.settings import Settings
from mmbee.streams.app import create_app
from mmbee.streams.flow_resume import (
    install_resume_clears_only_after_suspend,
    resume_patch_installed,
)


def _buffer(flow: FlowControlEvent, n: int) -> FlowControlQueue:
    """A stream buffer as Faust makes it (`clear_on_resume=True`) holding `n` messages."""
    queue: FlowControlQueue = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    for i in range(n):
        queue.put_nowait(i)
    return queue


def test_unpatched_resume_of_a_running_flow_empties_the_buffers() -> None:
    # the Faust behaviour the patch fixes: recovery's last resume() dropped what it found
    install_resume_clears_only_after_suspend()
    original = FlowControlEvent.resume.__wrapped__  # type: ignore[attr-defined]

    async def run() -> int:
        flow = FlowControlEvent(initially_suspended=False)
        queue = _buffer(flow, 3)
        original(flow)
        return queue.qsize()

    assert asyncio.run(run()) == 0


def test_resume_of_a_running_flow_keeps_the_buffered_messages() -> None:
    install_resume_clears_only_after_suspend()

    async def run() -> tuple[int, bool]:
        flow = FlowControlEvent(initially_suspended=False)
        queue = _buffer(flow, 3)
        flow.resume()
        return queue.qsize(), flow.is_active()

    assert asyncio.run(run()) == (3, True)


def test_resume_after_a_suspend_still_empties_the_buffers() -> None:
    install_resume_clears_only_after_suspend()

    async def run() -> tuple[int, bool, bool]:
        flow = FlowControlEvent(initially_suspended=False)
        queue = _buffer(flow, 3)
        flow.suspend()
        suspended = flow.is_active()
        flow.resume()
        await asyncio.wait_for(flow.acquire(), timeout=1)  # producers may go on
        return queue.qsize(), suspended, flow.is_active()

    assert asyncio.run(run()) == (0, False, True)


def test_it_refuses_a_changed_flow_control_event(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    install_resume_clears_only_after_suspend()
    original = FlowControlEvent.resume.__wrapped__  # type: ignore[attr-defined]
    monkeypatch.setattr(FlowControlEvent, "resume", original)
    # a mode whose event keeps no `_suspend`/`_resume`
    monkeypatch.setattr(FlowControlEvent, "__init__", lambda self, **_: None)
    with caplog.at_level(logging.WARNING, logger="mmbee.streams.flow_resume"):
        assert install_resume_clears_only_after_suspend() is False
    assert not resume_patch_installed()
    assert "changed" in caplog.text


def test_the_app_factory_installs_it() -> None:
    create_app(Settings(store="memory://", components=()))
    assert resume_patch_installed()
    assert install_resume_clears_only_after_suspend()  # idempotent
    assert resume_patch_installed()
