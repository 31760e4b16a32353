"""Deployment logic without a broker: profiles, the topic plan with changelogs, the RocksDB
budget, security settings reaching every client, the dead-member watchdog's decisions."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import certifi
import faust
import pytest

from mmbee.settings import Settings
from mmbee.simulator.replay import _producer_kwargs
from mmbee.streams.app import build_app, faust_settings
from mmbee.streams.deployment import internal_partition_problems, plan_all_topics
from mmbee.streams.observability import logging_config
from mmbee.streams.runtime.rocksdb import apply_rocksdb_budget, rocksdb_share
from mmbee.streams.topics import TopicPlan
from mmbee.streams.watchdog import DeadMemberDetector, parse_instance_id, probe_port

PROD = dict(profile="production", bootstrap_servers="kafka-0.example:9093,kafka-1.example:9093")


def test_profiles_fill_every_production_default() -> None:
    dev, prod = Settings(), Settings(**PROD)
    assert (dev.replication_factor, dev.min_insync_replicas, dev.producer_acks) == (1, 1, "1")
    assert (dev.standby_replicas, dev.member_watchdog, dev.rocksdb_memory_budget_mib) == (
        0,
        True,
        None,
    )
    assert (prod.replication_factor, prod.min_insync_replicas, prod.producer_acks) == (3, 2, "all")
    assert prod.standby_replicas == 1 and prod.member_watchdog is False
    assert prod.rocksdb_memory_budget_mib == 1024 and prod.log_format == "json"
    conf = faust_settings(prod)
    assert conf["table_standby_replicas"] == 1 and conf["producer_acks"] == -1
    assert conf["topic_replication_factor"] == 3
    # explicit settings win over the profile
    assert Settings(**PROD, standby_replicas=2, rocksdb_memory_budget_mib=64).standby_replicas == 2
    with pytest.raises(ValueError, match="loopback"):
        Settings(bootstrap_servers="kafka-0.example:9093")  # dev never leaves the machine


def test_plan_has_compacted_changelogs_with_the_tables_partitions() -> None:
    plans = {p.name: p for p in plan_all_topics(Settings(**PROD, partitions=12))}
    seg = plans["mmbee-segment_buffers-changelog"]
    assert seg.partitions == 12 and seg.replication == 3
    assert seg.configs == {
        "cleanup.policy": "compact",
        "max.message.bytes": str(4 * 2**20),
        "min.insync.replicas": "2",
    }
    assert plans["mmbee-segments-changelog"].partitions == 12
    assert plans["mmbee-graph_users-changelog"].partitions == 1  # the one-partition graph
    internal = plans["mmbee.graph.gifts"]
    assert internal.partitions == 1 and internal.configs["cleanup.policy"] == "delete"
    assert plans["mmbee.live.frames"].partitions == 12
    # only the components asked for
    only = {p.name for p in plan_all_topics(Settings(**PROD, components=("segments",)))}
    assert "mmbee-segment_buffers-changelog" in only and "mmbee-graph_users-changelog" not in only


def test_internal_partition_problems_name_the_table() -> None:
    plans = [TopicPlan("a-t-changelog", 8, 3, {}), TopicPlan("p.graph.gifts", 1, 3, {})]
    assert internal_partition_problems(plans, {"a-t-changelog": 8}) == []
    problems = internal_partition_problems(plans, {"a-t-changelog": 4, "p.graph.gifts": 2})
    assert problems[0].startswith("table changelog a-t-changelog has 4 partitions")
    assert problems[1].startswith("internal topic p.graph.gifts has 2 partitions")


def test_rocksdb_budget_is_split_over_every_table_partition(tmp_path: Path) -> None:
    share = rocksdb_share(
        budget_mib=512, table_partitions=17, max_write_buffers=2, write_buffer_mib=8
    )
    assert share.per_partition_bytes * 17 <= 512 * 2**20
    per = 512 * 2**20 // 17  # 30.1 MiB each: memtables get half (under 8 MiB each), cache the rest
    assert share.write_buffer_bytes == per // 2 // 2
    assert share.block_cache_bytes == per - 2 * share.write_buffer_bytes
    with pytest.raises(ValueError, match="at least 2 MiB"):
        rocksdb_share(budget_mib=16, table_partitions=17, max_write_buffers=2, write_buffer_mib=8)

    settings = Settings(rocksdb_memory_budget_mib=256, data_dir=tmp_path, partitions=8)
    ctx = build_app(settings, components=["segments", "graph"])
    try:
        n = sum(t.partitions for t in ctx.app.tables.values())
        assert n == 8 + 8 + 1
        share = apply_rocksdb_budget(ctx)  # build_app applied it already; applying is idempotent
        assert share is not None and share.table_partitions == n
        for table in ctx.app.tables.values():
            assert table.options["block_cache_size"] == share.block_cache_bytes
            assert table.options["write_buffer_size"] == share.write_buffer_bytes
        total = n * share.per_partition_bytes
        assert 0.95 * 256 * 2**20 <= total <= 256 * 2**20
        # what faust hands to RocksDB when it opens a partition
        store = ctx.app.tables["segments"]._new_store()
        assert store.rocksdb_options.block_cache_size == share.block_cache_bytes
    finally:
        ctx.shutdown()
    no_budget = build_app(Settings(data_dir=tmp_path), components=["segments"])
    try:
        assert apply_rocksdb_budget(no_budget) is None
        assert no_budget.app.tables["segments"].options["block_cache_size"] == 16 * 2**20
    finally:
        no_budget.shutdown()


def test_sasl_and_tls_reach_every_client() -> None:
    cafile = Path(certifi.where())
    s = Settings(
        **PROD,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="mmbee",
        sasl_password="s3cret",
        ssl_cafile=cafile,
    )
    # kafka-python admin (topics create/check, start-up checks, the watchdog)
    kw = s.kafka_client_kwargs()
    assert kw == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "mmbee",
        "sasl_plain_password": "s3cret",
        "ssl_cafile": str(cafile),
    }
    # Faust (aiokafka underneath)
    creds = faust_settings(s)["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == (
        "mmbee",
        "s3cret",
        "SCRAM-SHA-512",
    )
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    # the replayer (aiokafka producer)
    pk = _producer_kwargs(s, 4 * 2**20)
    assert pk["security_protocol"] == "SASL_SSL" and pk["sasl_mechanism"] == "SCRAM-SHA-512"
    assert pk["sasl_plain_password"] == "s3cret" and isinstance(pk["ssl_context"], ssl.SSLContext)
    assert pk["acks"] == "all"
    # the password never shows in a repr or a dump
    assert "s3cret" not in repr(s) and "s3cret" not in s.model_dump_json()


def test_json_logging_only_when_asked() -> None:
    assert logging_config(Settings()) is None
    cfg = logging_config(Settings(**PROD))
    assert cfg is not None and cfg["handlers"]["default"]["formatter"] == "json"


def test_watchdog_declares_dead_only_after_the_grace() -> None:
    d = DeadMemberDetector(grace_s=6.0)
    assert d.observe({"a@h:1": False, "a@h:2": True}, 0.0) == []
    assert d.observe({"a@h:1": None, "a@h:2": True}, 3.0) == []  # unsure: clock keeps running
    assert d.observe({"a@h:1": False, "a@h:2": True}, 6.0) == ["a@h:1"]
    d.forget("a@h:1")
    assert d.removed == 1
    # an answer resets the clock; a member that left the group is forgotten
    assert d.observe({"a@h:2": False}, 10.0) == []
    assert d.observe({"a@h:2": True}, 15.0) == []
    assert d.observe({"a@h:2": False}, 16.0) == []
    assert d.observe({}, 30.0) == []
    assert d.observe({"a@h:2": False}, 31.0) == []


def test_instance_ids_and_probes() -> None:
    assert parse_instance_id("mmbee@worker-0:6066") == ("worker-0", 6066)
    assert parse_instance_id("a@b@c:1") == ("c", 1)
    for bad in ("mmbee", "mmbee@host", "mmbee@host:web", "@:1"):
        assert parse_instance_id(bad) is None, bad
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert probe_port(port) is True
    assert probe_port(port) is False  # nothing listens any more
