"""Asset jobs: the unpartitioned stages, and one per source for backfills over its shards."""

from typing import Any

import dagster as dg

from assets.partitions import shard_partitions
from corpuslab.declarations import Experiment


def unpartitioned_job(assets: list[dg.AssetsDefinition]) -> Any:
    """Dedup, quality, mixtures, training, eval, stats: every asset without shard partitions."""
    sharded = [k for a in assets if a.partitions_def is not None for k in a.keys]
    return dg.define_asset_job(
        "stale_unpartitioned_job",
        selection=dg.AssetSelection.all() - dg.AssetSelection.assets(*sharded),
        description="Unpartitioned stages: dedup, quality, mixtures, training, eval, stats.",
    )


def shard_jobs(exp: Experiment, assets: list[dg.AssetsDefinition]) -> list:
    """``shards_<source>_job``: every per-shard stage of a source, partitioned by its shards."""
    jobs = []
    for source in exp.sources:
        pdef = shard_partitions(source)
        keys = [k for a in assets if a.partitions_def == pdef for k in a.keys]
        jobs.append(
            dg.define_asset_job(
                f"shards_{source}_job",
                selection=dg.AssetSelection.assets(*keys),
                partitions_def=pdef,
                description=f"Per-shard stages of source '{source}' (backfill over its shards).",
            )
        )
    return jobs
