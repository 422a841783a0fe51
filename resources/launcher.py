"""Where a training run executes: a local torchrun subprocess, or a Kubernetes pod — via Pipes.

Both run the same entry point (``infra/entrypoints/train.py --spec spec.json``) and report
back through Dagster Pipes, so ``train/<run>`` stays the same asset on a laptop and a cluster.
"""

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import dagster as dg

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_ENTRYPOINT = REPO_ROOT / "infra" / "entrypoints" / "train.py"
LOCAL_LAUNCHER = REPO_ROOT / "corpuslab" / "training" / "launch.py"


class TrainingLauncher(dg.ConfigurableResource):
    """Launches ``torchrun`` with N ranks locally (CPU/gloo or local GPUs) or in a k8s pod.

    In ``k8s`` mode the pod must see the same ``CORPUSLAB_HOME`` (a shared volume claim mounted
    at the same path) so it finds the token file and writes checkpoints where eval reads them.
    """

    mode: Literal["local", "k8s"] = "local"
    image: str | None = None  # k8s: an image built from infra/docker/Dockerfile
    namespace: str | None = None
    home_volume_claim: str | None = None  # k8s: PVC holding CORPUSLAB_HOME
    home_mount_path: str | None = None
    gpus_per_pod: int = 0
    python: str = sys.executable

    def command(self, ranks: int, spec_path: Path, python: str | None = None) -> list[str]:
        """The launch command for ``ranks`` processes on one machine.

        Locally: :mod:`corpuslab.training.launch`, torchrun's worker environment with the
        rendezvous store listening on 127.0.0.1 only (torchrun's listens on every interface)
        on a free port, so parallel local runs never collide. In a pod: ``torchrun
        --standalone``, whose store the pod's network policy confines.
        """
        if self.mode == "local":
            return [
                python or self.python,
                str(LOCAL_LAUNCHER),
                f"--nproc-per-node={ranks}",
                str(TRAIN_ENTRYPOINT),
                "--spec",
                str(spec_path),
            ]
        return [
            python or self.python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={ranks}",
            "infra/entrypoints/train.py",
            "--spec",
            str(spec_path),
        ]

    def pod_spec(self, ranks: int) -> dict[str, Any]:
        """Pod spec for k8s mode: GPUs, a large /dev/shm for NCCL, the shared home volume."""
        if not self.home_volume_claim or not self.home_mount_path:
            raise ValueError("k8s training needs home_volume_claim and home_mount_path")
        gpus = self.gpus_per_pod or ranks
        if ranks > gpus:
            raise ValueError(f"{ranks} ranks do not fit a pod with {gpus} GPUs")
        return {
            "containers": [
                {
                    "resources": {"limits": {"nvidia.com/gpu": gpus}},
                    "volume_mounts": [
                        {"name": "home", "mount_path": self.home_mount_path},
                        {"name": "dshm", "mount_path": "/dev/shm"},
                    ],
                }
            ],
            "volumes": [
                {"name": "home", "persistent_volume_claim": {"claim_name": self.home_volume_claim}},
                {"name": "dshm", "empty_dir": {"medium": "Memory"}},
            ],
            "restart_policy": "Never",
        }

    def launch(
        self,
        context: dg.AssetExecutionContext,
        spec_path: Path,
        ranks: int,
        env: Mapping[str, str],
        extras: Mapping[str, Any],
    ) -> dg.PipesClientCompletedInvocation:
        if self.mode == "local":
            return dg.PipesSubprocessClient().run(
                context=context,
                command=self.command(ranks, spec_path),
                env=dict(env),
                extras=dict(extras),
            )
        try:
            from dagster_k8s import PipesK8sClient
        except ImportError as exc:  # optional: only clusters need it
            raise RuntimeError("k8s training needs dagster-k8s: pip install '.[k8s]'") from exc
        if not self.image:
            raise ValueError("k8s training needs an image")
        return PipesK8sClient().run(
            context=context,
            image=self.image,
            namespace=self.namespace,
            command=self.command(ranks, spec_path, python="python"),
            env=dict(env),
            extras=dict(extras),
            base_pod_spec=self.pod_spec(ranks),
        )
