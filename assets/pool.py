"""A recipe's assets: ``pool/<recipe>/<source>`` per shard, ``dedup/<recipe>``,
``quality_model/<recipe>`` and ``filtered/<recipe>/<source>`` per shard."""

import json

import dagster as dg

from assets.common import CONSERVED, conservation, result
from assets.partitions import shard_partitions
from corpuslab.declarations import Experiment
from corpuslab.stages.dedup import materialize_dedup
from corpuslab.stages.pool import materialize_filtered_shard, materialize_pool_shard
from corpuslab.stages.quality import materialize_quality_model
from corpuslab.stages.versions import code_version
from resources.compute import ComputeResource
from resources.home import CorpuslabHome

SURVIVORS = "survivors_kept"


def pool_asset(exp: Experiment, recipe: str, source: str) -> dg.AssetsDefinition:
    key = dg.AssetKey(["pool", recipe, source])

    @dg.asset(
        key=key,
        deps=[dg.AssetKey(["corpus", source])],
        partitions_def=shard_partitions(source),
        code_version=code_version(exp, "pool", recipe),
        group_name="pool",
        kinds={"parquet"},
        description=f"Recipe '{recipe}' per-document steps over '{source}' "
        f"(declared in {exp.where('recipes', recipe)}).",
        check_specs=[dg.AssetCheckSpec(CONSERVED, asset=key, blocking=True)],
    )
    def _pool(
        context: dg.AssetExecutionContext, home: CorpuslabHome, compute: ComputeResource
    ) -> dg.MaterializeResult:
        summary = compute.run(
            materialize_pool_shard, exp, home.layout(), recipe, source, context.partition_key
        )
        return result(key, summary, [conservation(key, summary, "documents_in", "kept", "dropped")])

    return _pool


def dedup_asset(exp: Experiment, recipe: str) -> dg.AssetsDefinition:
    key = dg.AssetKey(["dedup", recipe])

    @dg.asset(
        key=key,
        deps=[dg.AssetKey(["pool", recipe, s]) for s in exp.recipes[recipe].sources],
        code_version=code_version(exp, "dedup", recipe),
        group_name="pool",
        kinds={"minhash"},
        description=f"Exact and MinHash-LSH near-duplicates across all shards of '{recipe}'.",
        check_specs=[dg.AssetCheckSpec(SURVIVORS, asset=key, blocking=True)],
    )
    def _dedup(home: CorpuslabHome, compute: ComputeResource) -> dg.MaterializeResult:
        summary = materialize_dedup(exp, home.layout(), recipe, compute)
        check = dg.AssetCheckResult(
            asset_key=key,
            check_name=SURVIVORS,
            passed=summary["survivors_kept"],
            description="every dropped duplicate points at a document that is kept",
        )
        return result(key, summary, [check])

    return _dedup


def quality_asset(exp: Experiment, recipe: str) -> dg.AssetsDefinition:
    decl = exp.recipes[recipe]
    key = dg.AssetKey(["quality_model", recipe])
    deps = [
        *(dg.AssetKey(["pool", recipe, s]) for s in decl.sources),
        dg.AssetKey(["dedup", recipe]),
    ]
    if decl.quality is not None:
        deps.append(dg.AssetKey(["corpus", decl.quality.positive_source]))

    @dg.asset(
        key=key,
        deps=deps,
        code_version=code_version(exp, "quality_model", recipe),
        group_name="pool",
        kinds={"fasttext"},
        description=f"fastText quality classifier of recipe '{recipe}' and the pool's scores.",
    )
    def _quality(context: dg.AssetExecutionContext, home: CorpuslabHome) -> dg.MaterializeResult:
        summary = materialize_quality_model(exp, home.layout(), recipe)
        if summary.get("metrics"):
            context.log.info(f"held-out metrics: {json.dumps(summary['metrics'])}")
        return result(key, summary)

    return _quality


def filtered_asset(exp: Experiment, recipe: str, source: str) -> dg.AssetsDefinition:
    key = dg.AssetKey(["filtered", recipe, source])

    @dg.asset(
        key=key,
        deps=[
            dg.AssetKey(["pool", recipe, source]),
            dg.AssetKey(["dedup", recipe]),
            dg.AssetKey(["quality_model", recipe]),
        ],
        partitions_def=shard_partitions(source),
        code_version=code_version(exp, "filtered", recipe),
        group_name="pool",
        kinds={"parquet"},
        description=f"Pool '{recipe}/{source}' minus duplicates, above the quality threshold.",
        check_specs=[dg.AssetCheckSpec(CONSERVED, asset=key, blocking=True)],
    )
    def _filtered(
        context: dg.AssetExecutionContext, home: CorpuslabHome, compute: ComputeResource
    ) -> dg.MaterializeResult:
        summary = compute.run(
            materialize_filtered_shard, exp, home.layout(), recipe, source, context.partition_key
        )
        return result(key, summary, [conservation(key, summary, "documents_in", "kept", "dropped")])

    return _filtered


def defs(exp: Experiment) -> dg.Definitions:
    assets: list[dg.AssetsDefinition] = []
    for recipe, decl in exp.recipes.items():
        assets += [pool_asset(exp, recipe, s) for s in decl.sources]
        assets += [dedup_asset(exp, recipe), quality_asset(exp, recipe)]
        assets += [filtered_asset(exp, recipe, s) for s in decl.sources]
    return dg.Definitions(assets=assets)
