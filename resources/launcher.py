"""Where a training run executes: local processes, or a Kubernetes pod, via Dagster Pipes.

Both run the same entry point (``infra/entrypoints/train.py --spec spec.json``) and report
back through Dagster Pipes, so ``train/<run>`` stays the same asset on a laptop and a cluster.
``nodes > 1`` spreads the ranks over several torchrun agents with a static rendezvous
(:mod:`corpuslab.training.torchrun`); locally the extra "nodes" are processes on this machine,
which is how the multi-node path is exercised without a cluster.
"""

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import dagster as dg

from corpuslab.training.torchrun import split_ranks, start_nodes, torchrun_command, wait_nodes

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
    nodes: int = 1  # torchrun agents the ranks are spread over (local: processes here)
    master_addr: str = "127.0.0.1"  # multi-node: where node 0's rendezvous store listens
    master_port: int | None = None  # multi-node: its port (local: a free one when unset)

    def command(
        self,
        ranks: int,
        spec_path: Path,
        python: str | None = None,
        node_rank: int = 0,
        master_port: int | None = None,
    ) -> list[str]:
        """Node ``node_rank``'s launch command.

        One local node: :mod:`corpuslab.training.launch`, torchrun's worker environment with
        the rendezvous store listening on 127.0.0.1 only (torchrun's listens on every
        interface) on a free port, so parallel local runs never collide. Several nodes, or a
        pod: torchrun (:mod:`corpuslab.training.torchrun`), ``--standalone`` for one node, a
        static rendezvous at ``master_addr``/``master_port`` for several (reachable from the
        other nodes by design; a pod's network policy confines it).
        """
        if self.mode == "local" and self.nodes == 1:
            return [
                python or self.python,
                str(LOCAL_LAUNCHER),
                f"--nproc-per-node={ranks}",
                str(TRAIN_ENTRYPOINT),
                "--spec",
                str(spec_path),
            ]
        entry = TRAIN_ENTRYPOINT if self.mode == "local" else "infra/entrypoints/train.py"
        return torchrun_command(
            python or self.python,
            entry,
            spec_path,
            split_ranks(ranks, self.nodes),
            nnodes=self.nodes,
            node_rank=node_rank,
            master_addr=self.master_addr,
            master_port=master_port or self.master_port,
        )

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
        if self.mode == "local" and self.nodes == 1:
            return dg.PipesSubprocessClient().run(
                context=context,
                command=self.command(ranks, spec_path),
                env=dict(env),
                extras=dict(extras),
            )
        if self.mode == "local":
            return self._launch_local_nodes(context, spec_path, ranks, env, extras)
        if self.nodes > 1:  # one pod a node needs a headless service for node 0: not yet
            raise ValueError(
                "k8s training launches one pod; nodes > 1 runs locally only (see infra/README.md)"
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

    def _launch_local_nodes(
        self,
        context: dg.AssetExecutionContext,
        spec_path: Path,
        ranks: int,
        env: Mapping[str, str],
        extras: Mapping[str, Any],
    ) -> dg.PipesClientCompletedInvocation:
        """Nodes 1.. as plain local processes, node 0 (global rank 0) through Pipes."""
        port = self.master_port
        if port is None:
            with socket.socket() as sock:
                sock.bind((self.master_addr, 0))
                port = sock.getsockname()[1]
        others = [self.command(ranks, spec_path, node_rank=i, master_port=port)
                  for i in range(1, self.nodes)]  # fmt: skip
        # the other nodes get this process's environment as node 0 does, without Pipes' context
        node_env = {
            k: v for k, v in {**os.environ, **env}.items() if not k.startswith("DAGSTER_PIPES")
        }
        logs = Path(spec_path).parent / "nodes"  # the run folder: kept with the run
        procs = start_nodes(others, node_env, logs)
        try:
            done = dg.PipesSubprocessClient().run(
                context=context,
                command=self.command(ranks, spec_path, node_rank=0, master_port=port),
                env=dict(env),
                extras=dict(extras),
            )
            wait_nodes(procs, logs, timeout=300)  # node 0 is done: the rest end with it
            return done
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
