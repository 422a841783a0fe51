"""Jobs, schedules and sensors over the asset graph (and nothing else)."""

import dagster as dg

from corpuslab.declarations import Experiment
from jobs.jobs import shard_jobs, unpartitioned_job
from jobs.schedules import nightly_schedule
from jobs.sensors import shard_sensor


def defs(exp: Experiment, *domains: dg.Definitions) -> dg.Definitions:
    """The jobs, schedule and sensor over the assets of ``domains``."""
    assets = [a for d in domains for a in (d.assets or []) if isinstance(a, dg.AssetsDefinition)]
    everything = unpartitioned_job(assets)
    return dg.Definitions(
        jobs=[everything, *shard_jobs(exp, assets)],
        schedules=[nightly_schedule(everything)],
        sensors=[shard_sensor(exp)],
    )
