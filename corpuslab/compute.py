"""Where per-shard work runs: in this process (local) or as Ray tasks on a cluster.

A stage hands its per-shard work to a :class:`Compute`: ``run(fn, *args)`` executes one call
and returns its value, ``map(fn, items)`` executes ``fn(item)`` for every item and returns the
values in order. :class:`LocalCompute` runs calls in the calling process (a Dagster step is its
own process already) and maps over a thread pool, since the mapped work (tokenizers' Rust
encoder, the numba MinHash kernels, pyarrow) releases the GIL. :class:`RayCompute` submits the
same functions as Ray tasks (``ray.remote(fn).remote(...)``, Ray's core idiom) to the cluster at
an address; the tasks read and write the shared home themselves, so only arguments and small
summaries travel. The functions are the same either way, so the outputs are the same bit for bit.

Errors raised in a Ray task come back from ``ray.get`` as ``RayTaskError`` subclasses of the
original exception type, so a ``CorpusError`` in a task is still a ``CorpusError`` here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# The folder holding the ``corpuslab`` package: Ray workers import the tasks' functions from it.
CODE_ROOT = Path(__file__).resolve().parent.parent


class Compute(Protocol):
    """What a stage needs to spread its work: one call, or one call per item."""

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...

    def map(self, fn: Callable[[Any], R], items: Iterable[Any], /) -> list[R]: ...


class LocalCompute:
    """Calls in this process; ``map`` over a thread pool of ``workers`` (default: one a core)."""

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return fn(*args, **kwargs)

    def map(self, fn: Callable[[Any], R], items: Iterable[Any], /) -> list[R]:
        todo = list(items)
        n = max(1, min(len(todo), self.workers or os.cpu_count() or 1))
        if n == 1:
            return [fn(x) for x in todo]
        with ThreadPoolExecutor(n, thread_name_prefix="compute") as pool:
            return list(pool.map(fn, todo))


class RayCompute:
    """Ray tasks on the cluster at ``address`` (``host:port`` of a head, ``ray://...``, ``auto``).

    Connects on first use and keeps the connection for the life of the process (a Ray driver
    per Dagster step process), as a database pool would; :meth:`close` disconnects. The code
    root goes on the workers' ``PYTHONPATH`` (``runtime_env``) so tasks import the same
    ``corpuslab`` as the caller; a cluster whose image installs corpuslab can pass
    ``code_root=None``. ``num_cpus`` is what each task reserves (Ray's scheduling unit).
    """

    def __init__(
        self,
        address: str,
        *,
        num_cpus: float = 1.0,
        code_root: Path | None = CODE_ROOT,
        env_vars: Mapping[str, str] | None = None,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not address:
            raise ValueError("RayCompute needs the address of a Ray cluster (e.g. 127.0.0.1:6379)")
        if num_cpus <= 0:
            raise ValueError(f"num_cpus per task must be > 0, got {num_cpus}")
        self.address = address
        self.num_cpus = num_cpus
        self.code_root = code_root
        self.env_vars = dict(env_vars or {})
        self.init_options = dict(init_options or {})
        self._connected_here = False

    def runtime_env(self) -> dict[str, Any]:
        """The job's runtime environment: the code root on ``PYTHONPATH`` plus ``env_vars``."""
        env = dict(self.env_vars)
        if self.code_root is not None:
            paths = [str(self.code_root), *filter(None, [env.get("PYTHONPATH")])]
            env["PYTHONPATH"] = os.pathsep.join(paths)
        return {"env_vars": env} if env else {}

    def connect(self) -> None:
        """Join the cluster (once a process); a clear error names the address if it is down."""
        import ray

        if ray.is_initialized():
            return
        try:
            ray.init(
                address=self.address,
                runtime_env=self.runtime_env(),
                log_to_driver=False,
                configure_logging=False,
                **self.init_options,
            )
        except ConnectionError as exc:
            raise ConnectionError(f"no Ray cluster answers at {self.address!r}: {exc}") from exc
        self._connected_here = True

    def _remote(self, fn: Callable[..., Any]) -> Any:
        import ray

        self.connect()
        # Ray's default retries (a task whose worker died runs again) are safe: writes are atomic
        return ray.remote(num_cpus=self.num_cpus)(fn)

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        import ray

        return ray.get(self._remote(fn).remote(*args, **kwargs))

    def map(self, fn: Callable[[Any], R], items: Iterable[Any], /) -> list[R]:
        import ray

        task = self._remote(fn)
        return ray.get([task.remote(x) for x in items])

    def close(self) -> None:
        """Disconnect if this object connected (the cluster itself keeps running)."""
        if self._connected_here:
            import ray

            ray.shutdown()
            self._connected_here = False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class RayHead:
    """A running local Ray head: its address and its temp folder (sessions, logs)."""

    address: str
    temp_dir: Path

    def task_names(self) -> Counter[str]:
        """How many tasks of each function the workers started (Ray's ``:task_name:`` log
        markers), to show that work really ran on the cluster."""
        names: Counter[str] = Counter()
        for out in self.temp_dir.glob("session_2*/logs/worker-*.out"):  # not session_latest
            for line in out.read_text(errors="replace").splitlines():
                if line.startswith(":task_name:"):
                    names[line.removeprefix(":task_name:")] += 1
        return names


@functools.cache
def _process_token() -> str:
    return os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32)


def _group_alive(pgid: int, exclude: int) -> bool:
    """Whether a process other than ``exclude`` is left in process group ``pgid`` (Linux)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            if int(fields[2]) == pgid and pid != exclude and fields[0] != "Z":
                return True
    return False


@contextlib.contextmanager
def local_ray_head(num_cpus: int = 2, timeout: float = 120.0) -> Iterator[RayHead]:
    """A Ray head on this machine for tests, benchmarks and laptops (``num_cpus`` task slots).

    ``ray start --head --block`` in its own process group, every port it listens on picked free
    (so several heads can share a machine), stopped by signalling that group only: never
    ``ray stop``, which ends every Ray process on the machine. Ray advertises the machine's
    own address even when asked for 127.0.0.1; traffic stays on this host. Token
    authentication is on, with a token (one a process) in this process's environment while
    the head runs.
    """
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: unix socket paths
    port = _free_port()
    ray_cli = Path(sys.executable).with_name("ray")
    cmd = [
        str(ray_cli) if ray_cli.exists() else "ray",
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={num_cpus}",
        "--include-dashboard=false",
        f"--dashboard-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]
    log = open(temp / "head.log", "wb")  # noqa: SIM115 - closed below
    # token authentication; drivers started from here (Dagster step processes included)
    # inherit it through the environment, restored on exit. One token a process: Ray caches
    # the token it first read, so a later head in the same process reuses it.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _process_token()}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while not (temp / "ray_current_cluster").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (temp / "head.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the Ray head did not start ({' '.join(cmd)}):\n{tail}")
            time.sleep(0.2)
        yield RayHead(f"127.0.0.1:{port}", temp)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the daemons exit gracefully on SIGTERM
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _group_alive(proc.pid, exclude=proc.pid):
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # `ray start --block` itself, and stragglers
        proc.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
