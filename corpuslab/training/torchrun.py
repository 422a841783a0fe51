"""torchrun commands for one node or many, and a runner for several "nodes" on one machine.

One node uses ``--standalone`` (a private rendezvous on a free port). Several nodes use the
static rendezvous of ``torchrun`` (``--nnodes``, ``--node-rank``, ``--master-addr``,
``--master-port``): node 0's agent hosts the c10d TCP store and node ``i``'s processes get the
global ranks ``i * nproc_per_node ...``, so global rank 0 (the one that reports through Dagster
Pipes) is always on node 0. This is how a Kubernetes PyTorchJob or a Slurm script launches
DeepSpeed; the dynamic ``c10d`` rendezvous would assign node ranks by arrival instead.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def torchrun_command(
    python: str,
    entrypoint: str | Path,
    spec_path: str | Path,
    nproc_per_node: int,
    *,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
) -> list[str]:
    """The ``torch.distributed.run`` command of one node of a ``nnodes``-node training run."""
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError(
            f"need nproc_per_node >= 1 and nnodes >= 1, got {nproc_per_node}, {nnodes}"
        )
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"node_rank {node_rank} outside 0..{nnodes - 1}")
    cmd = [python, "-m", "torch.distributed.run"]
    if nnodes == 1:
        cmd += ["--standalone", f"--nproc_per_node={nproc_per_node}"]
    else:
        if master_port is None:
            raise ValueError("a multi-node launch needs the master port every node dials")
        cmd += [
            f"--nnodes={nnodes}",
            f"--node_rank={node_rank}",
            f"--nproc_per_node={nproc_per_node}",
            f"--master_addr={master_addr}",
            f"--master_port={master_port}",
        ]
    return [*cmd, str(entrypoint), "--spec", str(spec_path)]


def split_ranks(ranks: int, nodes: int) -> int:
    """Processes per node when ``ranks`` spread evenly over ``nodes``."""
    if nodes < 1 or ranks < nodes or ranks % nodes:
        raise ValueError(f"{ranks} ranks do not split evenly over {nodes} nodes")
    return ranks // nodes


def start_nodes(
    commands: Sequence[Sequence[str]], env: Mapping[str, str], log_dir: Path
) -> list[subprocess.Popen[bytes]]:
    """Start each node's agent as a local process; its output goes to ``log_dir/node-<i>.log``
    (a file, not a pipe: a chatty node must never block on a full pipe; rank 0 reports)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, cmd in enumerate(commands, start=1):
        with open(log_dir / f"node-{i}.log", "wb") as log:
            procs.append(
                subprocess.Popen(list(cmd), env=dict(env), stdout=log, stderr=subprocess.STDOUT)
            )
    return procs


def wait_nodes(
    procs: Sequence[subprocess.Popen[bytes]], log_dir: Path, timeout: float | None = None
) -> None:
    """Wait for every node; a failed one raises with its exit code and the end of its log."""
    for i, proc in enumerate(procs, start=1):
        proc.wait(timeout=timeout)
        if proc.returncode != 0:
            tail = (log_dir / f"node-{i}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"training node {i} exited with {proc.returncode}:\n{tail}")
