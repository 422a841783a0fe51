"""Step metrics into an existing MLflow run, off the training step's critical path."""

from __future__ import annotations

import queue
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


class MlflowLogger:
    """Logs step metrics into an existing MLflow run from a background thread.

    A no-op without a run id. Logging to a database takes milliseconds per batch; the queue
    keeps that off the training step. :meth:`close` drains the queue and re-raises the first
    error the thread met.
    """

    def __init__(self, tracking_uri: str | None, run_id: str | None) -> None:
        self.run_id = run_id
        self.client = None
        self._queue: queue.Queue[tuple[int, dict[str, float]] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if run_id:
            from mlflow.tracking import MlflowClient  # heavy import, only when tracking

            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.client.get_run(run_id)  # fail at start, not after an hour, if it is missing
            self._thread = threading.Thread(
                target=self._work, args=(self.client, run_id), name="mlflow-logger", daemon=True
            )
            self._thread.start()

    def _work(self, client: MlflowClient, run_id: str) -> None:
        from mlflow.entities import Metric

        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            step, metrics = item
            now = int(time.time() * 1000)
            batch = [Metric(key=k, value=v, timestamp=now, step=step) for k, v in metrics.items()]
            try:
                client.log_batch(run_id, metrics=batch)
            except BaseException as exc:  # surfaced by close()
                self._error = exc

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._thread is not None:
            self._queue.put((step, {k: float(v) for k, v in metrics.items()}))

    def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise RuntimeError(f"MLflow logging failed: {self._error}") from self._error
