"""The training launcher builds the same entry-point command locally and for a k8s pod."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
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


def test_multi_node_commands_use_a_static_rendezvous_with_node_ranks() -> None:
    """Two nodes: same master, node ranks 0 and 1, ranks split evenly; one node: standalone."""
    launcher = TrainingLauncher(python="py", nodes=2, master_port=29511)
    cmds = [launcher.command(4, Path("/s.json"), node_rank=i) for i in (0, 1)]
    for i, cmd in enumerate(cmds):
        assert "--nnodes=2" in cmd and f"--node_rank={i}" in cmd
        assert "--nproc_per_node=2" in cmd and "--master_port=29511" in cmd
        assert "--master_addr=127.0.0.1" in cmd and "--standalone" not in cmd
    # one local node: the loopback launcher; one node in a pod: torchrun --standalone
    assert TrainingLauncher(python="py").command(2, Path("/s.json"))[1] == str(LOCAL_LAUNCHER)
    pod = TrainingLauncher(mode="k8s", python="py").command(2, Path("/s.json"))
    assert "--standalone" in pod
    with pytest.raises(ValueError, match="split evenly"):
        TrainingLauncher(nodes=2).command(3, Path("/s.json"))


def _steps_through_dagster(launcher: TrainingLauncher, spec_path: Path, tmp: Path) -> dict:
    """Materialize an asset that trains ``spec_path`` on 2 ranks through ``launcher`` (Pipes);
    the per-step metrics rank 0 streamed back, read from the Dagster event log."""

    @dg.asset
    def trained(context: dg.AssetExecutionContext, launcher: TrainingLauncher):  # noqa: ANN202
        done = launcher.launch(context, spec_path, 2, {"DS_ACCELERATOR": "cpu"}, {})
        return done.get_materialize_result()

    tmp.mkdir()
    with dg.instance_for_test(temp_dir=str(tmp)) as instance:
        result = dg.materialize([trained], resources={"launcher": launcher}, instance=instance)
        assert result.success
        lines = [e.user_message for e in instance.all_logs(result.run_id)]
    steps = {}
    for line in lines:
        if line.startswith("{") and '"step"' in line:
            row = json.loads(line)
            steps[row["step"]] = row
    return steps


def test_two_local_nodes_train_the_same_losses_as_one_node_with_two_ranks(
    tokens_dir: Path, tmp_path: Path
) -> None:
    """torchrun --nnodes=2 (one rank each, rendezvous on 127.0.0.1) through the launcher and
    Pipes gives exactly the per-step losses of 2 ranks on one node (the loopback launcher)."""
    from tests.corpuslab.training.test_train import SEQ_LEN, make_spec, write_spec

    runs = {}
    for nodes in (1, 2):
        spec = make_spec(
            tmp_path / f"run-{nodes}",
            tokens_dir,
            steps=8,
            log_every=1,
            checkpoint_every=8,
            global_batch_tokens=16 * SEQ_LEN,
            grad_accum_steps=None,
        )
        spec_path = write_spec(spec, tmp_path / f"spec-{nodes}.json")
        launcher = TrainingLauncher(nodes=nodes)
        runs[nodes] = _steps_through_dagster(launcher, spec_path, tmp_path / f"dagster-{nodes}")
    assert sorted(runs[1]) == sorted(runs[2]) == list(range(1, 9))
    assert [runs[2][s]["loss"] for s in range(1, 9)] == [runs[1][s]["loss"] for s in range(1, 9)]
    assert runs[1][8]["loss"] < runs[1][1]["loss"]  # it trained


def test_k8s_training_pod_validates_against_the_kubernetes_models() -> None:
    """The pod PipesK8sClient would create, built by dagster-k8s's own ``build_pod_body`` into
    the kubernetes client's ``V1Pod`` (models generated from the Kubernetes OpenAPI schema:
    unknown keys and missing required fields raise). No API server runs here."""
    import kubernetes
    from dagster_k8s.pipes import build_pod_body

    launcher = TrainingLauncher(
        mode="k8s", image="corpuslab:1", home_volume_claim="home", home_mount_path="/data"
    )
    cmd = launcher.command(4, Path("/data/runs/x/spec.json"), python="python")
    pod = build_pod_body("train-x", "corpuslab:1", cmd, {"A": "1"}, None, launcher.pod_spec(4))
    body = kubernetes.client.ApiClient().sanitize_for_serialization(pod)
    (container,) = body["spec"]["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert {"mountPath": "/dev/shm", "name": "dshm"} in container["volumeMounts"]
    assert body["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "home"}
    assert body["spec"]["restartPolicy"] == "Never" and container["command"] == cmd
    # the same validation rejects what a typo or a missing field would send to the API server
    broken = launcher.pod_spec(4)
    broken["containers"][0]["volume_mount"] = []
    with pytest.raises(Exception, match="Unexpected keys"):
        build_pod_body("train-x", "corpuslab:1", cmd, {}, None, broken)
    broken = launcher.pod_spec(4)
    broken["volumes"][0]["persistent_volume_claim"] = {}
    with pytest.raises(ValueError, match="claim_name"):
        build_pod_body("train-x", "corpuslab:1", cmd, {}, None, broken)
