"""A Faust fetch takes records only of the partitions Faust has active, even when it has none.

Faust's fetcher (faust-streaming 0.15.3) asks the consumer thread for records with
`fetched_records(active_partitions, timeout)`, passing its live set of active partitions, and
only when that set is not empty. aiokafka's `Fetcher.fetched_records` takes records of the
partitions in that set, but of *every* partition when the set is empty:
`if partitions and tp not in partitions: continue`. The set can become empty while the call
waits, when Faust pauses the partitions it holds. At the end of table recovery it pauses the
changelog partitions it has read, and until the source partitions are resumed (after the final
seek, `mmbee.streams.recovery_order`) nothing is active. A fetch in flight then takes the source
records that the client has fetched in the background, and Faust's `getmany` drops every record
of a partition that is not active. The client's positions have passed them, so they never come
back, and nothing is logged. With only the recovery-order patch, the restarted worker of
`tests/streams/test_worker.py::test_nothing_fetched_while_recovery_seeks_is_lost` took none of
its 45-message backlog in 5 of 22 runs. In one set of 6, a debug wrapper logged a 60-record
fetch dropped this way in 4; the one after the seek failed the run.

`install_fetch_scope()` patches Faust's `ThreadDelegateConsumer._getmany` to pass a view of
the same live set that is never false. An empty set then takes nothing, and the call waits, as
for a set of partitions without records. Membership is still read live, so a partition
resumed while the call waits is served at once, as before.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Set
from typing import Any

__all__ = ["ActiveView", "fetch_scope_installed", "install_fetch_scope"]

_ATTR = "_mmbee_fetch_scope"


class ActiveView(Set[Any]):
    """A live view of Faust's active-partition set whose truth value is always True."""

    __slots__ = ("tps",)

    def __init__(self, tps: Set[Any]) -> None:
        self.tps = tps

    def __bool__(self) -> bool:
        return True

    def __contains__(self, tp: object) -> bool:
        return tp in self.tps

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self.tps))

    def __len__(self) -> int:
        return len(self.tps)


def fetch_scope_installed() -> bool:
    """Whether `install_fetch_scope` patched this process's Faust."""
    from faust.transport.consumer import ThreadDelegateConsumer

    return bool(getattr(ThreadDelegateConsumer._getmany, _ATTR, False))


def install_fetch_scope() -> None:
    """Patch Faust's `ThreadDelegateConsumer._getmany` for the whole process (idempotent)."""
    from faust.transport.consumer import ThreadDelegateConsumer

    if fetch_scope_installed():
        return
    original = ThreadDelegateConsumer._getmany

    @functools.wraps(original)
    async def _getmany(self: Any, active_partitions: Any, timeout: float) -> Any:
        if active_partitions is not None:  # None: a client-only app, which takes everything
            active_partitions = ActiveView(active_partitions)
        return await original(self, active_partitions, timeout)

    setattr(_getmany, _ATTR, True)
    ThreadDelegateConsumer._getmany = _getmany  # type: ignore[method-assign]
