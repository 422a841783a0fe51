"""The training launcher builds the same entry-point command locally and for a k8s pod."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from corpuslab.training.runspec import ModelDims, RunSpec, TrainConfig
from resources.launcher import LOCAL_LAUNCHER, TRAIN_ENTRYPOINT, TrainingLauncher
from tests.training import REPO, SEQ_LEN, VOCAB, trainer_env


def test_local_command_is_the_loopback_launcher_over_the_entry_point_and_it_trains(
    tmp_path: Path, tokens_dir: Path
) -> None:
    """The whole command, then the command itself run: one real DeepSpeed step on CPU."""
    spec_path = tmp_path / "runs" / "x" / "spec.json"
    assert TrainingLauncher(python="/venv/bin/python").command(2, spec_path) == [
        "/venv/bin/python",
        str(LOCAL_LAUNCHER),
        "--nproc-per-node=2",
        str(TRAIN_ENTRYPOINT),
        "--spec",
        str(spec_path),
    ]
    assert TRAIN_ENTRYPOINT == REPO / "infra" / "entrypoints" / "train.py"
    assert LOCAL_LAUNCHER.is_file()

    spec = RunSpec(
        name="launched",
        tokens_dir=tokens_dir,
        out_dir=tmp_path / "runs" / "x",
        model=ModelDims(vocab_size=VOCAB, seq_len=SEQ_LEN, n_layer=1, n_head=2, d_model=32),
        train=TrainConfig(steps=1, micro_batch_size=2, warmup_steps=0, threads=1),
        deepspeed_config=REPO / "infra" / "deepspeed" / "zero1.json",
    )
    spec_path.parent.mkdir(parents=True)
    spec_path.write_text(spec.model_dump_json())
    cmd = TrainingLauncher().command(1, spec_path)
    assert cmd[0] == sys.executable  # the launcher's default: this environment's interpreter
    proc = subprocess.run(
        cmd, env=trainer_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((spec.out_dir / "summary.json").read_text())
    assert (summary["steps"], summary["world_size"], summary["zero_stage"]) == (1, 1, 1)
    assert (spec.out_dir / "model.pt").is_file()


def test_k8s_pod_spec_mounts_the_shared_home_and_requests_gpus() -> None:
    launcher = TrainingLauncher(
        mode="k8s",
        image="corpuslab:latest",
        home_volume_claim="corpuslab-home",
        home_mount_path="/data",
        gpus_per_pod=8,
    )
    spec = launcher.pod_spec(ranks=8)
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert {"name": "home", "persistent_volume_claim": {"claim_name": "corpuslab-home"}} in (
        spec["volumes"]
    )
    assert {"name": "home", "mount_path": "/data"} in spec["containers"][0]["volume_mounts"]
    # in the pod the entry point is the image's copy, relative to its working directory
    assert launcher.command(8, Path("/data/runs/x/spec.json"), python="python") == [
        "python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=8",
        "infra/entrypoints/train.py",
        "--spec",
        "/data/runs/x/spec.json",
    ]
    with pytest.raises(ValueError, match="do not fit"):
        launcher.pod_spec(ranks=16)
    with pytest.raises(ValueError, match="home_volume_claim"):
        TrainingLauncher(mode="k8s", image="i").pod_spec(ranks=1)
