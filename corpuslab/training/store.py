"""A training run and an ``s3://`` home: what it reads pulled at start, checkpoints pushed as
they complete, so a killed run resumes from the store on another machine.

The run's spec names the home (:class:`~corpuslab.training.runspec.StoreSpec`); the training
process needs nothing else (a Kubernetes pod with an empty scratch volume works the same as a
local launch, which Dagster already staged). Rank 0 pushes its run folder in a background
thread after each checkpoint (training goes on meanwhile), ``checkpoints/latest`` after the
checkpoint it names; the next save waits for that push, so at most one is in flight and a push
never sees a checkpoint being written or rotated out. The last push, after the final weights,
sends ``summary.json`` last. This is Composer's and Hugging Face Trainer's practice (upload each
saved checkpoint from rank 0, asynchronously), with ``latest`` as the commit point.

Only rank 0's files go up: ranks on other machines write their optimizer partitions to their
own disks, so a multi-machine run needs a shared checkpoint folder (the local multi-node
launch shares this machine's).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from corpuslab.layout import Layout
from corpuslab.stages.io import StageIO, run_folder
from corpuslab.sync import Mirror, Transfer
from corpuslab.training.runspec import RunSpec

log = logging.getLogger(__name__)


def _layout(spec: RunSpec) -> Layout:
    assert spec.store is not None
    return Layout(Path(spec.store.root), remote=spec.store.remote)


def run_io(spec: RunSpec) -> StageIO:
    """What the run reads (token file, parent or reference run, its own folder) and writes."""
    layout = _layout(spec)
    folder = run_folder(layout, Path(spec.out_dir))
    parents = [Path(spec.init_from.run_dir)] if spec.init_from else []
    parents += [Path(spec.doremi.reference_run_dir)] if spec.doremi else []
    inputs = [layout.relative(Path(spec.tokens_dir)) + "/"]
    for parent in parents:
        inputs += [layout.relative(parent / name) for name in ("model.pt", "model_config.json")]
    return StageIO((*inputs, *folder.inputs), folder.outputs, folder.last)


def mirror(spec: RunSpec) -> Mirror:
    """The mirror of the run's home (credentials and endpoint from the AWS environment)."""
    return Mirror.for_layout(_layout(spec))


def pull_inputs(spec: RunSpec) -> Transfer:
    """Bring what the run reads into the working copy (unchanged files are not fetched)."""
    return mirror(spec).pull(run_io(spec).inputs)


def push_run(spec: RunSpec) -> Transfer:
    """Make the store's copy of the run folder this one (markers last, removed files deleted)."""
    io = run_io(spec)
    return mirror(spec).push(io.outputs, io.last)


class CheckpointUploader:
    """Rank 0's pushes of the run folder, one at a time, in a background thread."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.pushes = 0

    def _work(self) -> None:
        try:
            sent = push_run(self.spec)
            log.info("run %s: %s", self.spec.name, sent.describe("pushed"))
        except BaseException as exc:  # surfaced by wait()
            self._error = exc

    def submit(self) -> None:
        """Push the run folder as it is now (after waiting for the previous push)."""
        self.wait()
        self.pushes += 1
        self._thread = threading.Thread(target=self._work, name="checkpoint-upload", daemon=True)
        self._thread.start()

    def wait(self, raise_errors: bool = True) -> None:
        """Wait for the push in flight; re-raise its error (the run must not end as if saved)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None and raise_errors:
            error, self._error = self._error, None
            raise RuntimeError(
                f"pushing run {self.spec.name} to the store failed: {error}"
            ) from error
