"""The embedded broker: starts, answers, creates topics idempotently, stops; data persists."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from mmbee.settings import Settings
from mmbee.streams.broker import BrokerError, NoidaBroker, StoreWatch, free_port
from mmbee.streams.topics import ensure_topics

pytestmark = pytest.mark.broker


def test_topics_created_once_with_partitions(broker_settings: Settings) -> None:
    created = ensure_topics(broker_settings)
    assert broker_settings.topic("live.gifts") in created
    assert ensure_topics(broker_settings) == []
    consumer = KafkaConsumer(bootstrap_servers=broker_settings.bootstrap_list())
    try:
        parts = consumer.partitions_for_topic(broker_settings.topic("live.gifts"))
        assert parts == set(range(broker_settings.partitions))
        assert consumer.partitions_for_topic(broker_settings.topic("dlq")) == {0}
    finally:
        consumer.close()


def test_restart_keeps_data(tmp_path: Path) -> None:
    port = free_port()
    with NoidaBroker(tmp_path, port) as b:
        producer = KafkaProducer(bootstrap_servers=b.bootstrap)
        for i in range(5):
            producer.send("persist", key=b"k", value=str(i).encode())
        producer.flush()
        producer.close()
    assert not b.running
    with NoidaBroker(tmp_path, port) as b:
        consumer = KafkaConsumer(bootstrap_servers=b.bootstrap, consumer_timeout_ms=3000)
        tp = TopicPartition("persist", 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        assert [m.value for m in consumer] == [b"0", b"1", b"2", b"3", b"4"]
        consumer.close()


def test_refuses_a_busy_port(broker: NoidaBroker, tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="already in use"):
        NoidaBroker(tmp_path, broker.port).start()


def test_usage_follows_the_store(tmp_path: Path) -> None:
    """The broker's CPU seconds, RSS and store size are read back, and grow with stored data."""
    with NoidaBroker(tmp_path, free_port()) as b:
        before = b.usage()
        assert before.cpu_s is not None and before.rss_mib is not None and before.rss_mib > 0
        producer = KafkaProducer(bootstrap_servers=b.bootstrap, linger_ms=5)
        for _ in range(2_000):
            producer.send("usage", value=bytes(range(256)) * 4)  # 2,000 x 1 KiB
        producer.flush()
        producer.close()
        deadline = time.monotonic() + 20
        after = b.usage()
        while after.store_mib < 2 and time.monotonic() < deadline:  # written after a pause
            time.sleep(0.2)
            after = b.usage()
        assert after.store_mib >= 2  # 2 MiB of records: the store is at least that large
        assert after.cpu_s is not None and after.cpu_s > before.cpu_s
        with pytest.raises(BrokerError, match="stop the broker"):
            b.discard_store()
    stopped = b.usage()
    assert stopped.cpu_s is None and stopped.rss_mib is None
    assert stopped.store_mib >= 2  # the data stays in its directory
    assert b.discard_store() == pytest.approx(stopped.store_mib)
    assert b.usage().store_mib == 0
    assert (tmp_path / "broker.log").is_file()  # the log stays


def test_store_watch_warns_at_the_threshold_then_at_each_doubling() -> None:
    watch = StoreWatch(threshold_mib=1000)
    assert watch.check(999.0) is None
    first = watch.check(1000.0)
    assert first is not None and "1,000 MiB" in first and "fresh --data-dir" in first
    assert "4 CPU seconds" in first  # 4.3 s per GiB of file, ~0.98 GiB
    assert watch.check(1999.0) is None  # warned once per doubling
    assert watch.check(5000.0) is not None  # past 2,000 and 4,000: one warning
    assert watch.check(7999.0) is None
    assert watch.check(8000.0) is not None
    off = StoreWatch(threshold_mib=0)
    assert off.check(1e9) is None
