"""The train asset resumes an interrupted run of the same declaration and restarts otherwise."""

from __future__ import annotations

import json
from pathlib import Path

from corpuslab.declarations import load_experiment
from corpuslab.stages.training import resumable_mlflow_run, run_params
from corpuslab.training.runspec import ModelDims, RunSpec, TrainConfig
from tests.conftest import TINY_EXPERIMENT, write_experiment


def _spec(tmp_path: Path, steps: int) -> RunSpec:
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
    assert resumable_mlflow_run(run_dir, _spec(tmp_path, 10)) is None  # nothing there yet
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(_spec(tmp_path, 10).model_dump_json())
    (run_dir / "mlflow.json").write_text(json.dumps({"run_id": "abc"}))
    assert resumable_mlflow_run(run_dir, _spec(tmp_path, 10)) == "abc"  # killed mid-run
    assert resumable_mlflow_run(run_dir, _spec(tmp_path, 20)) is None  # declaration changed
    (run_dir / "summary.json").write_text("{}")
    assert resumable_mlflow_run(run_dir, _spec(tmp_path, 10)) is None  # it had finished


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
