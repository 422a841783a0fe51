"""Resources, chosen per environment from one dict so the same assets run locally and at scale."""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject

from corpuslab.layout import Layout, default_home
from resources.launcher import TrainingLauncher
from resources.storage import StorageResource

REPO_ROOT = Path(__file__).resolve().parent.parent
DBT_DIR = REPO_ROOT / "dbt"
# the dbt of this interpreter's environment, so an un-activated virtualenv still finds it
DBT_EXE = str(Path(sys.executable).parent / "dbt")


class CorpuslabHome(dg.ConfigurableResource):
    """The home folder under which every stage writes (a local path; S3 comes with storage)."""

    home: str

    def layout(self) -> Layout:
        return Layout(Path(self.home))


class MlflowTracking(dg.ConfigurableResource):
    """Where MLflow runs go: a local SQLite store by default, a tracking server at scale."""

    tracking_uri: str
    artifact_root: str
    experiment_name: str = "corpuslab"

    def experiment_id(self) -> str:
        """The experiment's id, created with the configured artifact root on first use."""
        import mlflow

        client = mlflow.MlflowClient(self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(
                self.experiment_name, artifact_location=self.artifact_root
            )
        except mlflow.exceptions.MlflowException:  # created concurrently
            return client.get_experiment_by_name(self.experiment_name).experiment_id  # type: ignore[union-attr]

    def client(self) -> Any:
        import mlflow

        return mlflow.MlflowClient(self.tracking_uri)


@cache
def dbt_project() -> DbtProject:
    """The dbt-duckdb project, its manifest re-parsed when a dbt file is newer (once a process).

    Our own check replaces ``prepare_if_dev`` so that it also runs outside ``dagster dev`` (a
    clean checkout has no manifest) and uses this environment's dbt even when it is not on PATH.
    """
    project = DbtProject(project_dir=DBT_DIR, profiles_dir=DBT_DIR)
    sources = [DBT_DIR / "dbt_project.yml", *DBT_DIR.glob("models/**/*"), *DBT_DIR.glob("macros/*")]
    manifest = Path(project.manifest_path)
    if not manifest.exists() or manifest.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        DbtCliResource(project_dir=project, profiles_dir=str(DBT_DIR), dbt_executable=DBT_EXE).cli(
            ["parse", "--quiet"], target_path=Path("target")
        ).wait()
    return project


def local_resources(home: Path | None = None) -> dict[str, Any]:
    """Embedded defaults: everything under one home folder on this machine."""
    layout = Layout(home or default_home())
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or layout.mlflow_uri
    return {
        "home": CorpuslabHome(home=str(layout.home)),
        "mlflow": MlflowTracking(
            tracking_uri=tracking, artifact_root=layout.mlflow_artifacts.as_uri()
        ),
        "launcher": TrainingLauncher(mode="local"),
        "storage": StorageResource(),  # S3 settings from the standard AWS environment variables
        "dbt": DbtCliResource(
            project_dir=dbt_project(), profiles_dir=str(DBT_DIR), dbt_executable=DBT_EXE
        ),
    }


RESOURCES_BY_ENV = {"local": local_resources}


def resources_for_env(env: str | None = None, home: Path | None = None) -> dict[str, Any]:
    """Resources for ``$CORPUSLAB_ENV`` (default ``local``)."""
    env = env or os.environ.get("CORPUSLAB_ENV", "local")
    if env not in RESOURCES_BY_ENV:
        raise ValueError(f"CORPUSLAB_ENV={env!r} unknown; allowed: {', '.join(RESOURCES_BY_ENV)}")
    return RESOURCES_BY_ENV[env](home)
