"""MLflow bookkeeping shared by the stages and the command line."""

from __future__ import annotations

from typing import Any


def experiment_id(client: Any, name: str, artifact_root: str | None = None) -> str:
    """The id of MLflow experiment ``name``, created (with ``artifact_root``) on first use."""
    import mlflow

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root)
    except mlflow.exceptions.MlflowException:  # created concurrently
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
