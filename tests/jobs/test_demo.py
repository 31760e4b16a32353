"""End to end through Kafka (`mmbee demo` on a small world): a real broker and worker, the log
replayed, examples joined in the stream, a model trained, hot-swapped and served over Kafka and
HTTP, freshness probes, and a model that beats the popularity baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmbee.jobs.demo import DemoConfig, run_demo
from mmbee.schemas.topics import partition_for
from mmbee.settings import Settings
from mmbee.streams.page.browser import find_chromium
from mmbee.streams.topics import ensure_topics

pytestmark = [pytest.mark.broker, pytest.mark.models, pytest.mark.slow]


def test_demo_end_to_end_beats_popularity(tmp_path: Path) -> None:
    config = DemoConfig(
        out=tmp_path / "demo", n_users=400, n_streamers=40, days=3, seed=1,
        requests=15, candidates=30, freshness_probes=3, timeout_s=240,
    )  # fmt: skip
    report = run_demo(config, log=lambda m: None)
    s, q, v = report["stream"], report["quality"], report["serving"]
    # the worker reads the replayed log as a backlog: nothing is late, and it joins the
    # examples the offline build makes from the same log
    assert "late" not in json.dumps(s["dead_letters"]), s["dead_letters"]
    assert s["joined_examples"] >= 0.99 * report["training"]["examples_offline"] > 0
    assert q["test"]["auc"] > q["popularity"]["auc"], q
    assert q["oracle"]["auc"] >= q["test"]["auc"] - 0.02, q
    assert v["error_count"] == 0, v["errors"]
    assert v["kafka_rtt_ms"]["n"] == v["http_rtt_ms"]["n"] == 15
    assert v["worker_serving"]["version"] == "demo-1"
    assert v["freshness_ms"]["n"] + v["freshness_missed"] == 3
    assert v["freshness_ms"]["n"] >= 2
    # what the broker and the worker used meanwhile, read from /proc (Linux, as CI)
    for phase in ("http", "kafka", "freshness"):
        cores = v["cpu_cores"][phase]
        assert cores["broker"] >= 0 and cores["worker"] > 0, (phase, cores)
    assert v["broker_store_mib"] > 1 and v["broker_rss_mib"] > 0
    md = (config.out / "report.md").read_text()
    assert "CPU cores used by the embedded broker" in md and "n/a" not in md
    assert "Kafka request -> response" in md and (config.out / "report.png").stat().st_size > 0
    assert json.loads((config.out / "report.json").read_text())["serving"]["model_version"]
    page = report["page"]  # the worker's live page, screenshot in headless Chromium
    if find_chromium() is not None:
        assert page["console_errors"] == [] and (config.out / "page.png").stat().st_size > 20_000
        assert "![live page](page.png)" in md
    else:
        assert "apt-get install chromium" in page["missing"] and page["missing"] in md
    broker_dir = config.out / "stack" / "broker"  # the store is deleted, the log kept
    assert not list(broker_dir.glob("*.json")) and (broker_dir / "broker.log").is_file()


def test_partition_of_matches_where_a_producer_puts_keyed_records(
    broker_settings: Settings,
) -> None:
    """The freshness background keeps out of the probed streamer's partition: `partition_of`
    must agree with the partitioner the producers use."""
    from kafka import KafkaProducer

    ensure_topics(broker_settings)
    topic = broker_settings.topic("live.frames")
    producer = KafkaProducer(bootstrap_servers=broker_settings.bootstrap_list())
    try:
        for i in range(40):
            key = f"author-{i}".encode()
            meta = producer.send(topic, key=key, value=b"{}").get(timeout=30)
            assert meta.partition == partition_for(key, broker_settings.partitions), key
    finally:
        producer.close()
