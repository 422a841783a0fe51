"""Partitions: each source's shards form a dynamic partitions definition filled from its files."""

from functools import cache

import dagster as dg


@cache
def shard_partitions(source: str) -> dg.DynamicPartitionsDefinition:
    """The shards of ``source``; the shard sensor (or the demo) adds one key per raw file."""
    return dg.DynamicPartitionsDefinition(name=f"shards_{source}")


def shard_check(name: str, key: dg.AssetKey, source: str) -> dg.AssetCheckSpec:
    """A blocking check of one shard of a per-shard asset, recorded per partition.

    Partitioned like its asset, so a downstream shard waits on *its* shard's result: a check
    without partitions counts only its latest evaluation, which is another shard's when runs of
    several shards finish side by side (and one shard's failure would hide behind another's pass).
    """
    return dg.AssetCheckSpec(
        name, asset=key, blocking=True, partitions_def=shard_partitions(source)
    )
