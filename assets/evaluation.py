"""Evaluation assets: ``evalset/<suite>`` (with its blocking exclusion check) and
``eval/<run>`` (``eval/<run>/seed<k>`` for each seed of a run declared with ``seeds``)."""

import dagster as dg

from corpuslab.declarations import Experiment
from corpuslab.stages.eval import materialize_eval
from corpuslab.stages.evalset import check_excluded, materialize_evalset
from corpuslab.stages.training import replicate_name
from corpuslab.stages.versions import code_version
from jobs.automation import GLOBAL_BACKFILL, condition_for
from resources.home import CorpuslabHome
from resources.tracking import MlflowTracking

EXCLUDED = "excluded_from_training"


def replicate_key(stage: str, run: str, seed: int | None) -> dg.AssetKey:
    """``<stage>/<run>``, or ``<stage>/<run>/seed<k>`` for one seed of a seeded run."""
    return dg.AssetKey([stage, *replicate_name(run, seed).split("/")])


def evalset_asset(exp: Experiment, suite: str) -> dg.AssetsDefinition:
    key = dg.AssetKey(["evalset", suite])
    decl = exp.evals[suite]
    # the set is built from the raw corpus (held-out slices, decontaminated against the rest);
    # its check reads every mixture's training data
    deps = [dg.AssetKey(["corpus", s]) for s in exp.sources]
    for mixture in exp.mixtures:
        deps += [dg.AssetKey(["mixture", mixture]), dg.AssetKey(["tokens", mixture])]

    @dg.asset(
        key=key,
        deps=deps,
        backfill_policy=GLOBAL_BACKFILL,
        automation_condition=condition_for(key),
        group_name="eval",
        kinds={"jsonl", "parquet"},
        code_version=code_version(exp, "evalset", suite),
        description=f"Fixed evaluation set of suite '{suite}': held-out documents and ICL task "
        "items, never trained on; its blocking check proves it (no held-out id in any pool or "
        f"token file, no {decl.decontamination.ngram}-gram overlap beyond "
        f"{decl.decontamination.max_overlap:.0%} with the training pools).",
        check_specs=[dg.AssetCheckSpec(EXCLUDED, asset=key, blocking=True)],
    )
    def _evalset(context: dg.AssetExecutionContext, home: CorpuslabHome) -> dg.MaterializeResult:
        with home.staged(exp, key) as layout:
            manifest = materialize_evalset(exp, layout, suite)
            check = check_excluded(exp, layout, suite)
        if not check["passed"]:
            context.log.error(
                f"evalset/{suite}: {len(check['in_training'])} held-out document(s) in training "
                f"data, {len(check['contaminated'])} contaminated eval text(s)"
            )
        shown = check["in_training"][:20] + check["contaminated"][:20]
        return dg.MaterializeResult(
            metadata={
                "version": manifest["version"],
                "tasks": dg.MetadataValue.json(
                    {t: v["items"] for t, v in manifest["tasks"].items()}
                ),
                "heldout_documents": dg.MetadataValue.json(
                    {s: v["documents"] for s, v in manifest["heldout"].items()}
                ),
                "reserved_documents": manifest["reserved_documents"],
                "set_aside_as_contaminated": manifest["set_aside"]["count"],
                "path": dg.MetadataValue.path(str(layout.evalset_dir(suite))),
            },
            data_version=dg.DataVersion(manifest["data_version"]),
            check_results=[
                dg.AssetCheckResult(
                    asset_key=key,
                    check_name=EXCLUDED,
                    passed=bool(check["passed"]),
                    description="no held-out document in any pool or token file; no eval text "
                    "sharing more n-grams with training than declared",
                    metadata={
                        "held_out_in_training": len(check["in_training"]),
                        "contaminated_texts": len(check["contaminated"]),
                        "texts_with_any_overlap": check["texts_with_any_overlap"],
                        "max_overlap_fraction": check["max_fraction"],
                        "allowed_overlap": check["max_overlap"],
                        "training_documents": check["training_documents"],
                        "offending": dg.MetadataValue.json(shown),
                    },
                )
            ],
        )

    return _evalset


def eval_asset(exp: Experiment, run: str, seed: int | None = None) -> dg.AssetsDefinition:
    rdecl = exp.runs[run]
    key = replicate_key("eval", run, seed)
    deps = [replicate_key("train", run, seed), dg.AssetKey(["mixture", rdecl.mixture])]
    deps += [dg.AssetKey(["evalset", s]) for s in rdecl.evals]
    on = f" and suites {', '.join(rdecl.evals)}" if rdecl.evals else ""

    @dg.asset(
        key=key,
        deps=deps,
        backfill_policy=GLOBAL_BACKFILL,
        automation_condition=condition_for(key),
        group_name="eval",
        kinds={"pytorch", "mlflow"},
        code_version=code_version(exp, "eval", run, seed),
        description=f"Run '{replicate_name(run, seed)}' scored on its mixture's held-out split"
        f"{on} (final and LAWA weights), logged to its MLflow run.",
    )
    def _eval(home: CorpuslabHome, mlflow: MlflowTracking) -> dg.MaterializeResult:
        with home.staged(exp, key) as layout:
            summary = materialize_eval(exp, layout, run, mlflow.client(), seed)
        headline = {
            k.replace(".", "_"): round(v, 4) for k, v in summary["metrics"].items() if _headline(k)
        }
        return dg.MaterializeResult(
            metadata={
                **headline,
                "mlflow_run_id": summary["mlflow_run_id"],
                "suites": dg.MetadataValue.json(summary["suites"]),
                "domains": dg.MetadataValue.json(summary["domains"]),
            },
            data_version=dg.DataVersion(summary["data_version"]),
        )

    return _eval


def _headline(metric: str) -> bool:
    """Metrics shown as numbers on the asset: suite CORE and bpb, held-out and mixture bpb (of
    the final weights and of the LAWA average)."""
    parts = metric.split(".")
    if parts[0] in ("eval", "eval_lawa") and parts[1] in ("bpb", "heldout"):
        return True
    return len(parts) == 3 and parts[2] in ("core", "bpb") or "heldout" in parts[2:3]


def defs(exp: Experiment) -> dg.Definitions:
    assets = [evalset_asset(exp, suite) for suite in exp.evals]
    for run, rdecl in exp.runs.items():
        assets += [eval_asset(exp, run, seed) for seed in rdecl.replicates()]
    return dg.Definitions(assets=assets)
