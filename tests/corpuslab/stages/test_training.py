"""Training materializations: one killed mid-run resumes into the same MLflow run; the params.

:func:`~corpuslab.stages.training.materialize_training` is driven as the ``train/<run>`` asset
drives it, with a real SQLite MLflow store and a launch callable that runs the real entry point
through the launcher's command (torchrun): the first launch is SIGKILLed once a checkpoint is
written, the second materialization of the same spec resumes from it into the same MLflow run.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import mlflow
import pytest

from corpuslab import tracking
from corpuslab.declarations import load_experiment
from corpuslab.stages.training import (
    Launch,
    materialize_training,
    resumable_mlflow_run,
    run_params,
)
from corpuslab.training.runspec import ModelDims, RunSpec, TrainConfig
from resources.launcher import TrainingLauncher
from tests.conftest import TINY_EXPERIMENT, write_experiment
from tests.training import (
    REPO,
    SEQ_LEN,
    VOCAB,
    kill_after_checkpoint,
    latest_checkpoint,
    trainer_env,
)

STEPS = 8


class Killed(RuntimeError):
    """What a launcher reports when its training process (or pod) died."""


def _spec(tmp_path: Path, tokens_dir: Path, uri: str, steps: int = STEPS) -> RunSpec:
    return RunSpec(
        name="resumable",
        tokens_dir=tokens_dir,
        out_dir=tmp_path / "run",
        model=ModelDims(vocab_size=VOCAB, seq_len=SEQ_LEN, n_layer=1, n_head=2, d_model=32),
        train=TrainConfig(
            steps=steps,
            micro_batch_size=4,
            warmup_steps=2,
            log_every=1,
            checkpoint_every=2,
            threads=1,
        ),
        deepspeed_config=REPO / "infra" / "deepspeed" / "zero2.json",
        mlflow_tracking_uri=uri,
    )


def test_a_killed_training_materialization_resumes_into_the_same_mlflow_run(
    tmp_path: Path, tokens_dir: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = tracking.experiment_id(client, "corpuslab", (tmp_path / "artifacts").as_uri())
    spec = _spec(tmp_path, tokens_dir, uri)
    launcher = TrainingLauncher()
    launches: list[dict[str, Any]] = []

    def killed_after_checkpoint(spec_path: Path, ranks: int, env: dict, extras: dict) -> dict:
        launches.append(extras)
        at = kill_after_checkpoint(
            launcher.command(ranks, spec_path), trainer_env(env), spec.out_dir, 4
        )
        raise Killed(f"training process killed after its step-{at} checkpoint")

    def to_the_end(spec_path: Path, ranks: int, env: dict, extras: dict) -> dict:
        launches.append(extras)
        proc = subprocess.run(
            launcher.command(ranks, spec_path),
            env=trainer_env(env),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        return {"launched": "torchrun"}

    def materialize(launch: Launch, name: str) -> dict:
        return materialize_training(
            spec,
            client=client,
            experiment_id=experiment,
            tracking_uri=uri,
            ranks=1,
            launch=launch,
            run_name=name,
            tags={"corpuslab.run": "resumable"},
            params={"train.steps": STEPS},
            artifacts=[],
        )

    with pytest.raises(Killed):
        materialize(killed_after_checkpoint, "first")
    run_id = json.loads((spec.out_dir / "mlflow.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "FAILED"
    assert not (spec.out_dir / "summary.json").exists()
    killed_at = int(latest_checkpoint(spec.out_dir).removeprefix("step"))
    assert 4 <= killed_at < STEPS
    assert resumable_mlflow_run(spec.out_dir, spec) == run_id
    logged_before = {m.step for m in client.get_metric_history(run_id, "loss")}
    # the killed launch logged into this run (what its logger thread had not flushed is lost)
    assert logged_before and max(logged_before) <= killed_at + 1

    summary = materialize(to_the_end, "second")
    assert summary["mlflow_run_id"] == run_id and summary["resumed"]
    assert [e["mlflow_run_id"] for e in launches] == [run_id, run_id]
    assert summary["launched"] == "torchrun"
    trained = json.loads((spec.out_dir / "summary.json").read_text())
    assert trained["resumed_from_step"] == killed_at
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["corpuslab.resumed_by"] == "second"
    assert run.data.params == {"train.steps": str(STEPS)}  # logged once, kept
    assert run.data.metrics["train.final_loss"] == pytest.approx(trained["final_loss"])
    assert [r.info.run_id for r in client.search_runs([experiment])] == [run_id]  # no second run
    steps = {m.step for m in client.get_metric_history(run_id, "loss")}
    assert set(range(killed_at + 1, STEPS + 1)) <= steps and steps <= set(range(1, STEPS + 1))
    assert [s for s, _ in summary["loss_curve"]][-1] == STEPS


def _plain_spec(tmp_path: Path, steps: int) -> RunSpec:
    """A spec that is never trained: what resumable_mlflow_run compares."""
    return RunSpec(
        name="r",
        tokens_dir=tmp_path / "tokens",
        out_dir=tmp_path / "run",
        model=ModelDims(vocab_size=512, seq_len=32, n_layer=1, n_head=2, d_model=32),
        train=TrainConfig(steps=steps),
        deepspeed_config=tmp_path / "zero2.json",
        mlflow_run_id="will-be-ignored",
    )


def test_resume_only_an_interrupted_run_of_the_same_spec(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert resumable_mlflow_run(run_dir, _plain_spec(tmp_path, 10)) is None  # nothing there yet
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(_plain_spec(tmp_path, 10).model_dump_json())
    (run_dir / "mlflow.json").write_text(json.dumps({"run_id": "abc"}))
    assert resumable_mlflow_run(run_dir, _plain_spec(tmp_path, 10)) == "abc"  # killed mid-run
    assert resumable_mlflow_run(run_dir, _plain_spec(tmp_path, 20)) is None  # declaration changed
    (run_dir / "summary.json").write_text("{}")
    assert resumable_mlflow_run(run_dir, _plain_spec(tmp_path, 10)) is None  # it had finished


def test_run_params_flatten_the_declaration(tmp_path: Path) -> None:
    files = dict(TINY_EXPERIMENT)
    files["runs.yaml"] = """
        runs:
          parent: {mixture: small, model: {scale: cpu-1m}, train: {steps: 4}}
          child:
            mixture: small
            model: {n_layer: 2, n_head: 4, d_model: 128}  # cpu-1m's width: inheritable
            train: {steps: 4, lawa_k: 2, checkpoint_every: 2, schedule: wsd}
            init_from: {run: parent, layers: 1}
    """
    exp = load_experiment(write_experiment(tmp_path / "exp", files))
    params = run_params(exp, "child")
    assert params["init_from.run"] == "parent" and params["train.schedule"] == "wsd"
    assert params["model.n_layer"] == 2 and params["recipe"] == "lenient"
    assert run_params(exp, "parent")["model.scale"] == "cpu-1m"
