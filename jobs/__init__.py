"""Jobs, schedules and sensors, and the one function that assembles the Definitions."""

from collections import defaultdict
from pathlib import Path

import dagster as dg

from assets.dbt import build_dbt_assets
from assets.factory import build_assets
from assets.partitions import shard_partitions
from assets.stages import source_shards
from corpuslab.config import Experiment, load_experiment
from corpuslab.layout import Layout
from resources import CorpuslabHome, resources_for_env
from resources.storage import StorageResource


def keys_by_stage(assets: list[dg.AssetsDefinition]) -> dict[str, list[dg.AssetKey]]:
    out: dict[str, list[dg.AssetKey]] = defaultdict(list)
    for a in assets:
        for key in a.keys:
            out[key.path[0]].append(key)
    return dict(out)


def shard_requests(
    exp: Experiment,
    layout: Layout,
    instance: dg.DagsterInstance,
    storage: StorageResource | None = None,
) -> dict[str, list[str]]:
    """New shard keys per source: raw files present on storage but not yet partitions."""
    new: dict[str, list[str]] = {}
    for source in exp.sources:
        pdef = shard_partitions(source)
        try:
            found = source_shards(
                exp, layout, source, vars((storage or StorageResource()).s3_options())
            )
        except ValueError:
            continue  # a missing folder is reported by the corpus asset when it runs
        known = set(instance.get_dynamic_partitions(pdef.name))
        missing = sorted(set(found) - known)
        if missing:
            new[source] = missing
    return new


def build_shard_sensor(exp: Experiment) -> dg.SensorDefinition:
    @dg.sensor(
        name="shard_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Adds a shard partition per new raw file and materializes its corpus shard.",
        asset_selection=dg.AssetSelection.groups("corpus"),
    )
    def _sensor(
        context: dg.SensorEvaluationContext, home: CorpuslabHome, storage: StorageResource
    ) -> dg.SensorResult:
        new = shard_requests(exp, home.layout(), context.instance, storage)
        return dg.SensorResult(
            dynamic_partitions_requests=[
                shard_partitions(s).build_add_request(keys) for s, keys in new.items()
            ],
            run_requests=[
                dg.RunRequest(asset_selection=[dg.AssetKey(["corpus", s])], partition_key=k)
                for s, keys in new.items()
                for k in keys
            ],
        )

    return _sensor


def build_definitions(experiments: Path | None = None, home: Path | None = None) -> dg.Definitions:
    """Definitions for the declared experiment (``$CORPUSLAB_EXPERIMENTS`` or ``experiments/``)."""
    exp = load_experiment(experiments)
    assets = build_assets(exp)
    stats = build_dbt_assets(keys_by_stage(assets))
    all_assets = [*assets, stats]
    everything_job = dg.define_asset_job(
        "stale_unpartitioned_job",
        selection=dg.AssetSelection.all()
        - dg.AssetSelection.assets(
            *[k for a in assets if a.partitions_def is not None for k in a.keys]
        ),
        description="Unpartitioned stages: dedup, quality, mixtures, training, eval, stats.",
    )

    @dg.schedule(
        name="nightly_stale_schedule",
        job=everything_job,
        cron_schedule="0 3 * * *",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Nightly: rebuild the unpartitioned stages that are stale or missing, only.",
    )
    def nightly(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        return dg.RunRequest(stale_assets_only=True)

    jobs = [everything_job]
    for source in exp.sources:
        jobs.append(
            dg.define_asset_job(
                f"shards_{source}_job",
                selection=dg.AssetSelection.assets(
                    *[
                        k
                        for a in assets
                        if a.partitions_def == shard_partitions(source)
                        for k in a.keys
                    ]
                ),
                partitions_def=shard_partitions(source),
                description=f"Per-shard stages of source '{source}' (backfill over its shards).",
            )
        )
    return dg.Definitions(
        assets=all_assets,
        asset_checks=[],
        jobs=jobs,
        schedules=[nightly],
        sensors=[build_shard_sensor(exp)],
        resources=resources_for_env(home=home),
    )
