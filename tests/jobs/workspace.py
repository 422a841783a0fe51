"""A Dagster workspace as the daemons see it, over a copy of the session's materialized instance.

The schedule and backfill tests drive Dagster's own daemon code (the scheduler's tick, the
backfill daemon's iteration) against the code location built from a declarations folder, loaded
in this process, and an instance that is a copy of ``materialized``'s: what they submit never
touches the shared one.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

REPO = Path(__file__).resolve().parents[2]
LOCATION = "corpuslab"
# runs a daemon submits wait in the queue: nothing dequeues them, the tests read what was asked
QUEUED = {
    "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
}


@contextmanager
def copied_instance(
    instance: dg.DagsterInstance, dest: Path, overrides: dict[str, Any] | None = None
) -> Iterator[dg.DagsterInstance]:
    """A new instance over a copy of ``instance``'s storage (runs, events, partitions)."""
    shutil.copytree(instance.root_directory, dest)
    with dg.instance_for_test(temp_dir=str(dest), overrides=overrides or QUEUED) as copy:
        yield copy


@contextmanager
def workspace(
    instance: dg.DagsterInstance, experiments: Path, home: Path, folder: Path
) -> Iterator[WorkspaceProcessContext]:
    """The code location ``definitions.build(experiments, home)``, loaded in this process."""
    folder.mkdir(parents=True, exist_ok=True)
    module = folder / "location.py"
    module.write_text(
        textwrap.dedent(f"""
            from pathlib import Path

            from definitions import build

            defs = build(Path({str(experiments)!r}), home=Path({str(home)!r}))
        """)
    )
    origin = InProcessCodeLocationOrigin(
        loadable_target_origin=LoadableTargetOrigin(
            python_file=str(module), attribute="defs", working_directory=str(REPO)
        ),
        location_name=LOCATION,
    )
    with create_test_daemon_workspace_context(
        InProcessWorkspaceLoadTarget(origin), instance
    ) as context:
        location = context.create_request_context().get_code_location(LOCATION)
        assert location is not None
        yield context


def repository(context: WorkspaceProcessContext) -> Any:
    """The code location's one repository (a ``RemoteRepository``)."""
    location = context.create_request_context().get_code_location(LOCATION)
    (repo,) = location.get_repositories().values()
    return repo
