"""A local multi-process launcher whose rendezvous listens on loopback only.

``torchrun --standalone`` starts its rendezvous store (a c10d ``TCPStore``) listening on every
interface, whatever host name it is given, so on a laptop or a shared machine anyone who can
reach the port can join or disturb the store while a run trains. Here the store's listening
socket is bound to ``127.0.0.1`` first and handed to ``TCPStore`` (``master_listen_fd``); the
workers get torchrun's environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``...) with ``TORCHELASTIC_USE_AGENT_STORE`` set, so ``init_process_group`` joins
this store as a client instead of starting a server of its own, and gloo is pinned to the
loopback interface. A rank that fails stops the others; the launcher exits with its status.

``python -m corpuslab.training.launch --nproc-per-node N script.py [args...]``. Multi-node
and cluster launches keep torchrun (their rendezvous must be reachable from other nodes).
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
_KEEP: list[Any] = []  # stores created for a world of one live as long as the process


def loopback_store(world_size: int) -> tuple[Any, int]:
    """A c10d ``TCPStore`` server listening on 127.0.0.1 only, and its port."""
    import torch.distributed as dist

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    # torch.distributed re-exports TCPStore from torch._C without listing it as public
    store = dist.TCPStore(  # pyright: ignore[reportPrivateImportUsage]
        LOOPBACK,
        port,
        world_size,
        True,
        timeout=datetime.timedelta(minutes=30),
        wait_for_workers=False,
        master_listen_fd=sock.fileno(),
    )
    _KEEP.append(sock)  # the store listens on this socket: keep it open
    return store, port


def worker_env(rank: int, world_size: int, port: int, run_id: str) -> dict[str, str]:
    """The environment torchrun gives a worker, pointed at the loopback agent store."""
    env = {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "GROUP_RANK": "0",
        "ROLE_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "ROLE_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": LOOPBACK,
        "MASTER_PORT": str(port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        "TORCHELASTIC_RUN_ID": run_id,
    }
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's pair sockets on loopback too
    return env


def local_world_of_one() -> None:
    """Let a plain ``python`` process train as a world of one, its store on loopback."""
    if "RANK" in os.environ:
        return
    store, port = loopback_store(1)
    _KEEP.append(store)
    env = worker_env(0, 1, port, uuid.uuid4().hex)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})


def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(nproc: int, command: list[str]) -> int:
    """Run ``command`` as ``nproc`` ranks on this machine; the first failure's status, or 0."""
    if nproc < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc}")
    store, port = loopback_store(nproc)
    run_id = uuid.uuid4().hex
    base = dict(os.environ)
    if nproc > 1 and "OMP_NUM_THREADS" not in base:
        base["OMP_NUM_THREADS"] = "1"  # as torchrun does: N ranks must not oversubscribe
    procs = [
        subprocess.Popen(command, env=base | worker_env(r, nproc, port, run_id))
        for r in range(nproc)
    ]

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                _stop(procs)
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        del store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a script as N local ranks (loopback).")
    parser.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=1)
    parser.add_argument("script", help="the Python script every rank runs")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    args = parser.parse_args(argv)
    return launch(args.nproc_per_node, [sys.executable, args.script, *args.args])


if __name__ == "__main__":
    sys.exit(main())
