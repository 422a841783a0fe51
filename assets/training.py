"""Training and evaluation assets: a DeepSpeed run launched through Dagster Pipes, then eval."""

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from assets.lm_stages import read_heldout, tokenizer_path
from assets.stages import file_digest, read_json, write_json
from corpuslab.config import REPO_ROOT, Experiment
from resources import CorpuslabHome, MlflowTracking
from resources.launcher import TrainingLauncher

# PipesSubprocessClient itself touches a preview API on every run; the warning is not ours.
warnings.filterwarnings("ignore", message=".*expected_writer_count.*", category=dg.PreviewWarning)


def resumable_mlflow_run(run_dir: Path, spec: Any) -> str | None:
    """The MLflow run to continue when ``run_dir`` holds an interrupted run of the same spec.

    A killed materialization leaves checkpoints and the spec it ran; re-materializing with the
    same declaration resumes there (the trainer restores data position and RNG). A changed
    declaration, or a run that finished, starts over.
    """
    spec_file, ml_file = run_dir / "spec.json", run_dir / "mlflow.json"
    if not (spec_file.is_file() and ml_file.is_file()) or (run_dir / "summary.json").exists():
        return None
    old = json.loads(spec_file.read_text())
    old.pop("mlflow_run_id", None)
    new = json.loads(spec.model_dump_json())
    new.pop("mlflow_run_id", None)
    if old != new:
        return None
    return json.loads(ml_file.read_text())["run_id"]


def run_params(exp: Experiment, run: str) -> dict[str, Any]:
    """Flat MLflow params: recipe, mixture weights, model and optimization settings."""
    rdecl = exp.runs[run]
    mdecl = exp.mixtures[rdecl.mixture]
    params: dict[str, Any] = {
        "run": run,
        "mixture": rdecl.mixture,
        "recipe": mdecl.recipe,
        "mixture.strategy": mdecl.strategy,
        "mixture.token_budget": mdecl.token_budget,
        "seq_len": mdecl.seq_len,
        "deepspeed": rdecl.deepspeed,
        "ranks": rdecl.ranks,
    }
    if not (mdecl.tokenizer.file or mdecl.tokenizer.mixture):
        params["tokenizer.vocab_size"] = mdecl.tokenizer.vocab_size
    params |= {f"model.{k}": v for k, v in rdecl.model.model_dump().items() if v is not None}
    params |= {f"train.{k}": v for k, v in rdecl.train.model_dump().items() if v is not None}
    if rdecl.init_from is not None:
        params |= {"init_from.run": rdecl.init_from.run, "init_from.layers": rdecl.init_from.layers}
    return params


def make_run_spec(
    exp: Experiment,
    layout: Any,
    *,
    name: str,
    mixture: str,
    out_dir: Path,
    model: Any,
    train: Any,
    deepspeed: Path,
    deepspeed_overrides: dict[str, Any],
    tracking_uri: str,
    init_from: Any = None,
    doremi: Any = None,
) -> Any:
    """The RunSpec of a run on ``mixture``'s token file (model dims from its tokenizer)."""
    from corpuslab.runspec import RunSpec
    from corpuslab.tokenfile import TokenFile

    tokens = TokenFile.open(layout.tokens_dir(mixture))
    dims = model.resolve(tokens.meta.vocab_size, exp.mixtures[mixture].seq_len)
    return RunSpec(
        name=name,
        tokens_dir=layout.tokens_dir(mixture),
        out_dir=out_dir,
        model=dims,
        train=train,
        deepspeed_config=deepspeed,
        deepspeed_overrides=deepspeed_overrides,
        init_from=init_from,
        doremi=doremi,
        budget_params=model.budget_params(dims),
        mlflow_tracking_uri=tracking_uri,
    )


def launch_training(
    context: dg.AssetExecutionContext,
    *,
    mlflow: MlflowTracking,
    launcher: TrainingLauncher,
    spec: Any,
    ds_text: str,
    ranks: int,
    asset_key: dg.AssetKey,
    tags: dict[str, str],
    params: dict[str, Any],
    artifacts: list[Path],
) -> dg.MaterializeResult:
    """Run the training entry point for ``spec`` through the launcher, recorded in MLflow.

    A new MLflow run, or the interrupted one when ``spec.out_dir`` holds its checkpoints (the
    trainer resumes there). Params, the filled DeepSpeed config, the spec and ``artifacts``
    are logged; the run is marked FINISHED or FAILED. Returns the asset's materialization.
    """
    from corpuslab.train import fill_deepspeed_config

    run_dir = Path(spec.out_dir)
    client = mlflow.client()
    run_id = resumable_mlflow_run(run_dir, spec)
    if run_id is None:  # a new run: whatever an older declaration left is archived
        if run_dir.exists():
            archive = run_dir.with_name(f".{run_dir.name}.replaced-{context.run_id[:8]}")
            run_dir.rename(archive)
            shutil.rmtree(archive, ignore_errors=True)
        run_dir.mkdir(parents=True)
        mlrun = client.create_run(
            mlflow.experiment_id(),
            run_name=f"{spec.name}-{context.run_id[:8]}",
            tags={
                "dagster.run_id": context.run_id,
                "dagster.asset_key": asset_key.to_user_string(),
                "dagster.code_version": context.assets_def.code_versions_by_key[asset_key] or "",
                **tags,
            },
        )
        run_id = mlrun.info.run_id
        write_json({"run_id": run_id, "tracking_uri": mlflow.tracking_uri}, run_dir / "mlflow.json")
    else:
        context.log.info(f"resuming {spec.name} (MLflow run {run_id}) from its last checkpoint")
        client.set_tag(run_id, "dagster.resumed_by", context.run_id)
    spec = spec.model_copy(update={"mlflow_run_id": run_id})
    try:
        spec_path = run_dir / "spec.json"
        spec_path.write_text(spec.model_dump_json(indent=2))
        ds_filled = fill_deepspeed_config(json.loads(ds_text), spec, world_size=ranks)
        write_json(ds_filled, run_dir / "deepspeed_config.json")
        logged = client.get_run(run_id).data.params
        for k, v in params.items():
            if k not in logged:  # a resumed run already has them
                client.log_param(run_id, k, v)
        for path in (spec_path, run_dir / "deepspeed_config.json", *artifacts):
            client.log_artifact(run_id, str(path), artifact_path="config")
        env = {
            "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        result = launcher.launch(
            context, spec_path, ranks, env, {"run": spec.name, "mlflow_run_id": run_id}
        ).get_materialize_result()
        summary = read_json(run_dir / "summary.json")
        for k in ("final_loss", "tokens_per_s", "tokens_seen", "num_params", "wall_s"):
            if k in summary:
                client.log_metric(run_id, f"train.{k}", float(summary[k]))
        client.log_artifact(run_id, str(run_dir / "summary.json"), artifact_path="train")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    write_json({"run_id": run_id, "tracking_uri": mlflow.tracking_uri}, run_dir / "mlflow.json")
    curve = [
        (m.step, round(m.value, 4))
        for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    ]
    metadata = dict(result.metadata or {})
    metadata |= {
        "mlflow_run_id": run_id,
        "loss_curve": dg.MetadataValue.md(
            "| step | loss |\n|---:|---:|\n" + "\n".join(f"| {s} | {v} |" for s, v in curve)
        ),
    }
    return dg.MaterializeResult(
        asset_key=asset_key,
        metadata=metadata,
        data_version=dg.DataVersion(file_digest(run_dir / "model.pt")),
    )


def build_run_assets(
    exp: Experiment, run: str, code_version: Callable[..., str]
) -> list[dg.AssetsDefinition]:
    rdecl = exp.runs[run]
    mixture = rdecl.mixture
    train_key = dg.AssetKey(["train", run])
    eval_key = dg.AssetKey(["eval", run])
    ds_text = rdecl.deepspeed_path().read_text()

    @dg.asset(
        key=train_key,
        deps=[
            dg.AssetKey(["tokens", mixture]),
            dg.AssetKey(["mixture", mixture]),
            *([dg.AssetKey(["train", rdecl.init_from.run])] if rdecl.init_from else []),
        ],
        group_name="train",
        kinds={"deepspeed", "pytorch", "mlflow"},
        code_version=code_version(
            "train",
            rdecl.model,
            rdecl.train,
            rdecl.ranks,
            ds_text,
            rdecl.deepspeed_overrides,
            rdecl.init_from,
        ),
        description=f"DeepSpeed ZeRO training run '{run}' on mixture '{mixture}', via Pipes.",
    )
    def _train(
        context: dg.AssetExecutionContext,
        home: CorpuslabHome,
        mlflow: MlflowTracking,
        launcher: TrainingLauncher,
    ) -> dg.MaterializeResult:
        from corpuslab.runspec import InitFrom

        layout = home.layout()
        mdecl = exp.mixtures[mixture]
        spec = make_run_spec(
            exp,
            layout,
            name=run,
            mixture=mixture,
            out_dir=layout.run_dir(run),
            model=rdecl.model,
            train=rdecl.train,
            deepspeed=rdecl.deepspeed_path(),
            deepspeed_overrides=rdecl.deepspeed_overrides,
            init_from=None
            if rdecl.init_from is None
            else InitFrom(
                run_dir=layout.run_dir(rdecl.init_from.run), layers=rdecl.init_from.layers
            ),
            tracking_uri=mlflow.tracking_uri,
        )
        return launch_training(
            context,
            mlflow=mlflow,
            launcher=launcher,
            spec=spec,
            ds_text=ds_text,
            ranks=rdecl.ranks,
            asset_key=train_key,
            tags={
                "dagster.eval_asset_key": eval_key.to_user_string(),
                "corpuslab.recipe": mdecl.recipe,
                "corpuslab.mixture": mixture,
                "corpuslab.run": run,
            },
            params=run_params(exp, run)
            | {
                f"mixture.weight.{d}": round(w, 6)
                for d, w in read_json(layout.mixture_dir(mixture) / "mixture.json")[
                    "weights"
                ].items()
            },
            artifacts=[
                layout.mixture_dir(mixture) / "mixture.json",
                Path(exp.where("runs", run)),
                Path(exp.where("mixtures", mixture)),
                Path(exp.where("recipes", mdecl.recipe)),
            ],
        )

    @dg.asset(
        key=eval_key,
        deps=[train_key, dg.AssetKey(["mixture", mixture])],
        group_name="train",
        kinds={"pytorch", "mlflow"},
        code_version=code_version("eval", rdecl.eval),
        description=f"Per-domain held-out bits-per-byte of run '{run}', logged to MLflow.",
    )
    def _eval(home: CorpuslabHome, mlflow: MlflowTracking) -> dg.MaterializeResult:
        from corpuslab.evaluate import evaluate_domains

        layout = home.layout()
        run_dir = layout.run_dir(run)
        heldout = read_heldout(layout, mixture, rdecl.eval.max_docs_per_domain)
        tokenizer = tokenizer_path(exp, layout, mixture)
        metrics: dict[str, float] = {}
        results: dict[str, Any] = {}
        # the final weights, and the LAWA checkpoint average when the run declared one
        for weights, prefix in (("model.pt", "eval"), ("model_lawa.pt", "eval_lawa")):
            if not (run_dir / weights).exists():
                continue
            per_domain = evaluate_domains(
                run_dir, tokenizer, heldout, batch_size=rdecl.eval.batch_size, weights=weights
            )
            results[prefix] = per_domain
            bpb = {d: r["bpb"] for d, r in per_domain.items()}
            metrics |= {f"{prefix}.bpb.{d}": v for d, v in bpb.items()}
            metrics[f"{prefix}.bpb.mean"] = sum(bpb.values()) / len(bpb)
            metrics[f"{prefix}.bpb.worst"] = max(bpb.values())
        run_id = read_json(run_dir / "mlflow.json")["run_id"]
        client = mlflow.client()
        for k, v in metrics.items():
            client.log_metric(run_id, k, v)
        out = layout.eval_dir(run) / "eval.json"
        write_json({"run_id": run_id, "domains": results, "metrics": metrics}, out)
        client.log_artifact(run_id, str(out), artifact_path="eval")
        return dg.MaterializeResult(
            metadata={
                **{k.replace(".", "_"): round(v, 4) for k, v in metrics.items()},
                "mlflow_run_id": run_id,
                "domains": dg.MetadataValue.json(results),
            },
            data_version=dg.DataVersion(file_digest(out)),
        )

    return [_train, _eval]
