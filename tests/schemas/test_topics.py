"""`partition_for`: Kafka's default partitioner, pinned against kafka-python's and aiokafka's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmbee.schemas.topics import _murmur2, partition_for

# murmur2 values of kafka-python 3.0.12 / aiokafka 0.14.0 (the Java client's `Utils.murmur2`)
KNOWN = {
    b"": 275646681,
    b"a": 2731586172,
    b"ab": 316155434,
    b"abc": 479470107,
    b"abcd": 2971317748,
    b"u1": 745337584,
    b"user-42": 1459644460,
    "ü".encode(): 1419834458,
}


@pytest.mark.parametrize(("key", "expected"), KNOWN.items())
def test_murmur2_known_values(key: bytes, expected: int) -> None:
    from aiokafka.partitioner import murmur2 as aiokafka_murmur2
    from kafka.partitioner.default import murmur2 as kafka_murmur2

    assert _murmur2(key) == expected == kafka_murmur2(key) == aiokafka_murmur2(key)


def test_partition_for_known_values() -> None:
    assert [partition_for(b"abcd", n) for n in (1, 4, 6, 12)] == [0, 0, 2, 8]
    assert [partition_for(b"a17", n) for n in (1, 4, 6, 12)] == [0, 1, 3, 9]
    with pytest.raises(ValueError, match="partitions"):
        partition_for(b"a", 0)


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=64))
def test_partition_for_is_the_clients_default_partitioner(key: bytes, partitions: int) -> None:
    from aiokafka.partitioner import DefaultPartitioner
    from kafka.partitioner.default import murmur2 as kafka_murmur2

    ids = list(range(partitions))
    p = partition_for(key, partitions)
    assert p == DefaultPartitioner()(key, ids, ids)
    assert p == (kafka_murmur2(key) & 0x7FFFFFFF) % partitions
