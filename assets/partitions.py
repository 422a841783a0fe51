"""Partitions: each source's shards form a dynamic partitions definition filled from its files."""

from functools import cache

import dagster as dg


@cache
def shard_partitions(source: str) -> dg.DynamicPartitionsDefinition:
    """The shards of ``source``; the shard sensor (or the demo) adds one key per raw file."""
    return dg.DynamicPartitionsDefinition(name=f"shards_{source}")
