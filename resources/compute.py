"""``compute``: where per-shard work runs — this step's process (local) or Ray tasks on a cluster.

Assets call ``compute.run(stage_fn, ...)`` for one shard and stages call ``compute.map`` for
many (signatures, encoding); see :mod:`corpuslab.compute`. Dagster keeps its own per-shard
partitions, runs, checks and metadata: only the work inside a step moves to the cluster.

Why Ray tasks inside the asset rather than dagster-ray (0.4.8, read from its source): its
``ray_executor`` and ``PipesRayJobClient`` submit each step (or a script) as a Ray *job*
through the job-submission API, which needs the Ray dashboard (``ray[default]``), a Dagster
instance the cluster can reach and a Dagster process start per step, and they cannot fan a
global step's per-shard work (signatures, encoding) out from inside it; its ``LocalRay`` /
``RayResource`` manage a ``ray.init`` connection, which is what this resource does too, next
to a local mode. One ``compute.run`` per asset keeps the assets a few lines and Dagster's
per-shard lineage exactly as it was.
"""

from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

import dagster as dg
from pydantic import Field, PrivateAttr

from corpuslab.compute import CODE_ROOT, Compute, LocalCompute, RayCompute

T = TypeVar("T")
R = TypeVar("R")


class ComputeResource(dg.ConfigurableResource):
    """Runs stage functions locally (default) or as Ray tasks on the cluster at ``address``."""

    mode: Literal["local", "ray"] = Field(default="local", description="local or ray")
    address: str | None = Field(
        default=None, description="ray: the cluster, e.g. 127.0.0.1:6379, ray://head:10001, auto"
    )
    workers: int | None = Field(default=None, description="local: threads of map (default: cores)")
    num_cpus_per_task: float = Field(default=1.0, description="ray: CPUs each task reserves")
    ship_code: bool = Field(
        default=True,
        description="ray: put this checkout on the workers' PYTHONPATH (off when the cluster's "
        "image installs corpuslab)",
    )
    _compute: Compute | None = PrivateAttr(default=None)

    def executor(self) -> Compute:
        """The library's executor for these settings (created once a resource instance)."""
        if self._compute is None:
            if self.mode == "ray":
                if not self.address:
                    raise ValueError("compute resource: mode 'ray' needs an address (RAY_ADDRESS)")
                self._compute = RayCompute(
                    self.address,
                    num_cpus=self.num_cpus_per_task,
                    code_root=CODE_ROOT if self.ship_code else None,
                )
            else:
                self._compute = LocalCompute(self.workers)
        return self._compute

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Join the Ray cluster when a step starts, so a wrong address fails before any work."""
        compute = self.executor()
        if isinstance(compute, RayCompute):
            compute.connect()

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return self.executor().run(fn, *args, **kwargs)

    def map(self, fn: Callable[[Any], R], items: Iterable[Any], /) -> list[R]:
        return self.executor().map(fn, items)
