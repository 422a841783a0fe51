"""Jobs, sensors and the automation policy over the asset graph (and nothing else)."""

import dagster as dg

from corpuslab.declarations import Experiment
from jobs.automation import automation_sensor
from jobs.jobs import shard_jobs, unpartitioned_job
from jobs.sensors import shard_sensor


def defs(exp: Experiment, *domains: dg.Definitions) -> dg.Definitions:
    """The jobs and sensors over the assets of ``domains`` (the automation sensor included)."""
    assets = [a for d in domains for a in (d.assets or []) if isinstance(a, dg.AssetsDefinition)]
    return dg.Definitions(
        jobs=[unpartitioned_job(assets), *shard_jobs(exp, assets)],
        sensors=[shard_sensor(exp), automation_sensor()],
    )
