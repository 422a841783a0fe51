"""The tiny experiment with its home on S3 (moto's server on 127.0.0.1), through Dagster.

A subset of ``TINY_EXPERIMENT`` that still runs every kind of stage (corpus, pool, dedup,
quality model, filtered, tokenizer, mixture, tokens, a DeepSpeed run with checkpoints, its
evaluation, the dbt statistics) without its second recipe, DoReMi's two trainings, the entropy
mixture and the inheriting run, to stay near two minutes here; those stages' input lists are
checked in ``tests/corpuslab/stages/test_io.py``. Every step gets a fresh working copy
(``CORPUSLAB_WORKING_COPY=per-step``): it sees only what the store holds and what its declared
inputs bring, so a missing input or an unpushed output fails the run. The raw shards are
uploaded and the store read back with boto3, not with the code under test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import mlflow
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from assets.partitions import shard_partitions
from cli.materialize import materialize
from corpuslab.declarations import load_experiment
from corpuslab.layout import Layout
from definitions import build
from jobs.sensors import shard_requests
from tests.conftest import write_experiment
from tests.corpuslab.ingest.test_storage import S3Server, upload_tree

BUCKET = "homes"
PREFIX = "tiny"
SOURCES = ("reference", "docstrings", "code")
S3_TINY = {
    "sources.yaml": """
        sources:
          reference: {path: raw/reference}
          docstrings: {path: raw/docstrings}
          code: {path: raw/code}
    """,
    "recipes.yaml": """
        recipes:
          lenient:
            sources: [docstrings, code]
            steps:
              - gopher_quality: {min_words: 20, min_alpha_words_ratio: null, min_stop_words: null}
              - exact_dedup: {}
            dedup: {ngram: 5, num_perm: 64, threshold: 0.8}
            quality: {positive_source: reference, negative_sample: 60, keep_fraction: 0.9}
    """,
    "mixtures.yaml": """
        mixtures:
          small:
            recipe: lenient
            token_budget: 20000
            seq_len: 32
            heldout_fraction: 0.1
            tokenizer: {vocab_size: 512}
    """,
    "runs.yaml": """
        runs:
          smoke:
            mixture: small
            model: {n_layer: 1, n_head: 2, d_model: 32}
            deepspeed: zero2
            train: {steps: 8, micro_batch_size: 4, warmup_steps: 2, log_every: 2,
                    checkpoint_every: 4, lawa_k: 2}
            eval: {max_docs_per_domain: 5}
    """,
}


def _snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``root`` outside ``skip``: (size, mtime) by path."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in [*dirnames, *filenames]:
            st = (here / name).lstat()
            out[str((here / name).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _store(s3: S3Server) -> dict[str, int]:
    """Key below the home -> size, listed by boto3."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX)
    return {
        o["Key"][len(PREFIX) + 1 :]: o["Size"] for page in pages for o in page.get("Contents", [])
    }


def test_the_tiny_experiment_runs_with_its_home_on_s3(
    tmp_path: Path, tiny_raw: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Conservation holds on every shard, the store holds every stage's outputs (pools, dedup
    decisions, tokens, checkpoints, eval, stats, MLflow artifacts), and nothing was written
    locally outside the cache folder and the Dagster instance."""
    client = s3_server.client()
    client.create_bucket(Bucket=BUCKET)
    for source in SOURCES:
        upload_tree(client, tiny_raw / source, BUCKET, f"{PREFIX}/raw/{source}")
    home = f"s3://{BUCKET}/{PREFIX}"
    cache, dagster_dir = tmp_path / "cache", tmp_path / "dagster"
    for name, value in {
        "CORPUSLAB_HOME": home,
        "CORPUSLAB_CACHE": str(cache),
        "CORPUSLAB_WORKING_COPY": "per-step",
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,  # pyarrow, boto3 and MLflow's S3 store
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "DS_ACCELERATOR": "cpu",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exp_dir = write_experiment(tmp_path / "experiments", S3_TINY)
    dagster_dir.mkdir()
    before = _snapshot(tmp_path, {cache, dagster_dir})

    with dg.instance_for_test(temp_dir=str(dagster_dir)) as instance:
        exp = load_experiment(exp_dir)
        layout = Layout.from_env()
        shards = shard_requests(exp, layout, instance)  # listed from the store
        assert set(shards) == set(SOURCES) and all(len(k) == 2 for k in shards.values())
        for source, keys in shards.items():
            instance.add_dynamic_partitions(str(shard_partitions(source).name), keys)
        reports = materialize(build(exp_dir, home=home, now=True), instance, log=lambda _: None)

    assert reports and all(r.success for r in reports), [r.error for r in reports]
    checks = {k: v for r in reports for k, v in r.checks.items()}
    conserved = {k for k in checks if ":documents_conserved[" in k or ":survivors_kept[" in k}
    # corpus shards of three sources, pool and filtered shards of two, dedup shards of two
    assert len(conserved) == 3 * 2 + 2 * 2 + 2 * 2 + 2 * 2
    assert all(checks.values()), {k for k, v in checks.items() if not v}

    # nothing written locally but the cache (and the Dagster instance the test made)
    assert _snapshot(tmp_path, {cache, dagster_dir}) == before
    assert not list((layout.home.parent / "steps").iterdir())  # per-step copies are gone

    stored = _store(s3_server)
    written = [k for k in stored if not k.startswith("raw/")]  # raw/: uploaded by this test
    assert not [k for k in written if any(p.startswith(".") for p in k.split("/"))]
    for source in ("docstrings", "code"):
        for shard in shards[source]:
            for key in (
                f"data/pool/recipe=lenient/source={source}/{shard}.parquet",
                f"data/dedup/recipe=lenient/decisions/source={source}/{shard}.parquet",
                f"data/dedup/recipe=lenient/signatures/source={source}/{shard}.npz",
                f"data/filtered/recipe=lenient/source={source}/{shard}.parquet",
                f"data/decisions/stage=filtered/recipe=lenient/source={source}/{shard}.parquet",
            ):
                assert key in stored, key
    expected = {
        "data/quality/recipe=lenient/model.bin",
        "data/tokenizer/mixture=small/tokenizer.json",
        "data/tokens/mixture=small/train.bin",
        "data/tokens/mixture=small/meta.json",
        "runs/smoke/checkpoints/latest",
        "runs/smoke/checkpoints/step4/model.pt",
        "runs/smoke/checkpoints/step8/mp_rank_00_model_states.pt",
        "runs/smoke/model.pt",
        "runs/smoke/model_lawa.pt",
        "runs/smoke/summary.json",
        "data/eval/run=smoke/eval.json",
        "stats.duckdb",
    }
    assert expected <= set(stored), expected - set(stored)
    latest = client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/runs/smoke/checkpoints/latest")
    assert latest["Body"].read() == b"step8"

    # conservation read back from the store: every corpus document decided once by the pool,
    # every pool document once by the filtered stage, kept ones being the stage's output
    fs = pafs.S3FileSystem(
        endpoint_override=s3_server.endpoint_url, scheme="http", access_key="testing",
        secret_key="testing", region="us-east-1",
    )  # fmt: skip

    def rows(key: str, columns: list[str]) -> dict[str, list]:
        return pq.read_table(f"{BUCKET}/{PREFIX}/{key}", columns=columns, filesystem=fs).to_pydict()

    for source in ("docstrings", "code"):
        for shard in shards[source]:
            corpus = rows(f"data/corpus/source={source}/{shard}.parquet", ["id"])["id"]
            for stage, upstream in (("pool", corpus), ("filtered", None)):
                decided = rows(
                    f"data/decisions/stage={stage}/recipe=lenient/source={source}/{shard}.parquet",
                    ["id", "kept"],
                )
                if upstream is None:
                    upstream = rows(f"data/pool/recipe=lenient/source={source}/{shard}.parquet",
                                    ["id"])["id"]  # fmt: skip
                assert sorted(decided["id"]) == sorted(upstream), (stage, source, shard)
                out = "pool" if stage == "pool" else "filtered"
                kept = rows(f"data/{out}/recipe=lenient/source={source}/{shard}.parquet", ["id"])
                assert sorted(kept["id"]) == sorted(
                    i for i, k in zip(decided["id"], decided["kept"], strict=True) if k
                )

    # MLflow: the run's artifacts in the store, its metrics in this machine's tracking store
    summary = json.loads(
        client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/runs/smoke/mlflow.json")["Body"].read()
    )
    tracking = mlflow.MlflowClient(layout.mlflow_uri)
    run = tracking.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert str(run.info.artifact_uri).startswith(f"{home}/mlflow/artifacts/")
    assert {"eval.bpb.docstrings", "eval.bpb.code"} <= set(run.data.metrics)
    artifact_keys = {k for k in stored if k.startswith("mlflow/artifacts/")}
    for name in ("config/spec.json", "train/summary.json", "eval/eval.json"):
        assert any(k.endswith(f"{summary['run_id']}/artifacts/{name}") for k in artifact_keys), name
    spec = json.loads(
        client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/runs/smoke/spec.json")["Body"].read()
    )
    assert spec["store"]["remote"] == home and "testing" not in json.dumps(spec)
