"""``train/<run>`` and DoReMi's reference and proxy runs: a run spec, an MLflow run, a launch.

:func:`materialize_training` owns a run's lifecycle: a new MLflow run, or the interrupted one
when the run folder holds its checkpoints and the same spec (the trainer resumes there); the
spec, the filled DeepSpeed config and the declarations logged; the launch (a callable the
orchestrator provides: a local torchrun, a Kubernetes pod); the summary metrics; FINISHED or
FAILED. The same code path serves every training asset.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from corpuslab.declarations import REPO_ROOT, Experiment, TrainingDecl
from corpuslab.fileio import digest, read_json, write_json
from corpuslab.layout import Layout
from corpuslab.lmdata.tokenfile import TokenFile
from corpuslab.tracking import redact_uri, set_terminated
from corpuslab.training import store as run_store
from corpuslab.training.deepspeed import fill_deepspeed_config
from corpuslab.training.runspec import DoReMiSpec, InitFrom, RunSpec, StoreSpec

# (spec.json path, ranks, environment, extras for the training process) -> its metadata
Launch = Callable[[Path, int, dict[str, str], dict[str, Any]], Mapping[str, Any]]
SUMMARY_METRICS = ("final_loss", "tokens_per_s", "tokens_seen", "num_params", "wall_s")


def resumable_mlflow_run(run_dir: Path, spec: RunSpec) -> str | None:
    """The MLflow run to continue when ``run_dir`` holds an interrupted run of the same spec.

    A killed materialization leaves checkpoints and the spec it ran; re-materializing with the
    same declaration resumes there (the trainer restores data position and RNG). A changed
    declaration, or a run that finished, starts over.
    """
    spec_file, ml_file = run_dir / "spec.json", run_dir / "mlflow.json"
    if not (spec_file.is_file() and ml_file.is_file()) or (run_dir / "summary.json").exists():
        return None
    tracking = ("mlflow_run_id", "mlflow_tracking_uri")  # where it is recorded, not what
    # where the files are is not what the run is: another machine's copy of the folder resumes
    try:
        saved = RunSpec.model_validate_json(spec_file.read_text()).portable()
    except ValueError:  # a spec this version cannot read: start over
        return None
    old = {k: v for k, v in saved.items() if k not in tracking}
    new = {k: v for k, v in spec.portable().items() if k not in tracking}
    if old != new:
        return None
    return json.loads(ml_file.read_text())["run_id"]


def _spec(
    exp: Experiment,
    layout: Layout,
    decl: TrainingDecl,
    *,
    name: str,
    mixture: str,
    out_dir: Path,
    tracking_uri: str,
    init_from: InitFrom | None = None,
    doremi: DoReMiSpec | None = None,
    seed: int | None = None,
) -> RunSpec:
    """The RunSpec of a training declaration on ``mixture``'s token file (``seed``: replaces
    ``train.seed``, which seeds both the initialization and the data order)."""
    tokens = TokenFile.open(layout.tokens_dir(mixture))
    dims = decl.model.resolve(tokens.meta.vocab_size, exp.mixtures[mixture].seq_len)
    train = decl.train if seed is None else decl.train.model_copy(update={"seed": seed})
    return RunSpec(
        name=name,
        tokens_dir=layout.tokens_dir(mixture),
        out_dir=out_dir,
        model=dims,
        train=train,
        deepspeed_config=decl.deepspeed_path(layout.home),
        deepspeed_overrides=decl.deepspeed_overrides,
        init_from=init_from,
        doremi=doremi,
        budget_params=decl.model.budget_params(dims),
        mlflow_tracking_uri=tracking_uri,
        store=StoreSpec(root=layout.home, remote=layout.remote) if layout.remote else None,
    )


def replicate_name(run: str, seed: int | None) -> str:
    """``<run>`` or, for one seed of a run declared with ``seeds``, ``<run>/seed<k>``."""
    return run if seed is None else f"{run}/seed{seed}"


def run_spec(
    exp: Experiment, layout: Layout, run: str, tracking_uri: str, seed: int | None = None
) -> RunSpec:
    """The spec of a declared run, or of its replicate ``seed`` (``init_from`` pointing at its
    parent's run folder)."""
    rdecl = exp.runs[run]
    init = None
    if rdecl.init_from is not None:
        init = InitFrom(run_dir=layout.run_dir(rdecl.init_from.run), layers=rdecl.init_from.layers)
    return _spec(
        exp,
        layout,
        rdecl,
        name=run if seed is None else f"{run}-seed{seed}",
        mixture=rdecl.mixture,
        out_dir=layout.run_dir(run, seed),
        tracking_uri=tracking_uri,
        init_from=init,
        seed=seed,
    )


def doremi_spec(
    exp: Experiment, layout: Layout, mixture: str, role: str, tracking_uri: str
) -> RunSpec:
    """The spec of DoReMi's ``reference`` or ``proxy`` run of a mixture."""
    decl = exp.mixtures[mixture].doremi
    if decl is None:
        raise ValueError(f"mixture {mixture!r} does not declare doremi")
    ddir = layout.doremi_dir(mixture)
    doremi = None
    if role == "proxy":
        initial = None
        if decl.initial_weights == "reference":
            initial = read_json(layout.mixture_dir(decl.reference) / "mixture.json")["weights"]
        doremi = DoReMiSpec(
            reference_run_dir=ddir / "reference",
            eta=decl.eta,
            smoothing=decl.smoothing,
            initial_weights=initial,
        )
    elif role != "reference":
        raise ValueError(f"DoReMi role must be 'reference' or 'proxy', got {role!r}")
    return _spec(
        exp,
        layout,
        decl,
        name=f"doremi-{mixture}-{role}",
        mixture=decl.reference,
        out_dir=ddir / role,
        tracking_uri=tracking_uri,
        doremi=doremi,
    )


def _training_params(decl: TrainingDecl) -> dict[str, Any]:
    params: dict[str, Any] = {f"model.{k}": v for k, v in decl.model.model_dump().items()}
    params |= {f"train.{k}": v for k, v in decl.train.model_dump().items()}
    return {k: v for k, v in params.items() if v is not None}


def run_params(exp: Experiment, run: str, seed: int | None = None) -> dict[str, Any]:
    """Flat MLflow params: recipe, mixture, model and optimization settings (and the seed)."""
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
    params |= _training_params(rdecl)
    if seed is not None:
        params["train.seed"] = seed
    if rdecl.evals:
        params["evals"] = ",".join(rdecl.evals)
    if rdecl.init_from is not None:
        params |= {"init_from.run": rdecl.init_from.run, "init_from.layers": rdecl.init_from.layers}
    return params


def run_tags(exp: Experiment, run: str, seed: int | None = None) -> dict[str, str]:
    """MLflow tags of a run: what it trained on, its seed, and the asset that evaluates it."""
    mixture = exp.runs[run].mixture
    tags = {
        "dagster.eval_asset_key": f"eval/{replicate_name(run, seed)}",
        "corpuslab.recipe": exp.mixtures[mixture].recipe,
        "corpuslab.mixture": mixture,
        "corpuslab.run": run,
    }
    if seed is not None:
        tags["corpuslab.seed"] = str(seed)
    return tags


def run_artifacts(exp: Experiment, layout: Layout, run: str) -> list[Path]:
    """Files logged with a run: the mixture's plan and the declarations behind it."""
    mixture = exp.runs[run].mixture
    return [
        layout.mixture_dir(mixture) / "mixture.json",
        Path(exp.where("runs", run)),
        Path(exp.where("mixtures", mixture)),
        Path(exp.where("recipes", exp.mixtures[mixture].recipe)),
    ]


def doremi_params(exp: Experiment, mixture: str, role: str) -> dict[str, Any]:
    """MLflow params of DoReMi's reference or proxy run."""
    decl = exp.mixtures[mixture].doremi
    assert decl is not None
    p: dict[str, Any] = {
        "doremi.mixture": mixture,
        "doremi.role": role,
        "mixture": decl.reference,
    }
    p |= _training_params(decl)
    if role == "proxy":
        p |= {
            "doremi.eta": decl.eta,
            "doremi.smoothing": decl.smoothing,
            "doremi.initial_weights": decl.initial_weights,
        }
    return p


def doremi_tags(exp: Experiment, mixture: str, role: str) -> dict[str, str]:
    decl = exp.mixtures[mixture].doremi
    assert decl is not None
    return {
        "corpuslab.recipe": exp.mixtures[mixture].recipe,
        "corpuslab.mixture": decl.reference,
        "corpuslab.doremi": mixture,
        "corpuslab.doremi.role": role,
    }


def materialize_training(
    spec: RunSpec,
    *,
    client: Any,
    experiment_id: str,
    tracking_uri: str,
    ranks: int,
    launch: Launch,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    artifacts: list[Path],
) -> dict[str, Any]:
    """Train ``spec`` through ``launch``, recorded in MLflow; returns the asset's summary.

    ``client`` is an ``mlflow.MlflowClient``. The summary holds the launcher's metadata, the
    MLflow run id, the loss curve and the ``data_version`` (the digest of ``model.pt``).

    The tracking URI may hold a password: it reaches the training process only through its
    environment (``MLFLOW_TRACKING_URI``), never the spec file logged as an artifact, and only
    its redacted form is written down (``mlflow.json``).
    """
    run_dir = Path(spec.out_dir)
    run_id = resumable_mlflow_run(run_dir, spec)
    resumed = run_id is not None
    if run_id is None:  # a new run: whatever an older declaration left is archived
        if run_dir.exists():
            archive = run_dir.with_name(f".{run_dir.name}.replaced")
            shutil.rmtree(archive, ignore_errors=True)
            run_dir.rename(archive)
            shutil.rmtree(archive, ignore_errors=True)
        run_dir.mkdir(parents=True)
        run_id = client.create_run(experiment_id, run_name=run_name, tags=dict(tags)).info.run_id
        record = {"run_id": run_id, "tracking_uri": redact_uri(tracking_uri)}
        write_json(record, run_dir / "mlflow.json")
    else:
        client.set_tag(run_id, "corpuslab.resumed_by", run_name)
    spec = spec.model_copy(update={"mlflow_run_id": run_id, "mlflow_tracking_uri": None})
    try:
        spec_path = run_dir / "spec.json"
        spec_path.write_text(spec.model_dump_json(indent=2))
        template = json.loads(Path(spec.deepspeed_config).read_text())
        ds_filled = fill_deepspeed_config(template, spec, world_size=ranks)
        write_json(ds_filled, run_dir / "deepspeed_config.json")
        logged = client.get_run(run_id).data.params
        for k, v in params.items():
            if k not in logged:  # a resumed run already has them
                client.log_param(run_id, k, v)
        for path in (spec_path, run_dir / "deepspeed_config.json", *artifacts):
            client.log_artifact(run_id, str(path), artifact_path="config")
        if not resumed:
            log_token_dataset(client, run_id, Path(spec.tokens_dir))
        env = {
            "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
            "MLFLOW_TRACKING_URI": tracking_uri,  # not in spec.json: it may hold a password
        }
        if spec.store is not None:  # the store's copy of the run folder is this one (a new
            run_store.push_run(spec)  # run replaces an old one there too) before it starts
        metadata = dict(launch(spec_path, ranks, env, {"run": spec.name, "mlflow_run_id": run_id}))
        summary = read_json(run_dir / "summary.json")
        for k in SUMMARY_METRICS:
            if k in summary:
                client.log_metric(run_id, f"train.{k}", float(summary[k]))
        client.log_artifact(run_id, str(run_dir / "summary.json"), artifact_path="train")
        set_terminated(client, run_id, "FINISHED")
    except BaseException:
        set_terminated(client, run_id, "FAILED")
        raise
    curve = [
        (m.step, round(m.value, 4))
        for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    ]
    return metadata | {
        "mlflow_run_id": run_id,
        "resumed": resumed,
        "loss_curve": curve,
        "data_version": digest(run_dir / "model.pt"),
    }


def log_token_dataset(client: Any, run_id: str, tokens_dir: Path) -> None:
    """Record the token file as the run's MLflow dataset input (context ``training``).

    The digest is the token file's content digest (the ``tokens/<mixture>`` data version),
    so MLflow's compare view shows which runs trained on exactly the same tokens.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    meta = json.loads((tokens_dir / "meta.json").read_text())
    name = "tokens/" + tokens_dir.name.split("=", 1)[-1]
    dataset = Dataset(
        name=name,
        digest=digest(tokens_dir / "train.bin"),
        source_type="local",
        source=json.dumps({"uri": str(tokens_dir)}),
        profile=json.dumps(
            {
                "sequences": meta["n_sequences"],
                "seq_len": meta["seq_len"],
                "tokens": meta["n_sequences"] * (meta["seq_len"] + 1),
                "domains": meta["domains"],
            }
        ),
    )
    client.log_inputs(
        run_id, [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
    )


def mixture_weights(layout: Layout, mixture: str) -> dict[str, float]:
    """The domain weights ``mixture/<mixture>`` chose (logged as run params)."""
    return read_json(layout.mixture_dir(mixture) / "mixture.json")["weights"]
