"""Resources per environment, from one mapping: ``CORPUSLAB_ENV`` = ``local`` or ``cluster``.

``local`` (the default) keeps everything under one home on this machine: a SQLite MLflow
store, training as a local torchrun subprocess, per-shard work in the step's own process (or,
when ``RAY_ADDRESS`` is set, as Ray tasks on that cluster). The home may be an ``s3://`` prefix
(``CORPUSLAB_HOME=s3://bucket/prefix``): stages then work in a local working copy synchronized
around each step, MLflow's artifacts go under ``<home>/mlflow/artifacts`` (MLflow's S3 store;
``MLFLOW_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL`` for MinIO or moto), and the MLflow SQLite
store and Dagster instance stay on this machine (:attr:`Layout.machine`).
``CORPUSLAB_WORKING_COPY=per-step`` gives each step a fresh working copy (a stateless worker).

``cluster`` takes every setting from the environment (``dg.EnvVar``, resolved when a run
starts): an MLflow tracking server, training as a GPU pod through ``PipesK8sClient`` with the
home on a shared volume, S3 credentials from the standard AWS variables, per-shard work as Ray
tasks on the cluster at ``RAY_ADDRESS`` (whose image installs corpuslab). The Dagster instance
itself (SQLite locally, Postgres on a cluster) is ``$DAGSTER_HOME/dagster.yaml``:
``infra/dagster/local.yaml`` or ``infra/dagster/production.yaml``.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from corpuslab.layout import Layout, home_location
from resources.compute import ComputeResource
from resources.dbt import dbt_resource
from resources.home import CorpuslabHome
from resources.launcher import TrainingLauncher
from resources.storage import StorageResource
from resources.tracking import MlflowTracking

ENV_VAR = "CORPUSLAB_ENV"
RAY_ADDRESS_VAR = "RAY_ADDRESS"  # Ray's own variable: where ``ray.init()`` connects
WORKING_COPY_VAR = "CORPUSLAB_WORKING_COPY"  # an s3:// home's working copy: shared or per-step
WORKING_COPIES = ("shared", "per-step")


def per_step_working_copy() -> bool:
    """Whether ``$CORPUSLAB_WORKING_COPY`` asks each step for a fresh working copy."""
    value = os.environ.get(WORKING_COPY_VAR) or "shared"
    if value not in WORKING_COPIES:
        raise ValueError(
            f"{WORKING_COPY_VAR}={value!r} unknown; allowed: {', '.join(WORKING_COPIES)}"
        )
    return value == "per-step"


def local_compute() -> ComputeResource:
    """Local processes by default; Ray tasks when ``RAY_ADDRESS`` names a cluster."""
    address = os.environ.get(RAY_ADDRESS_VAR)
    return ComputeResource(mode="ray", address=address) if address else ComputeResource()


def local(home: Path | str | None = None) -> dict[str, Any]:
    """Embedded defaults: one home (a folder, or an s3:// prefix) used from this machine."""
    layout = Layout.for_location(home or home_location())
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or layout.mlflow_uri
    return {
        "home": CorpuslabHome(home=layout.location, per_step=per_step_working_copy()),
        "mlflow": MlflowTracking(tracking_uri=tracking, artifact_root=layout.mlflow_artifact_root),
        "launcher": TrainingLauncher(mode="local"),
        "compute": local_compute(),
        "storage": StorageResource(),  # S3 settings from the standard AWS environment variables
        "dbt": dbt_resource(),
    }


def cluster(home: Path | str | None = None) -> dict[str, Any]:
    """A cluster: tracking server, Kubernetes training pods, shared home, S3 (from the env)."""
    return {
        "home": CorpuslabHome(
            home=str(home) if home else dg.EnvVar("CORPUSLAB_HOME"),
            per_step=per_step_working_copy(),
        ),
        "mlflow": MlflowTracking(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI")),
        "launcher": TrainingLauncher(
            mode="k8s",
            image=dg.EnvVar("CORPUSLAB_IMAGE"),
            namespace=dg.EnvVar("CORPUSLAB_K8S_NAMESPACE"),
            home_volume_claim=dg.EnvVar("CORPUSLAB_HOME_PVC"),
            home_mount_path=dg.EnvVar("CORPUSLAB_HOME"),
        ),
        "compute": ComputeResource(mode="ray", address=dg.EnvVar(RAY_ADDRESS_VAR), ship_code=False),
        "storage": StorageResource(),
        "dbt": dbt_resource(),
    }


ENVIRONMENTS: dict[str, Callable[[Path | str | None], dict[str, Any]]] = {
    "local": local,
    "cluster": cluster,
}


def resources_for_env(env: str | None = None, home: Path | str | None = None) -> dict[str, Any]:
    """The resources of ``env`` (default ``$CORPUSLAB_ENV``, else ``local``)."""
    env = env or os.environ.get(ENV_VAR, "local")
    if env not in ENVIRONMENTS:
        raise ValueError(f"{ENV_VAR}={env!r} unknown; allowed: {', '.join(ENVIRONMENTS)}")
    return ENVIRONMENTS[env](home)


def defs(home: Path | str | None = None) -> dg.Definitions:
    return dg.Definitions(resources=resources_for_env(home=home))
