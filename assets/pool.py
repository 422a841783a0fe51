"""A recipe's assets: per shard ``pool/<recipe>/<source>``, ``dedup/<recipe>/<source>`` and
``filtered/<recipe>/<source>``; once per recipe ``quality_model/<recipe>``."""

import json

import dagster as dg
from pydantic import Field

from assets.common import CONSERVED, conservation, result
from assets.partitions import shard_check, shard_partitions
from corpuslab.declarations import Experiment
from corpuslab.stages.dedup import materialize_dedup_shard
from corpuslab.stages.pool import materialize_filtered_shard, materialize_pool_shard
from corpuslab.stages.quality import materialize_quality_model
from corpuslab.stages.versions import code_version
from jobs.automation import GLOBAL_BACKFILL, SHARD_BACKFILL, condition_for
from resources.compute import ComputeResource
from resources.home import CorpuslabHome

SURVIVORS = "survivors_kept"


def pool_asset(exp: Experiment, recipe: str, source: str) -> dg.AssetsDefinition:
    key = dg.AssetKey(["pool", recipe, source])

    @dg.asset(
        key=key,
        deps=[dg.AssetKey(["corpus", source])],
        partitions_def=shard_partitions(source),
        backfill_policy=SHARD_BACKFILL,
        automation_condition=condition_for(key),
        code_version=code_version(exp, "pool", recipe),
        group_name="pool",
        kinds={"parquet"},
        description=f"Recipe '{recipe}' per-document steps over '{source}' "
        f"(declared in {exp.where('recipes', recipe)}).",
        check_specs=[shard_check(CONSERVED, key, source)],
    )
    def _pool(
        context: dg.AssetExecutionContext, home: CorpuslabHome, compute: ComputeResource
    ) -> dg.MaterializeResult:
        with home.staged(exp, key, context.partition_key) as layout:
            summary = compute.run(
                materialize_pool_shard, exp, layout, recipe, source, context.partition_key
            )
        return result(key, summary, [conservation(key, summary, "documents_in", "kept", "dropped")])

    return _pool


class DedupConfig(dg.Config):
    """Run config of a dedup materialization."""

    full_recompute: str = Field(
        default="",
        description="Any value not used before (e.g. today's date) clears the recipe's dedup "
        "index once and decides every shard again as one batch, as a build from scratch would.",
    )


class QualityConfig(dg.Config):
    """Run config of a quality-model materialization."""

    retrain: str = Field(
        default="",
        description="Any value not used before draws a new training sample and retrains; "
        "otherwise the recorded model is kept while its declaration and sample are unchanged.",
    )


def dedup_asset(exp: Experiment, recipe: str, source: str) -> dg.AssetsDefinition:
    key = dg.AssetKey(["dedup", recipe, source])

    @dg.asset(
        key=key,
        deps=[dg.AssetKey(["pool", recipe, source])],
        partitions_def=shard_partitions(source),
        backfill_policy=SHARD_BACKFILL,
        automation_condition=condition_for(key),
        code_version=code_version(exp, "dedup", recipe),
        group_name="pool",
        kinds={"minhash"},
        description=f"Exact and MinHash-LSH duplicates of each '{recipe}/{source}' shard, decided "
        f"against every shard of recipe '{recipe}' decided before (existing decisions stay).",
        check_specs=[shard_check(SURVIVORS, key, source)],
    )
    def _dedup(
        context: dg.AssetExecutionContext,
        config: DedupConfig,
        home: CorpuslabHome,
        compute: ComputeResource,
    ) -> dg.MaterializeResult:
        with home.staged(exp, key, context.partition_key) as layout:
            summary = materialize_dedup_shard(
                exp,
                layout,
                recipe,
                source,
                context.partition_key,
                config.full_recompute,
                compute.executor(),
            )
        check = dg.AssetCheckResult(
            asset_key=key,
            check_name=SURVIVORS,
            passed=summary["survivors_kept"],
            metadata={"problems": summary.get("survivor_problems", [])},
            description="the shard's decisions, read back: every pool document decided once, "
            "every survivor kept, no two kept documents exact duplicates",
        )
        return result(key, summary, [check])

    return _dedup


def quality_asset(exp: Experiment, recipe: str) -> dg.AssetsDefinition:
    decl = exp.recipes[recipe]
    key = dg.AssetKey(["quality_model", recipe])
    deps = [dg.AssetKey([stage, recipe, s]) for stage in ("pool", "dedup") for s in decl.sources]
    if decl.quality is not None:
        deps.append(dg.AssetKey(["corpus", decl.quality.positive_source]))

    @dg.asset(
        key=key,
        deps=deps,
        backfill_policy=GLOBAL_BACKFILL,
        automation_condition=condition_for(key),
        code_version=code_version(exp, "quality_model", recipe),
        group_name="pool",
        kinds={"fasttext"},
        description=f"fastText quality classifier of recipe '{recipe}' and its keep threshold, "
        "fixed by its declaration and its recorded training sample.",
    )
    def _quality(
        context: dg.AssetExecutionContext, config: QualityConfig, home: CorpuslabHome
    ) -> dg.MaterializeResult:
        with home.staged(exp, key) as layout:
            summary = materialize_quality_model(exp, layout, recipe, config.retrain)
        if summary.get("reused"):
            context.log.info("declaration and training sample unchanged: the model is kept")
        elif summary.get("metrics"):
            context.log.info(f"held-out metrics: {json.dumps(summary['metrics'])}")
        return result(key, summary)

    return _quality


def filtered_asset(exp: Experiment, recipe: str, source: str) -> dg.AssetsDefinition:
    key = dg.AssetKey(["filtered", recipe, source])

    @dg.asset(
        key=key,
        deps=[
            dg.AssetKey(["pool", recipe, source]),
            dg.AssetKey(["dedup", recipe, source]),
            dg.AssetKey(["quality_model", recipe]),
        ],
        partitions_def=shard_partitions(source),
        backfill_policy=SHARD_BACKFILL,
        automation_condition=condition_for(key),
        code_version=code_version(exp, "filtered", recipe),
        group_name="pool",
        kinds={"parquet"},
        description=f"Pool '{recipe}/{source}' minus duplicates, above the quality threshold.",
        check_specs=[shard_check(CONSERVED, key, source)],
    )
    def _filtered(
        context: dg.AssetExecutionContext, home: CorpuslabHome, compute: ComputeResource
    ) -> dg.MaterializeResult:
        with home.staged(exp, key, context.partition_key) as layout:
            summary = compute.run(
                materialize_filtered_shard, exp, layout, recipe, source, context.partition_key
            )
        return result(key, summary, [conservation(key, summary, "documents_in", "kept", "dropped")])

    return _filtered


def defs(exp: Experiment) -> dg.Definitions:
    assets: list[dg.AssetsDefinition] = []
    for recipe, decl in exp.recipes.items():
        for stage in (pool_asset, dedup_asset):
            assets += [stage(exp, recipe, s) for s in decl.sources]
        assets.append(quality_asset(exp, recipe))
        assets += [filtered_asset(exp, recipe, s) for s in decl.sources]
    return dg.Definitions(assets=assets)
