"""``compare/<study>``: a declared comparison of runs (every seed) with intervals and a report."""

import dagster as dg

from assets.evaluation import replicate_key
from corpuslab.declarations import Experiment
from corpuslab.stages.compare import materialize_compare
from corpuslab.stages.versions import code_version
from jobs.automation import GLOBAL_BACKFILL, condition_for
from resources.home import CorpuslabHome
from resources.tracking import MlflowTracking


def compare_asset(exp: Experiment, study: str) -> dg.AssetsDefinition:
    decl = exp.studies[study]
    deps = [
        replicate_key("eval", run, seed) for run in decl.runs for seed in exp.runs[run].replicates()
    ]
    deps.append(dg.AssetKey(["evalset", decl.suite]))
    key = dg.AssetKey(["compare", study])

    @dg.asset(
        key=key,
        deps=deps,
        backfill_policy=GLOBAL_BACKFILL,
        automation_condition=condition_for(key),
        group_name="eval",
        kinds={"mlflow", "html"},
        code_version=code_version(exp, "compare", study),
        description=f"Study '{study}': {', '.join(decl.runs)} on {decl.metric} against "
        f"'{decl.baseline}', with {decl.confidence:.0%} intervals over items and seeds, paired "
        "differences and flip probabilities; a Markdown/HTML report in MLflow.",
    )
    def _compare(
        context: dg.AssetExecutionContext, home: CorpuslabHome, mlflow: MlflowTracking
    ) -> dg.MaterializeResult:
        with home.staged(exp, key) as layout:
            result = materialize_compare(exp, layout, study, mlflow.client())
        verdict = result["decision"]
        context.log.info(verdict["statement"])
        report = result["report"]
        table = (layout.compare_dir(study) / "report.md").read_text()
        return dg.MaterializeResult(
            metadata={
                "decision": dg.MetadataValue.md(
                    "\n".join(f"- {line}" for line in verdict["lines"])
                ),
                "best": verdict["best"],
                "ranking_flip_probability": round(verdict["ranking_flip_probability"], 4),
                "report": dg.MetadataValue.md(table),
                "report_html": dg.MetadataValue.path(report["html"]),
                "mlflow_parent_run_id": result["mlflow_parent_run_id"],
            },
            data_version=dg.DataVersion(result["data_version"]),
        )

    return _compare


def defs(exp: Experiment) -> dg.Definitions:
    return dg.Definitions(assets=[compare_asset(exp, study) for study in exp.studies])
