"""Training assets: ``train/<run>``, and DoReMi's ``doremi/<mixture>/{reference,proxy,weights}``.

Every training run goes through :func:`corpuslab.stages.training.materialize_training` with the
``launcher`` resource (a local torchrun or a Kubernetes pod, via Dagster Pipes) and MLflow.
"""

import base64
import warnings
from pathlib import Path
from typing import Any

import dagster as dg

from corpuslab.declarations import Experiment
from corpuslab.stages import training as stage
from corpuslab.stages.doremi import PLOT_FILE, materialize_doremi_weights
from corpuslab.stages.versions import code_version
from jobs.automation import GLOBAL_BACKFILL, condition_for
from resources.home import CorpuslabHome
from resources.launcher import TrainingLauncher
from resources.tracking import MlflowTracking

# PipesSubprocessClient itself touches a preview API on every run; the warning is not ours.
warnings.filterwarnings("ignore", message=".*expected_writer_count.*", category=dg.PreviewWarning)
TRAINING_KINDS = {"deepspeed", "pytorch", "mlflow"}


def _train(
    context: dg.AssetExecutionContext,
    key: dg.AssetKey,
    spec: Any,
    *,
    mlflow: MlflowTracking,
    launcher: TrainingLauncher,
    ranks: int,
    tags: dict[str, str],
    params: dict[str, Any],
    artifacts: list[Path],
) -> dg.MaterializeResult:
    """Run ``spec`` through the launcher; the asset's materialization with its loss curve."""

    def launch(spec_path: Path, n: int, env: dict[str, str], extras: dict[str, Any]) -> dict:
        done = launcher.launch(context, spec_path, n, env, extras).get_materialize_result()
        return dict(done.metadata or {})

    summary = stage.materialize_training(
        spec,
        client=mlflow.client(),
        experiment_id=mlflow.experiment_id(),
        tracking_uri=mlflow.tracking_uri,
        ranks=ranks,
        launch=launch,
        run_name=f"{spec.name}-{context.run_id[:8]}",
        tags={
            "dagster.run_id": context.run_id,
            "dagster.asset_key": key.to_user_string(),
            "dagster.code_version": context.assets_def.code_versions_by_key[key] or "",
            **tags,
        },
        params=params,
        artifacts=artifacts,
    )
    curve = summary.pop("loss_curve")
    table = "\n".join(f"| {s} | {v} |" for s, v in curve)
    return dg.MaterializeResult(
        asset_key=key,
        metadata={
            **{k: v for k, v in summary.items() if k != "data_version"},
            "loss_curve": dg.MetadataValue.md("| step | loss |\n|---:|---:|\n" + table),
        },
        data_version=dg.DataVersion(summary["data_version"]),
    )


def train_asset(exp: Experiment, run: str, seed: int | None = None) -> dg.AssetsDefinition:
    """``train/<run>``, or ``train/<run>/seed<k>``: one replicate of a run declared with seeds.

    Seeds are separate assets rather than partitions: each replicate is its own MLflow run and
    lineage node with its own data version, the graph reads ``train/tiny/seed0..2``, and the
    unpartitioned mixture upstream needs no partition mapping.
    """
    rdecl = exp.runs[run]
    key = dg.AssetKey(["train", *stage.replicate_name(run, seed).split("/")])
    deps = [dg.AssetKey(["tokens", rdecl.mixture]), dg.AssetKey(["mixture", rdecl.mixture])]
    if rdecl.init_from is not None:
        deps.append(dg.AssetKey(["train", rdecl.init_from.run]))
    seeded = "" if seed is None else f" with seed {seed} (init and data order)"

    @dg.asset(
        key=key,
        deps=deps,
        backfill_policy=GLOBAL_BACKFILL,
        group_name="train",
        kinds=TRAINING_KINDS,
        automation_condition=condition_for(key),
        code_version=code_version(exp, "train", run, seed),
        description=f"DeepSpeed ZeRO training run '{run}' on mixture '{rdecl.mixture}'{seeded}, "
        "via Pipes.",
    )
    def _asset(
        context: dg.AssetExecutionContext,
        home: CorpuslabHome,
        mlflow: MlflowTracking,
        launcher: TrainingLauncher,
    ) -> dg.MaterializeResult:
        with home.staged(exp, key) as layout:
            weights = stage.mixture_weights(layout, rdecl.mixture)
            return _train(
                context,
                key,
                stage.run_spec(exp, layout, run, mlflow.tracking_uri, seed),
                mlflow=mlflow,
                launcher=launcher,
                ranks=rdecl.ranks,
                tags=stage.run_tags(exp, run, seed),
                params=stage.run_params(exp, run, seed)
                | {f"mixture.weight.{d}": round(w, 6) for d, w in weights.items()},
                artifacts=stage.run_artifacts(exp, layout, run),
            )

    return _asset


def doremi_assets(exp: Experiment, mixture: str) -> list[dg.AssetsDefinition]:
    decl = exp.mixtures[mixture].doremi
    assert decl is not None
    ref_data = [dg.AssetKey(["tokens", decl.reference]), dg.AssetKey(["mixture", decl.reference])]
    ref_key, proxy_key, weights_key = (
        dg.AssetKey(["doremi", mixture, role]) for role in ("reference", "proxy", "weights")
    )

    def training_asset(role: str, key: dg.AssetKey, deps: list[dg.AssetKey], what: str):  # noqa: ANN202
        @dg.asset(
            key=key,
            deps=deps,
            backfill_policy=GLOBAL_BACKFILL,
            group_name="doremi",
            kinds=TRAINING_KINDS,
            automation_condition=condition_for(key),
            code_version=code_version(exp, f"doremi_{role}", mixture),
            description=f"DoReMi {what} for mixture '{mixture}', trained on '{decl.reference}'.",
        )
        def _asset(
            context: dg.AssetExecutionContext,
            home: CorpuslabHome,
            mlflow: MlflowTracking,
            launcher: TrainingLauncher,
        ) -> dg.MaterializeResult:
            with home.staged(exp, key) as layout:
                return _train(
                    context,
                    key,
                    stage.doremi_spec(exp, layout, mixture, role, mlflow.tracking_uri),
                    mlflow=mlflow,
                    launcher=launcher,
                    ranks=decl.ranks,
                    tags=stage.doremi_tags(exp, mixture, role),
                    params=stage.doremi_params(exp, mixture, role),
                    artifacts=[
                        layout.mixture_dir(decl.reference) / "mixture.json",
                        Path(exp.where("mixtures", mixture)),
                    ],
                )

        return _asset

    @dg.asset(
        key=weights_key,
        deps=[proxy_key],
        backfill_policy=GLOBAL_BACKFILL,
        group_name="doremi",
        kinds={"mlflow"},
        automation_condition=condition_for(weights_key),
        code_version=code_version(exp, "doremi_weights", mixture),
        description=f"DoReMi domain weights of mixture '{mixture}': the proxy's average weights.",
    )
    def _weights(
        context: dg.AssetExecutionContext, home: CorpuslabHome, mlflow: MlflowTracking
    ) -> dg.MaterializeResult:
        with home.staged(exp, weights_key) as layout:
            summary = materialize_doremi_weights(exp, layout, mixture, mlflow.client())
            png_file = layout.doremi_dir(mixture) / PLOT_FILE  # read while the copy is there
            png = base64.b64encode(png_file.read_bytes()).decode()
        moved = ", ".join(
            f"{d} {summary['reference_weights'].get(d, float('nan')):.3f}->{w:.3f}"
            for d, w in summary["weights"].items()
        )
        context.log.info(f"DoReMi weights (reference -> DoReMi): {moved}")
        return dg.MaterializeResult(
            metadata={
                "weights": dg.MetadataValue.json(summary["weights"]),
                "reference_weights": dg.MetadataValue.json(summary["reference_weights"]),
                "mean_excess_loss": dg.MetadataValue.json(summary["mean_excess_loss"]),
                "plot": dg.MetadataValue.path(summary["plot"]),
                # the Dagster UI renders data URIs in Markdown metadata inline
                "trajectory": dg.MetadataValue.md(
                    f"![DoReMi weight trajectory](data:image/png;base64,{png})"
                ),
                "mlflow_run_id": summary["mlflow_run_id"],
            },
            data_version=dg.DataVersion(summary["data_version"]),
        )

    return [
        training_asset("reference", ref_key, ref_data, "reference model"),
        training_asset("proxy", proxy_key, [ref_key, *ref_data], "Group-DRO proxy model"),
        _weights,
    ]


def defs(exp: Experiment) -> dg.Definitions:
    assets = [
        train_asset(exp, run, seed)
        for run, rdecl in exp.runs.items()
        for seed in rdecl.replicates()
    ]
    for mixture, decl in exp.mixtures.items():
        if decl.doremi is not None:
            assets += doremi_assets(exp, mixture)
    return dg.Definitions(assets=assets)
