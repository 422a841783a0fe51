"""A mixture's assets: ``tokenizer/<mixture>`` (unless shared), ``mixture/<mixture>`` (domain
weights and the documents that fill the token budget) and ``tokens/<mixture>``."""

import dagster as dg

from assets.common import result
from corpuslab.declarations import Experiment
from corpuslab.stages.mixture import materialize_mixture, materialize_tokenizer, materialize_tokens
from corpuslab.stages.versions import code_version
from jobs.automation import GLOBAL_BACKFILL, condition_for
from resources.compute import ComputeResource
from resources.home import CorpuslabHome


def filtered_keys(exp: Experiment, mixture: str) -> list[dg.AssetKey]:
    recipe = exp.mixtures[mixture].recipe
    return [dg.AssetKey(["filtered", recipe, d]) for d in exp.mixture_domains(mixture)]


def tokenizer_asset(exp: Experiment, mixture: str) -> dg.AssetsDefinition:
    key = dg.AssetKey(["tokenizer", mixture])
    tdecl = exp.mixtures[mixture].tokenizer

    @dg.asset(
        key=key,
        deps=filtered_keys(exp, mixture),
        backfill_policy=GLOBAL_BACKFILL,
        group_name="mixture",
        kinds={"tokenizers"},
        automation_condition=condition_for(key),
        code_version=code_version(exp, "tokenizer", mixture),
        description=f"Tokenizer of mixture '{mixture}': "
        + (f"the file {tdecl.file}." if tdecl.file else "byte-level BPE trained on its documents."),
    )
    def _tokenizer(home: CorpuslabHome) -> dg.MaterializeResult:
        with home.staged(exp, key) as layout:
            return result(key, materialize_tokenizer(exp, layout, mixture))

    return _tokenizer


def mixture_asset(exp: Experiment, mixture: str) -> dg.AssetsDefinition:
    decl = exp.mixtures[mixture]
    key = dg.AssetKey(["mixture", mixture])
    deps = [dg.AssetKey(["tokenizer", exp.tokenizer_owner(mixture)]), *filtered_keys(exp, mixture)]
    if decl.doremi is not None:
        deps.append(dg.AssetKey(["doremi", mixture, "weights"]))

    @dg.asset(
        key=key,
        deps=deps,
        backfill_policy=GLOBAL_BACKFILL,
        group_name="mixture",
        automation_condition=condition_for(key),
        code_version=code_version(exp, "mixture", mixture),
        description=f"Domain weights ({decl.strategy}) and documents of mixture '{mixture}'.",
    )
    def _mixture(
        context: dg.AssetExecutionContext, home: CorpuslabHome, compute: ComputeResource
    ) -> dg.MaterializeResult:
        with home.staged(exp, key) as layout:
            summary = materialize_mixture(exp, layout, mixture, compute)
        for domain, factor in summary["repeated"].items():
            context.log.warning(f"domain {domain} repeated {factor:.2f}x to fill its share")
        return result(key, summary)

    return _mixture


def tokens_asset(exp: Experiment, mixture: str) -> dg.AssetsDefinition:
    key = dg.AssetKey(["tokens", mixture])

    @dg.asset(
        key=key,
        deps=[
            dg.AssetKey(["mixture", mixture]),
            dg.AssetKey(["tokenizer", exp.tokenizer_owner(mixture)]),
        ],
        backfill_policy=GLOBAL_BACKFILL,
        group_name="mixture",
        kinds={"numpy"},
        automation_condition=condition_for(key),
        code_version=code_version(exp, "tokens", mixture),
        description=f"Shuffled fixed-length token sequences of mixture '{mixture}'.",
    )
    def _tokens(home: CorpuslabHome, compute: ComputeResource) -> dg.MaterializeResult:
        with home.staged(exp, key) as layout:
            return result(key, materialize_tokens(exp, layout, mixture, compute))

    return _tokens


def defs(exp: Experiment) -> dg.Definitions:
    assets: list[dg.AssetsDefinition] = []
    for mixture in exp.mixtures:
        if exp.tokenizer_owner(mixture) == mixture:
            assets.append(tokenizer_asset(exp, mixture))
        assets += [mixture_asset(exp, mixture), tokens_asset(exp, mixture)]
    return dg.Definitions(assets=assets)
