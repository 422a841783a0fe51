"""``mlflow``: where runs are recorded (a local SQLite store, or a tracking server at scale)."""

from typing import Any

import dagster as dg

from corpuslab import tracking


class MlflowTracking(dg.ConfigurableResource):
    """Where MLflow runs go: a local SQLite store by default, a tracking server at scale."""

    tracking_uri: str
    artifact_root: str | None = None
    experiment_name: str = "corpuslab"

    def client(self) -> Any:
        import mlflow

        return mlflow.MlflowClient(self.tracking_uri)

    def experiment_id(self) -> str:
        """The experiment's id, created with the configured artifact root on first use."""
        return tracking.experiment_id(self.client(), self.experiment_name, self.artifact_root)
