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

import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
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


LOCAL = LocalCompute()
