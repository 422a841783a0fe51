"""The nightly schedule, ticked by Dagster's scheduler: it requests what is stale, and only that.

The tick runs Dagster's own scheduler code (``launch_scheduled_runs``) over the materialized
tiny home: with the declarations unchanged nothing is stale and the tick submits no run; after
one recipe's dedup threshold changes, the one run it submits selects exactly the stale asset.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import dagster as dg
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.test_utils import freeze_time
from dagster._scheduler.scheduler import launch_scheduled_runs

from tests.conftest import STRICT_DEDUP, Materialized, edit_experiment
from tests.jobs.workspace import copied_instance, repository, workspace

SCHEDULE = "nightly_stale_schedule"
DAY_ONE = datetime.datetime(2030, 1, 1, 2, 58, tzinfo=datetime.UTC)  # before the 03:00 tick


def _tick(
    instance: dg.DagsterInstance,
    experiments: Path,
    home: Path,
    now: datetime.datetime,
    folder: Path,
) -> None:
    """Start the schedule (once) and let the scheduler run every tick due by ``now``."""
    with workspace(instance, experiments, home, folder) as context:
        schedule = repository(context).get_schedule(SCHEDULE)
        if not instance.get_instigator_state(schedule.get_remote_origin_id(), schedule.selector_id):
            with freeze_time(DAY_ONE):
                instance.start_schedule(schedule)
        with freeze_time(now):
            list(launch_scheduled_runs(context, logging.getLogger("scheduler"), now, {}))


def test_nightly_schedule_requests_only_the_stale_assets(
    materialized: Materialized, tmp_path: Path
) -> None:
    home, exp_dir, instance, _ = materialized
    with copied_instance(instance, tmp_path / "dagster") as inst:
        before = {r.run_id for r in inst.get_runs()}
        _tick(inst, exp_dir, home, DAY_ONE + datetime.timedelta(minutes=5), tmp_path / "w1")
        assert {r.run_id for r in inst.get_runs()} == before  # nothing stale: no run

        edited = edit_experiment(
            exp_dir,
            tmp_path / "edited",
            "recipes.yaml",
            STRICT_DEDUP,
            STRICT_DEDUP.replace("threshold: 0.8", "threshold: 0.7"),
        )
        _tick(inst, edited, home, DAY_ONE + datetime.timedelta(days=1, minutes=5), tmp_path / "w2")
        (run,) = [r for r in inst.get_runs() if r.run_id not in before]
        assert run.job_name == "stale_unpartitioned_job"
        assert run.tags["dagster/schedule_name"] == SCHEDULE
        assert run.status == dg.DagsterRunStatus.QUEUED  # submitted; nothing dequeues it here
        # only the changed asset: its descendants turn stale once it has rebuilt (if at all)
        assert {k.to_user_string() for k in run.asset_selection or []} == {"dedup/strict"}

        with workspace(inst, edited, home, tmp_path / "w3") as context:
            schedule = repository(context).get_schedule(SCHEDULE)
            ticks = inst.get_ticks(schedule.get_remote_origin_id(), schedule.selector_id)
        # both ticks evaluated; the first found nothing stale, so it submitted no run
        quiet, submitted = sorted(ticks, key=lambda t: t.timestamp)
        assert quiet.status == submitted.status == TickStatus.SUCCESS
        assert quiet.run_ids == [] and submitted.run_ids == [run.run_id]
