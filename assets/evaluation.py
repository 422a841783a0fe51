"""``eval/<run>``: a trained run scored on held-out text, logged to its MLflow run."""

import dagster as dg

from corpuslab.declarations import Experiment
from corpuslab.stages.eval import materialize_eval
from corpuslab.stages.versions import code_version
from jobs.automation import GLOBAL_BACKFILL, condition_for
from resources.home import CorpuslabHome
from resources.tracking import MlflowTracking


def eval_asset(exp: Experiment, run: str) -> dg.AssetsDefinition:
    mixture = exp.runs[run].mixture
    key = dg.AssetKey(["eval", run])

    @dg.asset(
        key=key,
        deps=[dg.AssetKey(["train", run]), dg.AssetKey(["mixture", mixture])],
        backfill_policy=GLOBAL_BACKFILL,
        group_name="train",
        kinds={"pytorch", "mlflow"},
        automation_condition=condition_for(key),
        code_version=code_version(exp, "eval", run),
        description=f"Per-domain held-out bits-per-byte of run '{run}', logged to MLflow.",
    )
    def _eval(home: CorpuslabHome, mlflow: MlflowTracking) -> dg.MaterializeResult:
        with home.staged(exp, key) as layout:
            summary = materialize_eval(exp, layout, run, mlflow.client())
        return dg.MaterializeResult(
            metadata={
                **{k.replace(".", "_"): round(v, 4) for k, v in summary["metrics"].items()},
                "mlflow_run_id": summary["mlflow_run_id"],
                "domains": dg.MetadataValue.json(summary["domains"]),
            },
            data_version=dg.DataVersion(summary["data_version"]),
        )

    return _eval


def defs(exp: Experiment) -> dg.Definitions:
    return dg.Definitions(assets=[eval_asset(exp, run) for run in exp.runs])
