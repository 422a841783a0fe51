"""Schedules: a nightly rebuild of what is stale."""

from typing import Any

import dagster as dg


def nightly_schedule(job: Any) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="nightly_stale_schedule",
        job=job,
        cron_schedule="0 3 * * *",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Nightly: rebuild the unpartitioned stages that are stale or missing, only.",
    )
    def _nightly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return dg.RunRequest(stale_assets_only=True)

    return _nightly
