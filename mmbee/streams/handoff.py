"""Faust's per-message hand-off from the consumer to the streams, without four tasks per message.

faust-streaming 0.15.3 passes every fetched message to the conductor with
`await self.wait_first(callback(message), self.suspend_flow.wait())` (`Consumer._drain_messages`).
That is four tasks per message (the callback, the suspend wait, and the service's stopped and
crashed waits), an `asyncio.wait`, and three cancellations. It exists so that a callback blocked
on a full stream buffer gives up when a rebalance suspends the flow. But the callback almost never
blocks: it puts the message into an agent's buffer that has room. In a py-spy profile of the
segment worker (bench/ingest.py, 2026-12-05) `wait_first` took about 15% of the main thread, on
top of the callback's own work; with the patch the same benchmark ran 2.1x faster for a trivial
agent and 1.6x for the segment agent (docs/streams.md).

`install_inline_handoff()` replaces `Consumer.wait_first`, which Faust calls from that line
only; installing checks that the drain loop still holds it. While the flow is not suspended, the
callback coroutine runs inline up to its first suspension point. If it finishes there, that is
the whole hand-off. If it suspends (the buffer is full), it continues as a task under the
original `wait_first`, so a suspend, stop or crash still interrupts it exactly as before. Any
other call goes straight to the original. The patch applies to the whole process, like
`producer_flush`; the app factory installs it unless `Settings.faust_inline_handoff` is off.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["install_inline_handoff", "inline_handoff_installed", "uninstall_inline_handoff"]

log = logging.getLogger("mmbee.streams.handoff")

_ATTR = "_mmbee_inline_handoff"
_CALL = "self.wait_first(callback(message),self.suspend_flow.wait())"  # whitespace removed


class _Resumed:
    """Awaiting it continues `coro`, which was stepped once by hand and yielded `first`."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro, self.first = coro, first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, out = self.coro, self.first
        while True:
            try:
                sent = yield out  # the future the coroutine waits on, for the task to wait on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - every throw (cancellation too) goes to where it waits
                try:
                    out = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    out = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def inline_handoff_installed() -> bool:
    """Whether `install_inline_handoff` patched this process's Faust consumer."""
    from faust.transport.consumer import Consumer

    return bool(getattr(Consumer.wait_first, _ATTR, False))


def install_inline_handoff() -> bool:
    """Patch Faust's `Consumer.wait_first` for the whole process (idempotent). Returns False,
    with a warning, and leaves Faust unpatched when its drain loop is not the one this patch
    was written for (another faust-streaming version)."""
    from faust.transport.consumer import Consumer
    from mode.services import WaitResults

    if inline_handoff_installed():
        return True
    try:
        source = inspect.getsource(Consumer._drain_messages)
    except (OSError, TypeError):
        source = ""
    if _CALL not in "".join(source.split()):
        log.warning("faust's drain loop changed: the inline hand-off is not installed")
        return False
    original = Consumer.wait_first

    async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
        if len(coros) != 2 or timeout is not None or self.suspend_flow.is_set():
            return await original(self, *coros, timeout=timeout)
        callback, suspended = coros
        if not (inspect.iscoroutine(callback) and inspect.iscoroutine(suspended)):
            return await original(self, *coros)
        try:
            first = callback.send(None)
        except StopIteration as done:  # handed off without waiting: the common case
            suspended.close()
            return WaitResults([callback], [done.value], False)
        except BaseException:
            suspended.close()
            raise
        return await original(self, _Resumed(callback, first), suspended)

    setattr(wait_first, _ATTR, True)
    wait_first.__wrapped__ = original  # type: ignore[attr-defined]
    Consumer.wait_first = wait_first  # type: ignore[method-assign]
    return True


def uninstall_inline_handoff() -> None:
    """Restore Faust's own `Consumer.wait_first` (tests, and the setting turned off)."""
    from faust.transport.consumer import Consumer

    if inline_handoff_installed():
        Consumer.wait_first = Consumer.wait_first.__wrapped__  # type: ignore[attr-defined,method-assign]
