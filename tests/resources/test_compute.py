"""The compute resource: a recipe through Dagster on a real local Ray head equals the local run.

One Ray head (``ray start --head`` on 127.0.0.1, 2 CPUs) for the module, stopped at the end;
one recipe of the tiny experiment (2 sources x 2 shards, plus the positives' source) and one
mixture, so the test stays small: corpus, pool, dedup signatures, filtered and encoding work
run as Ray tasks, and every output file's digest matches the run in local processes.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from assets.common import assets_of
from assets.partitions import shard_partitions
from corpuslab.compute import LocalCompute, RayCompute, RayHead, local_ray_head
from corpuslab.declarations import load_experiment
from corpuslab.ingest.readers import CorpusError
from corpuslab.layout import Layout
from definitions import build
from jobs.sensors import shard_requests
from resources.compute import ComputeResource
from tests.conftest import TINY_EXPERIMENT, write_experiment

ONE_RECIPE = {
    "sources.yaml": """
        sources:
          reference: {path: raw/reference}
          docstrings: {path: raw/docstrings}
          code: {path: raw/code}
    """,
    "recipes.yaml": TINY_EXPERIMENT["recipes.yaml"].split("          strict:")[0],
    "mixtures.yaml": TINY_EXPERIMENT["mixtures.yaml"].split("          dro:")[0],
}


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    with local_ray_head(num_cpus=2) as head:
        yield head
    import ray

    ray.shutdown()  # the test process was a driver of the head that just stopped


def materialize_recipe(exp_dir: Path, home: Path, dagster_dir: Path) -> None:
    """Every asset of the one-recipe experiment through Dagster, shard by shard, in order."""
    dagster_dir.mkdir()
    with dg.instance_for_test(temp_dir=str(dagster_dir)) as instance:
        defs = build(exp_dir, home=home)
        shards = shard_requests(load_experiment(exp_dir), Layout(home), instance)
        for source, keys in shards.items():
            instance.add_dynamic_partitions(shard_partitions(source).name, keys)

        def run(keys: list[list[str]], partition: str | None = None) -> None:
            dg.materialize(
                assets=assets_of(defs),
                selection=[dg.AssetKey(k) for k in keys],
                partition_key=partition,
                instance=instance,
                resources=defs.resources,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )

        for source, keys in shards.items():
            pooled = [["pool", "lenient", source]] if source != "reference" else []
            for key in keys:
                run([["corpus", source], *pooled], key)
        for source in ("docstrings", "code"):  # the first decides every shard as one batch
            for key in shards[source]:
                run([["dedup", "lenient", source]], key)
        run([["quality_model", "lenient"]])
        for source in ("docstrings", "code"):
            for key in shards[source]:
                run([["filtered", "lenient", source]], key)
        run([["tokenizer", "small"], ["mixture", "small"], ["tokens", "small"]])


def output_digests(home: Path) -> dict[str, str]:
    """SHA-256 of every file the stages wrote (the Dagster instance aside); summaries that
    name their own path have the home folder replaced, since the two runs' homes differ."""
    prefix = str(home).encode()
    return {
        str(p.relative_to(home)): hashlib.sha256(
            p.read_bytes().replace(prefix, b"$HOME")
        ).hexdigest()
        for p in sorted(home.rglob("*"))
        if p.is_file() and "dagster" not in p.relative_to(home).parts
    }


def test_recipe_on_ray_matches_local_processes_bit_for_bit(
    ray_head: RayHead, tiny_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same files, same bytes, whether the per-shard work ran locally or as Ray tasks."""
    exp_dir = write_experiment(tmp_path / "experiments", ONE_RECIPE)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    homes = {}
    for mode in ("local", "ray"):
        home = tmp_path / mode
        shutil.copytree(tiny_raw, home / "raw")
        monkeypatch.setenv("CORPUSLAB_HOME", str(home))
        if mode == "ray":
            monkeypatch.setenv("RAY_ADDRESS", ray_head.address)  # the environment picks Ray
        else:
            monkeypatch.delenv("RAY_ADDRESS", raising=False)
        materialize_recipe(exp_dir, home, tmp_path / f"dagster-{mode}")
        homes[mode] = output_digests(home)
    local, ray = homes["local"], homes["ray"]
    assert local == ray
    assert sum(p.startswith("data/filtered/") for p in local) == 4  # 2 sources x 2 shards
    assert any(p.startswith("data/encoded/") for p in local)
    assert any("signatures" in p for p in local)
    # the work really ran as Ray tasks: 3 sources x 2 shards, then 2 x 2 of everything per-shard
    ran = ray_head.task_names()
    assert ran["materialize_corpus_shard"] == 6
    assert ran["materialize_pool_shard"] == ran["materialize_filtered_shard"] == 4
    assert ran["shard_dedup_inputs"] == 4 and ran["encode_shard_file"] == 4


def test_a_failing_ray_task_raises_the_original_error(ray_head: RayHead, tmp_path: Path) -> None:
    """A missing source folder's CorpusError comes back through Ray as a CorpusError."""
    from corpuslab.ingest.readers import list_shards

    with pytest.raises(CorpusError, match="does not exist"):
        RayCompute(ray_head.address).run(list_shards, tmp_path / "missing", "jsonl")


def test_local_compute_maps_in_order_and_ray_needs_an_address() -> None:
    assert LocalCompute(workers=2).map(len, ["a", "bbb", "cc"]) == [1, 3, 2]
    assert LocalCompute().run(divmod, 7, 2) == (3, 1)
    with pytest.raises(ValueError, match="workers"):
        LocalCompute(workers=0)
    with pytest.raises(ValueError, match="address"):
        ComputeResource(mode="ray").executor()
    assert isinstance(ComputeResource().executor(), LocalCompute)
