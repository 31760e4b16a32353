"""The inline hand-off (`mmbee.streams.runtime.compat` (handoff)) keeps Faust's `Consumer.wait_first` contract:
the callback's result, its exceptions, and interruption by a suspended flow. Only a callback that
never waits runs without tasks. Every broker test runs the patched drain loop end to end."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import faust
import pytest
from faust.transport.consumer import Consumer

from mmbee.settings import Settings
from mmbee.streams.app import create_app
from mmbee.streams.runtime.compat import (
    inline_handoff_installed,
    install_inline_handoff,
    uninstall_inline_handoff,
)


@pytest.fixture
def patched() -> Iterator[None]:
    was = inline_handoff_installed()
    assert install_inline_handoff()
    yield
    if not was:
        uninstall_inline_handoff()


def _consumer() -> Any:
    """Faust's real Kafka consumer, never started: `wait_first` needs no broker."""
    return faust.App("t-handoff", broker="kafka://127.0.0.1:9", store="memory://").consumer


def test_a_callback_that_does_not_wait_runs_inline(patched: None) -> None:
    async def main() -> tuple[Any, bool, int]:
        consumer = _consumer()
        tasks_before = len(asyncio.all_tasks())
        ran_in: list[asyncio.Task[Any] | None] = []

        async def callback() -> str:
            ran_in.append(asyncio.current_task())
            return "delivered"

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = await consumer.wait_first(callback(), consumer.suspend_flow.wait())
            gc.collect()  # an unclosed suspend-wait coroutine would warn "never awaited" here
        same_task = ran_in == [asyncio.current_task()]
        assert not [w for w in caught if "never awaited" in str(w.message)]
        return res, same_task, len(asyncio.all_tasks()) - tasks_before

    res, same_task, extra_tasks = asyncio.run(main())
    assert res.results == ["delivered"] and not res.stopped
    assert same_task and extra_tasks == 0


def test_a_callback_that_waits_finishes_as_before(patched: None) -> None:
    async def main() -> Any:
        consumer = _consumer()
        gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def callback() -> str:
            await asyncio.sleep(0)  # a bare yield first, then a real future
            return "after " + await gate

        asyncio.get_running_loop().call_later(0.05, gate.set_result, "room")
        return await consumer.wait_first(callback(), consumer.suspend_flow.wait())

    res = asyncio.run(main())
    assert res.results == ["after room"] and not res.stopped


def test_a_suspended_flow_interrupts_a_waiting_callback(patched: None) -> None:
    async def main() -> tuple[Any, list[str]]:
        consumer = _consumer()
        seen: list[str] = []

        async def callback() -> None:
            try:
                await asyncio.get_running_loop().create_future()  # a full buffer: never room
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        asyncio.get_running_loop().call_later(0.05, consumer.suspend_flow.set)
        res = await consumer.wait_first(callback(), consumer.suspend_flow.wait())
        await asyncio.sleep(0)  # let the cancellation reach the callback
        return res, seen

    res, seen = asyncio.run(main())
    assert len(res.done) == 1 and res.results == [True]  # the suspend wait won
    assert seen == ["cancelled"]


@pytest.mark.parametrize("waits_first", [False, True])
def test_callback_errors_propagate(patched: None, waits_first: bool) -> None:
    async def main() -> None:
        consumer = _consumer()

        async def callback() -> None:
            if waits_first:
                await asyncio.sleep(0.01)
            raise ValueError("bad message")

        await consumer.wait_first(callback(), consumer.suspend_flow.wait())

    with pytest.raises(ValueError, match="bad message"):
        asyncio.run(main())


def test_with_the_flow_suspended_the_original_runs(patched: None) -> None:
    async def main() -> Any:
        consumer = _consumer()
        consumer.suspend_flow.set()
        ran: list[bool] = []

        async def callback() -> None:
            ran.append(True)

        return await consumer.wait_first(callback(), consumer.suspend_flow.wait())

    res = asyncio.run(main())
    assert res.done and not res.stopped


def test_other_calls_go_to_the_original(patched: None) -> None:
    """An event instead of a coroutine (`wait_first` takes either) is left to Faust's own."""

    async def main() -> Any:
        consumer = _consumer()

        async def callback() -> str:
            return "delivered"

        return await consumer.wait_first(callback(), asyncio.Event())

    res = asyncio.run(main())
    assert res.results == ["delivered"] and not res.stopped


def test_not_installed_over_a_changed_drain_loop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    uninstall_inline_handoff()

    async def _drain_messages(self: Any, fetcher: Any) -> None:  # another faust's loop
        await self.wait_first(self.callback(), self.other.wait())

    original = Consumer.wait_first
    monkeypatch.setattr(Consumer, "_drain_messages", _drain_messages)
    with caplog.at_level(logging.WARNING, logger="mmbee.streams.runtime.compat"):
        assert install_inline_handoff() is False
    assert Consumer.wait_first is original and "not installed" in caplog.text


def test_the_app_factory_follows_the_setting() -> None:
    create_app(Settings(faust_inline_handoff=False), components=())
    assert not inline_handoff_installed()
    create_app(Settings(), components=())
    assert inline_handoff_installed()
