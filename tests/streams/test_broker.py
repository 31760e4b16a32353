"""The brokers mmbee starts: Apache Kafka (`KafkaBroker`, `make kafka`) and noida-db. Each starts,
answers, keeps its data across a restart, refuses a busy port, reports its usage and stops
without leaving a process behind; topics are created idempotently on the session broker."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from mmbee.settings import Settings
from mmbee.streams.broker import (
    KAFKA_VERSION,
    BrokerError,
    KafkaBroker,
    NoidaBroker,
    StoreWatch,
    free_port,
    kafka_libs,
    make_broker,
)
from mmbee.streams.topics import ensure_topics

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]
KINDS = ("kafka", "noida")


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


def test_the_session_broker_is_apache_kafka_by_default(
    broker: KafkaBroker | NoidaBroker, broker_settings: Settings, pytestconfig: pytest.Config
) -> None:
    """Unless asked for noida-db, the integration tests run on Apache Kafka, without the
    noida-db workarounds."""
    if pytestconfig.getoption("--broker") == "noida":
        assert broker.kind == "noida"
        return
    assert isinstance(broker, KafkaBroker) and broker.running
    assert broker_settings.broker_kind == "kafka"
    assert broker_settings.member_watchdog is False
    assert broker_settings.embedded_fetch_wait_ms == 0


def test_kafka_version_is_the_one_the_pom_pins() -> None:
    pom = (REPO / "deploy/kafka/pom.xml").read_text()
    pinned = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert pinned is not None and pinned.group(1) == KAFKA_VERSION
    assert (kafka_libs() / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()


def test_free_port_never_hands_out_a_port_twice() -> None:
    """The kernel gives a released port again (126 repeats in 2,000 calls before the fix); two
    equal ports for a broker's listeners made Kafka refuse to start."""
    ports = [free_port() for _ in range(2_000)]
    assert len(set(ports)) == len(ports)


@pytest.mark.parametrize("kind", KINDS)
def test_restart_keeps_data(kind: str, tmp_path: Path) -> None:
    port = free_port()
    with make_broker(kind, tmp_path, port) as b:  # type: ignore[arg-type]
        producer = KafkaProducer(bootstrap_servers=b.bootstrap)
        for i in range(5):
            producer.send("persist", key=b"k", value=str(i).encode())
        producer.flush()
        producer.close()
    assert not b.running
    with make_broker(kind, tmp_path, port) as b:  # type: ignore[arg-type]
        consumer = KafkaConsumer(bootstrap_servers=b.bootstrap, consumer_timeout_ms=3000)
        tp = TopicPartition("persist", 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        assert [m.value for m in consumer] == [b"0", b"1", b"2", b"3", b"4"]
        consumer.close()


@pytest.mark.parametrize("kind", KINDS)
def test_refuses_a_busy_port(kind: str, broker: KafkaBroker | NoidaBroker, tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="already in use"):
        make_broker(kind, tmp_path, broker.port).start()  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_usage_follows_the_store(kind: str, tmp_path: Path) -> None:
    """The broker's CPU seconds, RSS and store size are read back, and grow with stored data."""
    with make_broker(kind, tmp_path, free_port()) as b:  # type: ignore[arg-type]
        before = b.usage()
        assert before.cpu_s is not None and before.rss_mib is not None and before.rss_mib > 0
        producer = KafkaProducer(bootstrap_servers=b.bootstrap, linger_ms=5)
        for _ in range(2_000):
            producer.send("usage", value=bytes(range(256)) * 4)  # 2,000 x 1 KiB
        producer.flush()
        producer.close()
        deadline = time.monotonic() + 20
        after = b.usage()
        while after.store_mib - before.store_mib < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # noida-db writes after a pause
            after = b.usage()
        assert after.store_mib - before.store_mib >= 2  # 2 MiB of records at least
        assert after.cpu_s is not None and after.cpu_s > before.cpu_s
        with pytest.raises(BrokerError, match="stop the broker"):
            b.discard_store()
    stopped = b.usage()
    assert stopped.cpu_s is None and stopped.rss_mib is None
    assert stopped.store_mib >= 2  # the data stays in its directory
    assert b.discard_store() == pytest.approx(stopped.store_mib)
    assert b.usage().store_mib == 0
    assert (tmp_path / "broker.log").is_file()  # the log stays


def _pids_running(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def test_kafka_ends_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A test run killed outright (SIGKILL: no finally, no atexit) leaves no Kafka behind."""
    data = tmp_path / "orphan"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from mmbee.streams.broker import KafkaBroker, free_port
        KafkaBroker(Path({str(data)!r}), free_port()).start()
        print("up", flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "up"
        marker = str(data / "server.properties")
        assert len(_pids_running(marker)) == 1  # the JVM runs
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 30
        while _pids_running(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _pids_running(marker) == []
    finally:
        parent.kill()


def test_missing_kafka_names_the_command_that_installs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BrokerError, match=r"make kafka.*Java 17\+ and Maven"):
        kafka_libs("0.0.0-none")


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
