"""Sensors: a shard partition for every new raw file of a source."""

from dataclasses import dataclass, field

import dagster as dg

from assets.partitions import shard_partitions
from corpuslab.declarations import Experiment
from corpuslab.layout import Layout
from corpuslab.stages.corpus import source_shards
from resources.home import CorpuslabHome
from resources.storage import StorageResource


@dataclass
class Discovery:
    """New shard keys per source, and what could not be looked at (each naming its source)."""

    new: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # a source that could not be listed
    skipped: list[str] = field(default_factory=list)  # files left out (names not UTF-8)


def discover_shards(
    exp: Experiment,
    layout: Layout,
    instance: dg.DagsterInstance,
    storage: StorageResource | None = None,
) -> Discovery:
    """Raw files present on storage but not yet partitions, source by source.

    A source that cannot be listed (missing folder, unreachable bucket, any error) is reported
    in :attr:`Discovery.errors` and the other sources are still discovered.
    """
    found = Discovery()
    options = vars((storage or StorageResource()).s3_options())
    for source in exp.sources:
        pdef = shard_partitions(source)
        skipped: list[str] = []
        try:
            shards = source_shards(exp, layout, source, options, skipped=skipped)
        except Exception as exc:  # one source's failure must not hide the others' new shards
            found.errors.append(f"source {source!r}: {type(exc).__name__}: {exc}")
            continue
        found.skipped += [f"source {source!r}: {name}" for name in skipped]
        assert pdef.name is not None, "shard_partitions names each source's definition"
        known = set(instance.get_dynamic_partitions(pdef.name))
        missing = sorted(set(shards) - known)
        if missing:
            found.new[source] = missing
    return found


def shard_requests(
    exp: Experiment,
    layout: Layout,
    instance: dg.DagsterInstance,
    storage: StorageResource | None = None,
) -> dict[str, list[str]]:
    """New shard keys per source (see :func:`discover_shards` for what could not be listed)."""
    return discover_shards(exp, layout, instance, storage).new


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
    ) -> dg.SensorResult | dg.SkipReason:
        found = discover_shards(exp, home.layout(), context.instance, storage)
        for error in found.errors:
            context.log.error(f"shard discovery failed for {error}")
        for name in found.skipped:
            context.log.warning(f"shard discovery skipped {name}")
        if not found.new:
            problems = found.errors + [f"skipped {name}" for name in found.skipped]
            return dg.SkipReason("no new shards" + (f"; {'; '.join(problems)}" if problems else ""))
        return dg.SensorResult(
            dynamic_partitions_requests=[
                shard_partitions(s).build_add_request(keys) for s, keys in found.new.items()
            ],
            run_requests=[
                dg.RunRequest(asset_selection=[dg.AssetKey(["corpus", s])], partition_key=k)
                for s, keys in found.new.items()
                for k in keys
            ],
        )

    return _sensor
