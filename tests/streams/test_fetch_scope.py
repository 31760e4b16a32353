"""`mmbee.streams.runtime.compat` (fetch_scope): a Faust fetch never takes records of partitions Faust has paused,
even when it has paused them all. Run against aiokafka's own `Fetcher.fetched_records` and
`FetchResult`, with the client's assignment stubbed; the worker-level check is
`test_worker.py::test_nothing_fetched_while_recovery_seeks_is_lost`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition
from aiokafka.consumer.fetcher import Fetcher, FetchResult
from faust.transport.consumer import ThreadDelegateConsumer

from mmbee.streams.runtime.compat import ActiveView, fetch_scope_installed, install_fetch_scope

SOURCE = TopicPartition("live.frames", 0)


class _Records:
    """aiokafka's partition records, as far as `FetchResult` reads them."""

    next_fetch_offset = 0

    def __init__(self, values: list[str]) -> None:
        self.values = values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)


class _Assignment:
    active = True

    def state_value(self, tp: Any) -> Any:
        return SimpleNamespace(paused=False, position=0, consumed_to=lambda offset: None)


def _fetcher_holding(tp: TopicPartition, values: list[str]) -> Fetcher:
    """A client fetcher that fetched `values` of `tp` in the background."""
    fetcher = object.__new__(Fetcher)
    fetcher._subscriptions = SimpleNamespace(
        reassignment_in_progress=False, is_assigned=lambda tp: True
    )
    fetcher._wait_consume_future = None
    fetcher._records = {
        tp: FetchResult(tp, assignment=_Assignment(), partition_records=_Records(values), backoff=0)
    }
    return fetcher


def _take(partitions: Any) -> dict[Any, list[str]]:
    fetcher = _fetcher_holding(SOURCE, ["m0", "m1"])
    return asyncio.run(Fetcher.fetched_records(fetcher, partitions, timeout=0))


def test_aiokafka_takes_every_partition_when_none_is_active() -> None:
    assert _take(set()) == {SOURCE: ["m0", "m1"]}  # the trap: Faust then drops them


def test_the_view_of_no_active_partition_takes_nothing() -> None:
    assert _take(ActiveView(set())) == {}
    assert _take(ActiveView({SOURCE})) == {SOURCE: ["m0", "m1"]}


def test_the_view_reads_the_live_set() -> None:
    live: set[Any] = set()
    view = ActiveView(live)
    assert view and SOURCE not in view and len(view) == 0
    live.add(SOURCE)  # a partition resumed while a fetch waits is served
    assert SOURCE in view and list(view) == [SOURCE]


def test_faust_hands_the_consumer_thread_a_view() -> None:
    install_fetch_scope()
    install_fetch_scope()  # idempotent
    assert fetch_scope_installed()
    handed: list[Any] = []

    async def getmany(active: Any, timeout: float) -> dict[Any, Any]:
        handed.append(active)
        return {}

    consumer = SimpleNamespace(_thread=SimpleNamespace(getmany=getmany))
    live: set[Any] = set()
    asyncio.run(ThreadDelegateConsumer._getmany(consumer, live, 1.0))  # type: ignore[arg-type]
    asyncio.run(ThreadDelegateConsumer._getmany(consumer, None, 1.0))  # type: ignore[arg-type]
    assert isinstance(handed[0], ActiveView) and handed[0].tps is live
    assert handed[1] is None  # a client-only app still takes everything
