"""Sensors: a shard partition for every new raw file of a source."""

import dagster as dg

from assets.partitions import shard_partitions
from corpuslab.declarations import Experiment
from corpuslab.layout import Layout
from corpuslab.stages.corpus import source_shards
from resources.home import CorpuslabHome
from resources.storage import StorageResource


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


def shard_sensor(exp: Experiment) -> dg.SensorDefinition:
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
