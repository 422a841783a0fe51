"""The shard sensor: each new raw file becomes a shard partition and a run of its corpus shard.

Evaluated as the daemon evaluates it (``evaluate_tick`` on the code location's definitions,
with a real SQLite instance); the partitions it requests are added the way the daemon adds
them, and the run it requests is then executed for real.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.parquet as pq

from assets.common import assets_of
from corpuslab.layout import Layout
from definitions import build
from tests.conftest import write_experiment


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.SensorResult:
    """One evaluation as the code server runs it: the repository's resources, a real instance."""
    repo = defs.get_repository_def()
    sensor = repo.get_sensor_def("shard_sensor")
    resources = {
        k: v
        for k, v in repo.get_top_level_resources().items()
        if k in sensor.required_resource_keys
    }
    context = dg.build_sensor_context(
        instance=instance, instance_ref=instance.get_ref(), repository_def=repo, resources=resources
    )
    return sensor.evaluate_tick(context)


def _requested(result: Any) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """(partition keys added per partitions definition, (asset, partition) of each run)."""
    added = {
        r.partitions_def_name: list(r.partition_keys)
        for r in result.dynamic_partitions_requests
        if isinstance(r, dg.AddDynamicPartitionsRequest)
    }
    runs = [
        (k.to_user_string(), r.partition_key)
        for r in result.run_requests
        for k in r.asset_selection or []
    ]
    return added, runs


def test_a_new_raw_file_yields_a_partition_and_a_run_of_its_corpus_shard(
    tmp_path: Path, tiny_raw: Path
) -> None:
    home = tmp_path / "home"
    for source in ("docstrings", "code"):  # the other declared sources have no folder yet
        shutil.copytree(tiny_raw / source, home / "raw" / source)
    defs = build(write_experiment(tmp_path / "experiments"), home=home)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        first = _tick(defs, instance)
        shards = ["part-00000", "part-00001"]
        assert _requested(first) == (
            {"shards_docstrings": shards, "shards_code": shards},
            [("corpus/docstrings", s) for s in shards] + [("corpus/code", s) for s in shards],
        )
        for request in first.dynamic_partitions_requests:  # what the daemon does with them
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        assert _requested(_tick(defs, instance)) == ({}, [])  # nothing new: nothing requested

        new = home / "raw" / "docstrings" / "part-00002.jsonl.gz"
        shutil.copy(tiny_raw / "docstrings" / "part-00001.jsonl.gz", new)
        third = _tick(defs, instance)
        assert _requested(third) == (
            {"shards_docstrings": ["part-00002"]},
            [("corpus/docstrings", "part-00002")],
        )
        for request in third.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        (run,) = third.run_requests
        result = dg.materialize(
            assets=assets_of(defs),
            selection=run.asset_selection,
            partition_key=run.partition_key,
            instance=instance,
            resources=defs.resources,
        )
        assert result.success
        written = pq.read_table(Layout(home).corpus_dir("docstrings") / "part-00002.parquet")
        with gzip.open(new, "rt", encoding="utf-8") as fh:
            raw_ids = [json.loads(line)["id"] for line in fh]
        assert written.column("id").to_pylist() == raw_ids and len(raw_ids) == 30
