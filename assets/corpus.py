"""``corpus/<source>``: raw shards normalized to Parquet, one partition a raw file."""

import dagster as dg

from assets.common import CONSERVED, conservation, result
from assets.partitions import shard_check, shard_partitions
from corpuslab.declarations import Experiment
from corpuslab.stages.corpus import materialize_corpus_shard
from corpuslab.stages.versions import code_version
from jobs.automation import SHARD_BACKFILL, condition_for
from resources.compute import ComputeResource
from resources.home import CorpuslabHome
from resources.storage import StorageResource


def corpus_asset(exp: Experiment, source: str) -> dg.AssetsDefinition:
    key = dg.AssetKey(["corpus", source])

    @dg.asset(
        key=key,
        partitions_def=shard_partitions(source),
        backfill_policy=SHARD_BACKFILL,
        automation_condition=condition_for(key),
        code_version=code_version(exp, "corpus", source),
        group_name="corpus",
        kinds={"parquet"},
        description=f"Raw shards of source '{source}' normalized to Parquet "
        f"(declared in {exp.where('sources', source)}).",
        check_specs=[shard_check(CONSERVED, key, source)],
    )
    def _corpus(
        context: dg.AssetExecutionContext,
        home: CorpuslabHome,
        storage: StorageResource,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        with home.staged(exp, key, context.partition_key) as layout:
            summary = compute.run(
                materialize_corpus_shard,
                exp,
                layout,
                source,
                context.partition_key,
                vars(storage.s3_options()),
            )
        if summary["quarantined"]:
            context.log.warning(
                f"{summary['quarantined']} malformed records set aside: "
                f"{summary['quarantine_reasons']}"
            )
        for flag in summary["file_flags"]:
            context.log.warning(f"{summary['raw_file']}: {flag}")
        counted = ("records", "accounted", "documents", "quarantined", "conservation")
        checks = [conservation(key, summary, *counted)]
        return result(key, summary, checks)

    return _corpus


def defs(exp: Experiment) -> dg.Definitions:
    return dg.Definitions(assets=[corpus_asset(exp, s) for s in exp.sources])
