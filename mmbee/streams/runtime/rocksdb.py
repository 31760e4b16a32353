"""RocksDB table options: per-partition defaults, and a worker's memory budget split over them.

`apply_rocksdb_budget(ctx)`: with `rocksdb_memory_budget_mib` set, size every table partition's
block cache and write buffers so a worker holding *all* table partitions (the survivor of a
failover) stays within the budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from mmbee.settings import Settings

__all__ = ["RocksDBShare", "apply_rocksdb_budget", "rocksdb_options", "rocksdb_share"]

log = logging.getLogger("mmbee.streams.runtime.rocksdb")

_MIB = 1024 * 1024


class _AppContext(Protocol):  # a StreamContext (runtime.context sits above this module)
    app: Any
    settings: Settings


def rocksdb_options(settings: Settings) -> dict[str, int]:
    """Options of every RocksDB table partition (faust's own defaults are a 2 GiB block cache
    and 3 x 64 MiB write buffers per partition)."""
    return {
        "block_cache_size": settings.rocksdb_block_cache_mib * _MIB,
        "block_cache_compressed_size": settings.rocksdb_block_cache_mib * _MIB,
        "write_buffer_size": settings.rocksdb_write_buffer_mib * _MIB,
        "max_write_buffer_number": settings.rocksdb_max_write_buffers,
        "target_file_size_base": max(settings.rocksdb_write_buffer_mib, 8) * _MIB,
    }


@dataclass(frozen=True)
class RocksDBShare:
    """Memory of one RocksDB table partition under a worker budget.

    Attributes:
        table_partitions: table partitions the budget is divided over.
        block_cache_bytes: LRU block cache of the partition.
        write_buffer_bytes: size of one memtable.
        max_write_buffers: memtables kept (the share holds all of them).

    Example:
        >>> s = rocksdb_share(budget_mib=1024, table_partitions=17, max_write_buffers=2,
        ...                   write_buffer_mib=8)
        >>> s.block_cache_bytes // 2**20, s.write_buffer_bytes // 2**20
        (44, 8)
    """

    table_partitions: int
    block_cache_bytes: int
    write_buffer_bytes: int
    max_write_buffers: int

    @property
    def per_partition_bytes(self) -> int:
        """Block cache plus all memtables of one partition."""
        return self.block_cache_bytes + self.write_buffer_bytes * self.max_write_buffers


def rocksdb_share(
    *, budget_mib: int, table_partitions: int, max_write_buffers: int, write_buffer_mib: int
) -> RocksDBShare:
    """Split a worker's RocksDB budget evenly over `table_partitions`: memtables get at most
    half of a share (and no more than `write_buffer_mib` each), the block cache the rest.
    Raises ValueError when a share would be under 2 MiB (1 MiB cache + 2 x 512 KiB memtables)."""
    if table_partitions < 1:
        raise ValueError("table_partitions must be >= 1")
    share = budget_mib * _MIB // table_partitions
    if share < 2 * _MIB:
        raise ValueError(
            f"MMBEE_ROCKSDB_MEMORY_BUDGET_MIB={budget_mib} gives {share / _MIB:.2f} MiB to each of "
            f"{table_partitions} table partitions; at least 2 MiB each is needed "
            f"(raise the budget to >= {2 * table_partitions} MiB or use fewer partitions)"
        )
    per_buffer = min(write_buffer_mib * _MIB, share // 2 // max_write_buffers)
    per_buffer = max(per_buffer, _MIB // 2)
    return RocksDBShare(
        table_partitions=table_partitions,
        block_cache_bytes=share - per_buffer * max_write_buffers,
        write_buffer_bytes=per_buffer,
        max_write_buffers=max_write_buffers,
    )


def apply_rocksdb_budget(ctx: _AppContext) -> RocksDBShare | None:
    """Resize every RocksDB table's options to the worker budget (None when no budget is set
    or the store is not RocksDB). Runs after all components registered their tables, before
    any store is opened; tables keep their other options."""
    settings = ctx.settings
    budget = settings.rocksdb_memory_budget_mib
    if budget is None or not settings.store.startswith("rocksdb"):
        return None
    tables = list(ctx.app.tables.values())
    if not tables:
        return None
    share = rocksdb_share(
        budget_mib=budget,
        table_partitions=sum(int(t.partitions or settings.partitions) for t in tables),
        max_write_buffers=settings.rocksdb_max_write_buffers,
        write_buffer_mib=settings.rocksdb_write_buffer_mib,
    )
    for table in tables:
        options = dict(table.options or {})
        options.update(
            block_cache_size=share.block_cache_bytes,
            # rocksdict ignores the compressed cache; python-rocksdb would allocate it too
            block_cache_compressed_size=0,
            write_buffer_size=share.write_buffer_bytes,
            max_write_buffer_number=share.max_write_buffers,
        )
        table.options = options
    log.info(
        "rocksdb budget %d MiB over %d table partitions: %.1f MiB block cache + %d x %.1f MiB "
        "memtables each",
        budget,
        share.table_partitions,
        share.block_cache_bytes / _MIB,
        share.max_write_buffers,
        share.write_buffer_bytes / _MIB,
    )
    return share
