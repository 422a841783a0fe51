"""A home as the stages use it: a local folder as is, or an ``s3://`` home through a working copy.

Stage functions read and write local paths (:class:`~corpuslab.layout.Layout`), whatever the
home. For an object-store home, :meth:`Home.staged` brackets one step: the step's declared
inputs (:func:`corpuslab.stages.io.stage_io`) are pulled into the working copy, only the files
whose objects differ from the local copy (:class:`corpuslab.sync.Mirror`); the step runs on
local files; its declared outputs are pushed after it succeeds, each object appearing only
complete, commit markers last. A step that fails pushes nothing: its Dagster materialization
is not recorded, so it is requested again, and downstream steps elsewhere never see its files.
Training pushes each checkpoint as it completes (:mod:`corpuslab.training.store`), so a killed
run resumes from the store on another machine, which pulls the run folder first.

The working copy is shared by this machine's steps (``<cache>/s3/<bucket>/<prefix>/work``), or,
with ``per_step``, private to each step and deleted after it, as on a stateless worker: every
step then starts from the store alone, which is also how the declared inputs are tested.

Why a working copy rather than reading ``s3://`` in place: every stage, DeepSpeed, fastText,
the tokenizers library and dbt-duckdb keep their local-file code paths (DuckDB's httpfs would
be a download at run time); memory-mapped token files need a local file anyway. The Dagster
instance and MLflow's tracking store are not files of the home: they stay on this machine
(:attr:`Layout.machine`) or on their own servers; MLflow's artifacts go to the home's store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from corpuslab.ingest.storage import S3Options
from corpuslab.layout import Layout, home_location
from corpuslab.stages.io import StageIO
from corpuslab.sync import Mirror, Transfer

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Home:
    """A home and how this machine works on it (a local folder, or a working copy of S3)."""

    def __init__(
        self, layout: Layout, options: S3Options | None = None, per_step: bool = False
    ) -> None:
        self.layout = layout
        self.options = options or S3Options()
        self.per_step = per_step

    @classmethod
    def open(
        cls,
        location: str | Path | None = None,
        cache: Path | None = None,
        options: S3Options | None = None,
        per_step: bool = False,
    ) -> Home:
        """The home at ``location`` (default ``$CORPUSLAB_HOME``), its working copy under
        ``cache`` (default ``$CORPUSLAB_CACHE``)."""
        layout = Layout.for_location(location or home_location(), cache)
        return cls(layout, options, per_step)

    @property
    def remote(self) -> str | None:
        return self.layout.remote

    def mirror(self, layout: Layout | None = None) -> Mirror:
        return Mirror.for_layout(layout or self.layout, self.options)

    def pull(self, specs: Iterable[str]) -> Transfer:
        """Bring ``specs`` into the shared working copy (nothing to do for a local home)."""
        if self.remote is None:
            return Transfer()
        return self.mirror().pull(specs)

    def push(self, specs: Sequence[str], last: Sequence[str] = ()) -> Transfer:
        """Send ``specs`` of the shared working copy to the store (nothing for a local home)."""
        if self.remote is None:
            return Transfer()
        return self.mirror().push(specs, last)

    @contextlib.contextmanager
    def _step_layout(self) -> Iterator[Layout]:
        if not self.per_step:
            yield self.layout
            return
        steps = self.layout.home.parent / "steps"
        steps.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().replace("-", "_")
        for left in steps.iterdir():  # this host's copies of steps whose process was killed
            owner, _, rest = left.name.partition("-")
            pid = rest.split("-", 1)[0]
            if owner == host and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(left, ignore_errors=True)
        root = Path(tempfile.mkdtemp(prefix=f"{host}-{os.getpid()}-", dir=steps))
        try:
            yield dataclasses.replace(self.layout, home=root / "work")
        finally:
            shutil.rmtree(root, ignore_errors=True)

    @contextlib.contextmanager
    def staged(self, io: StageIO, name: str = "step") -> Iterator[Layout]:
        """Run a step on local files: ``io.inputs`` pulled first, ``io.outputs`` pushed after.

        Yields the layout the step must use (the home itself when it is local). Nothing is
        pushed when the step raises.
        """
        if self.remote is None:
            yield self.layout
            return
        with self._step_layout() as layout:
            mirror = self.mirror(layout)
            got = mirror.pull(io.inputs)
            log.info("%s: %s from %s", name, got.describe("pulled"), self.remote)
            yield layout
            sent = mirror.push(io.outputs, last=io.last)
            log.info("%s: %s to %s", name, sent.describe("pushed"), self.remote)
