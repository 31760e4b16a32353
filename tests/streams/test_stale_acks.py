"""Faust's stream iterator skips a message of an older consumer generation and acks it (issue 21,
item 5). Can that ack lose a message across a rebalance? Yes, without the compatibility patch:
Faust's own consumer bookkeeping then commits past offsets the new generation has not delivered
yet, and the partition's next owner starts there (runtime/compat.py, patch 6)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import faust
import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from mmbee.settings import Settings
from mmbee.streams.runtime import compat

TOPIC = "src"
Ack = Callable[[Any, Any], bool]


def faust_app(name: str = "stale-acks") -> faust.App:
    """An app whose consumer (never started) acks TOPIC, in generation 2 (after a rebalance)."""
    app = faust.App(name, broker="kafka://127.0.0.1:9")  # never connects
    app.topics._acking_topics.add(TOPIC)  # noqa: SLF001 (what an agent over TOPIC does)
    app.consumer_generation_id = 2
    return app


@pytest.fixture
def app() -> Iterator[faust.App]:
    yield faust_app()


def message(partition: int, offset: int, generation: int) -> ConsumerMessage:
    return ConsumerMessage(
        TOPIC, partition, offset, 0.0, None, None, None, b"k", b"v", 1, 1,
        TP(TOPIC, partition), generation_id=generation,
    )  # fmt: skip


def upstream() -> Ack:
    """Faust's own `Consumer.ack`, whether or not the patch is installed."""
    return getattr(Consumer.ack, "__wrapped__", Consumer.ack)  # type: ignore[no-any-return]


def patched() -> Ack:
    compat.install_stale_ack_refusal()
    assert compat.stale_ack_refusal_installed()
    return Consumer.ack  # type: ignore[return-value]


def commit_after(
    app: faust.App, ack: Ack, committed: int | None, acks: list[tuple[int, int]]
) -> int | None:
    """The offset Faust's consumer would commit for partition 0 after the rebalance's seek left
    it at `committed`, once the messages (offset, generation) of `acks` were acked in order."""
    consumer = app.consumer
    tp = TP(TOPIC, 0)
    consumer._committed_offset[tp] = committed  # noqa: SLF001 (what perform_seek stores)
    for offset, generation in acks:
        ack(consumer, message(0, offset, generation))
    return consumer._filter_committable_offsets({tp}).get(tp)  # noqa: SLF001


# (committed after the seek, acks in order, commit Faust makes, commit it may make)
CASES = {
    # the stale message is C+1: the head-gap test is off by one; 121 was not redelivered yet
    "next after the committed offset": (121, [(122, 1)], 123, None),
    # a new group (or committed 0, stored as None): no head-gap test at all
    "no committed offset": (None, [(150, 1)], 151, None),
    # the stale ack stands in for 123, which the new generation has not processed yet
    "fills a gap": (121, [(123, 1), (121, 2), (122, 2)], 124, 123),
}


@pytest.mark.parametrize("case", CASES)
def test_a_stale_ack_commits_past_messages_not_yet_redelivered(app: faust.App, case: str) -> None:
    committed, acks, upstream_commit, safe_commit = CASES[case]
    assert commit_after(app, upstream(), committed, acks) == upstream_commit  # the loss
    assert commit_after(faust_app("patched"), patched(), committed, acks) == safe_commit


def test_the_current_generation_and_untracked_messages_are_acked_as_before(
    app: faust.App,
) -> None:
    ack = patched()
    assert commit_after(app, ack, 121, [(121, 2), (122, 2)]) == 123
    consumer, tp = app.consumer, TP(TOPIC, 1)
    assert ack(consumer, message(1, 5, None)) is True  # type: ignore[arg-type]
    assert ack(consumer, message(1, 6, 1)) is False
    assert tp in consumer._acked  # noqa: SLF001


def test_the_worker_installs_the_patch() -> None:
    compat.install(Settings())
    assert compat.stale_ack_refusal_installed()


@pytest.mark.broker
def test_the_next_owner_starts_past_the_message_the_stale_ack_covered(
    app: faust.App, broker_settings: Settings
) -> None:
    """Through the broker: the offset the stale ack made Faust commit is where the partition's
    next owner (a consumer of the group) starts, and it never receives the messages before."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from mmbee.streams.topics import ensure_topics

    ensure_topics(broker_settings)
    topic = broker_settings.topic("live.gifts")
    producer = KafkaProducer(bootstrap_servers=broker_settings.bootstrap_list())
    for i in range(3):
        producer.send(topic, value=f"m{i}".encode(), partition=0).get(timeout=30)
    producer.close()
    # the worker processed m0 (committed 1); after a rebalance that kept the partition, the
    # stream still held m2 of the old generation: skipped and acked, then the commit
    commit = commit_after(app, upstream(), 1, [(2, 1)])
    assert commit == 3
    group = broker_settings.app_id
    tp = TopicPartition(topic, 0)
    owner = KafkaConsumer(bootstrap_servers=broker_settings.bootstrap_list(), group_id=group,
                          enable_auto_commit=False)  # fmt: skip
    owner.assign([tp])
    owner.commit({tp: OffsetAndMetadata(commit, None, -1)})
    owner.close()
    # the worker dies before m1 was redelivered to it; the next owner reads the group's offset
    nxt = KafkaConsumer(bootstrap_servers=broker_settings.bootstrap_list(), group_id=group,
                        enable_auto_commit=False, consumer_timeout_ms=3000)  # fmt: skip
    nxt.assign([tp])
    got = [m.value for m in nxt]
    nxt.close()
    assert b"m1" not in got and got == []  # m1 was never processed, and is never delivered
