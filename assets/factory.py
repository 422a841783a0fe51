"""Builds the asset graph from the experiment declarations.

Each declared source, recipe, mixture and run becomes a few thin assets that call the stage
functions. ``code_version`` of each asset is a hash of the declaration slice that shapes it, so
editing one recipe marks only that recipe's descendants stale.
"""

import json
from collections.abc import Sequence
from typing import Any

import dagster as dg

from assets import lm_stages, stages
from assets.doremi import build_doremi_assets, doremi_keys
from assets.partitions import shard_partitions
from assets.training import build_run_assets
from corpuslab.config import Experiment, fingerprint
from resources import CorpuslabHome
from resources.storage import StorageResource

# Bump a stage's revision when its library logic changes in a way that changes outputs.
STAGE_REVISION = {
    "corpus": 1,
    "pool": 1,
    "dedup": 1,
    "quality_model": 1,
    "filtered": 1,
    "tokenizer": 2,
    "mixture": 2,
    "tokens": 2,
    "train": 1,
    "eval": 1,
    "doremi_reference": 1,
    "doremi_proxy": 2,
    "doremi_weights": 1,
}
CONSERVED = "documents_conserved"


def code_version(stage: str, *decls: Any) -> str:
    return f"{stage}-r{STAGE_REVISION[stage]}-{fingerprint(*decls)}"


def _metadata(summary: dict, *keys: str) -> dict[str, Any]:
    """Dagster metadata from a stage summary: numbers and dicts as JSON, paths as paths."""
    out: dict[str, Any] = {}
    for k in keys or tuple(summary):
        v = summary.get(k)
        if v is None or k == "data_version":
            continue
        if k == "path":
            out[k] = dg.MetadataValue.path(v)
        elif isinstance(v, dict | list):
            out[k] = dg.MetadataValue.json(v)
        else:
            out[k] = v
    return out


def _conservation(key: dg.AssetKey, summary: dict, counted: Sequence[str]) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=CONSERVED,
        passed=bool(summary["conserved"]),
        metadata={k: summary[k] for k in counted},
        description="documents in = kept + dropped (read back from the written files)",
    )


def _result(
    key: dg.AssetKey, summary: dict, checks: list[dg.AssetCheckResult] | None = None
) -> dg.MaterializeResult:
    return dg.MaterializeResult(
        asset_key=key,
        metadata=_metadata(summary),
        data_version=dg.DataVersion(summary["data_version"]),
        check_results=checks or [],
    )


def build_corpus_asset(exp: Experiment, source: str) -> dg.AssetsDefinition:
    key = dg.AssetKey(["corpus", source])

    @dg.asset(
        key=key,
        partitions_def=shard_partitions(source),
        code_version=code_version("corpus", exp.sources[source]),
        group_name="corpus",
        kinds={"parquet"},
        description=f"Raw shards of source '{source}' normalized to Parquet "
        f"(declared in {exp.where('sources', source)}).",
        check_specs=[dg.AssetCheckSpec(CONSERVED, asset=key, blocking=True)],
    )
    def _corpus(
        context: dg.AssetExecutionContext, home: CorpuslabHome, storage: StorageResource
    ) -> dg.MaterializeResult:
        summary = stages.materialize_corpus_shard(
            exp, home.layout(), source, context.partition_key, vars(storage.s3_options())
        )
        if summary["quarantined"]:
            context.log.warning(
                f"{summary['quarantined']} malformed records set aside: "
                f"{summary['quarantine_reasons']}"
            )
        return _result(
            key, summary, [_conservation(key, summary, ["records", "documents", "quarantined"])]
        )

    return _corpus


def build_recipe_assets(exp: Experiment, recipe: str) -> list[dg.AssetsDefinition]:
    decl = exp.recipes[recipe]
    where = exp.where("recipes", recipe)
    out: list[dg.AssetsDefinition] = []
    pool_keys = []
    for source in decl.sources:
        pkey = dg.AssetKey(["pool", recipe, source])
        pool_keys.append(pkey)
        out.append(_pool_asset(exp, recipe, source, pkey, where))

    dedup_key = dg.AssetKey(["dedup", recipe])

    @dg.asset(
        key=dedup_key,
        deps=pool_keys,
        code_version=code_version("dedup", decl.dedup),
        group_name="pool",
        kinds={"datasketch"},
        description=f"Exact and MinHash-LSH near-duplicates across all shards of '{recipe}'.",
        check_specs=[dg.AssetCheckSpec("survivors_kept", asset=dedup_key, blocking=True)],
    )
    def _dedup(home: CorpuslabHome) -> dg.MaterializeResult:
        summary = stages.materialize_dedup(exp, home.layout(), recipe)
        check = dg.AssetCheckResult(
            asset_key=dedup_key,
            check_name="survivors_kept",
            passed=summary["survivors_kept"],
            description="every dropped duplicate points at a document that is kept",
        )
        return _result(dedup_key, summary, [check])

    quality_key = dg.AssetKey(["quality_model", recipe])
    q_deps = [*pool_keys, dedup_key]
    if decl.quality is not None:
        q_deps.append(dg.AssetKey(["corpus", decl.quality.positive_source]))

    @dg.asset(
        key=quality_key,
        deps=q_deps,
        code_version=code_version("quality_model", decl.quality),
        group_name="pool",
        kinds={"fasttext"},
        description=f"fastText quality classifier of recipe '{recipe}' and the pool's scores.",
    )
    def _quality(context: dg.AssetExecutionContext, home: CorpuslabHome) -> dg.MaterializeResult:
        summary = stages.materialize_quality_model(exp, home.layout(), recipe)
        if summary.get("metrics"):
            context.log.info(f"held-out metrics: {json.dumps(summary['metrics'])}")
        return _result(quality_key, summary)

    out += [_dedup, _quality]
    for source in decl.sources:
        out.append(_filtered_asset(exp, recipe, source, [dedup_key, quality_key]))
    return out


def _pool_asset(
    exp: Experiment, recipe: str, source: str, key: dg.AssetKey, where: str
) -> dg.AssetsDefinition:
    decl = exp.recipes[recipe]

    @dg.asset(
        key=key,
        deps=[dg.AssetKey(["corpus", source])],
        partitions_def=shard_partitions(source),
        code_version=code_version("pool", decl.steps, decl.write_dropped),
        group_name="pool",
        kinds={"parquet"},
        description=f"Recipe '{recipe}' per-document steps over '{source}' (declared in {where}).",
        check_specs=[dg.AssetCheckSpec(CONSERVED, asset=key, blocking=True)],
    )
    def _pool(context: dg.AssetExecutionContext, home: CorpuslabHome) -> dg.MaterializeResult:
        summary = stages.materialize_pool_shard(
            exp, home.layout(), recipe, source, context.partition_key
        )
        return _result(
            key, summary, [_conservation(key, summary, ["documents_in", "kept", "dropped"])]
        )

    return _pool


def _filtered_asset(
    exp: Experiment, recipe: str, source: str, global_deps: list[dg.AssetKey]
) -> dg.AssetsDefinition:
    key = dg.AssetKey(["filtered", recipe, source])

    @dg.asset(
        key=key,
        deps=[dg.AssetKey(["pool", recipe, source]), *global_deps],
        partitions_def=shard_partitions(source),
        code_version=code_version("filtered"),
        group_name="pool",
        kinds={"parquet"},
        description=f"Pool '{recipe}/{source}' minus duplicates, above the quality threshold.",
        check_specs=[dg.AssetCheckSpec(CONSERVED, asset=key, blocking=True)],
    )
    def _filtered(context: dg.AssetExecutionContext, home: CorpuslabHome) -> dg.MaterializeResult:
        summary = stages.materialize_filtered_shard(
            exp, home.layout(), recipe, source, context.partition_key
        )
        return _result(
            key, summary, [_conservation(key, summary, ["documents_in", "kept", "dropped"])]
        )

    return _filtered


def build_mixture_assets(exp: Experiment, mixture: str) -> list[dg.AssetsDefinition]:
    decl = exp.mixtures[mixture]
    filtered = [dg.AssetKey(["filtered", decl.recipe, d]) for d in exp.mixture_domains(mixture)]
    owner = exp.tokenizer_owner(mixture)
    tok_key = dg.AssetKey(["tokenizer", owner])
    mix_key = dg.AssetKey(["mixture", mixture])
    tokens_key = dg.AssetKey(["tokens", mixture])
    out: list[dg.AssetsDefinition] = []

    if owner == mixture:
        tdecl = decl.tokenizer
        tfile = tdecl.resolve_file(exp.root)

        @dg.asset(
            key=tok_key,
            deps=filtered,
            group_name="mixture",
            kinds={"tokenizers"},
            code_version=code_version(
                "tokenizer",
                tdecl,
                decl.heldout_fraction,
                decl.seed,
                stages.file_digest(tfile) if tfile else None,
            ),
            description=f"Tokenizer of mixture '{mixture}': "
            + (f"the file {tdecl.file}." if tfile else "byte-level BPE trained on its documents."),
        )
        def _tokenizer(home: CorpuslabHome) -> dg.MaterializeResult:
            return _result(tok_key, lm_stages.materialize_tokenizer(exp, home.layout(), mixture))

        out.append(_tokenizer)

    mix_deps = [tok_key, *filtered]
    if decl.doremi is not None:
        out += build_doremi_assets(exp, mixture, code_version)
        mix_deps.append(doremi_keys(mixture)[2])

    @dg.asset(
        key=mix_key,
        deps=mix_deps,
        group_name="mixture",
        code_version=code_version(
            "mixture",
            decl.strategy,
            decl.weights,
            decl.temperature,
            decl.entropy_normalization if decl.strategy == "entropy" else None,
            decl.token_budget,
            decl.heldout_fraction,
            decl.seed,
            owner,
        ),
        description=f"Domain weights ({decl.strategy}) and documents of mixture '{mixture}'.",
    )
    def _mixture(context: dg.AssetExecutionContext, home: CorpuslabHome) -> dg.MaterializeResult:
        summary = lm_stages.materialize_mixture(exp, home.layout(), mixture)
        for domain, factor in summary["repeated"].items():
            context.log.warning(f"domain {domain} repeated {factor:.2f}x to fill its share")
        return _result(mix_key, summary)

    @dg.asset(
        key=tokens_key,
        deps=[mix_key, tok_key],
        group_name="mixture",
        kinds={"numpy"},
        code_version=code_version("tokens", decl.seq_len, decl.seed, decl.tokenizer.eos_token),
        description=f"Shuffled fixed-length token sequences of mixture '{mixture}'.",
    )
    def _tokens(home: CorpuslabHome) -> dg.MaterializeResult:
        return _result(tokens_key, lm_stages.materialize_tokens(exp, home.layout(), mixture))

    return [*out, _mixture, _tokens]


def build_assets(exp: Experiment) -> list[dg.AssetsDefinition]:
    """Every asset the declarations imply (dbt assets are added by the definitions module)."""
    out: list[dg.AssetsDefinition] = []
    for source in exp.sources:
        out.append(build_corpus_asset(exp, source))
    for recipe in exp.recipes:
        out += build_recipe_assets(exp, recipe)
    for mixture in exp.mixtures:
        out += build_mixture_assets(exp, mixture)
    for run in exp.runs:
        out += build_run_assets(exp, run, code_version)
    return out
