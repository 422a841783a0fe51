"""The training launcher builds the same entry-point command locally and for a k8s pod."""

from __future__ import annotations

from pathlib import Path

import pytest

from resources.launcher import LOCAL_LAUNCHER, TRAIN_ENTRYPOINT, TrainingLauncher


def test_local_command_runs_the_entry_point_under_the_loopback_launcher() -> None:
    cmd = TrainingLauncher(python="/venv/bin/python").command(2, Path("/h/runs/x/spec.json"))
    assert cmd[:2] == ["/venv/bin/python", str(LOCAL_LAUNCHER)]
    assert "--nproc-per-node=2" in cmd and str(TRAIN_ENTRYPOINT) in cmd
    assert cmd[-2:] == ["--spec", "/h/runs/x/spec.json"]
    assert TRAIN_ENTRYPOINT.is_file() and LOCAL_LAUNCHER.is_file()


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
    cmd = launcher.command(8, Path("/data/runs/x/spec.json"), python="python")
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"] and "--nproc_per_node=8" in cmd
    with pytest.raises(ValueError, match="do not fit"):
        launcher.pod_spec(ranks=16)
    with pytest.raises(ValueError, match="home_volume_claim"):
        TrainingLauncher(mode="k8s", image="i").pod_spec(ranks=1)
