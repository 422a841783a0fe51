"""A source on S3 (moto's server on 127.0.0.1) materializes through Dagster like a local one."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from assets import corpus, pool
from assets.partitions import shard_partitions
from cli.materialize import materialize
from corpuslab.declarations import load_experiment
from corpuslab.layout import Layout
from jobs import automation
from jobs.sensors import shard_requests
from resources import environments
from tests.conftest import write_experiment
from tests.corpuslab.ingest.test_storage import S3Server, upload_tree

BUCKET = "sources"

S3_EXPERIMENT = {
    "sources.yaml": f"""
        sources:
          lake: {{path: "s3://{BUCKET}/lake/mixed"}}
          notes: {{path: "s3://{BUCKET}/lake/text", format: text}}
          reference: {{path: "s3://{BUCKET}/lake/mixed", format: parquet}}
    """,
    "recipes.yaml": """
        recipes:
          web:
            sources: [lake, notes]
            steps:
              - language_id: {languages: [en], min_score: 0.65}
              - gopher_repetition: {}
              - gopher_quality: {min_alpha_words_ratio: 0.6}
              - c4_quality: {filter_no_terminal_punct: false}
              - exact_dedup: {}
              - paragraph_dedup: {}
            write_dropped: true
            dedup: {ngram: 5, num_perm: 128, threshold: 0.8, bands: 16, rows: 8}
            quality: {positive_source: reference, negative_sample: 10, keep_fraction: 0.9,
                      epoch: 20, lr: 0.5}
    """,
}


def test_s3_source_materializes_with_checks(
    tmp_path: Path, raw_formats: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    exp_dir = write_experiment(tmp_path / "experiments", S3_EXPERIMENT)
    monkeypatch.setenv("CORPUSLAB_HOME", str(home))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as inst:
        client = s3_server.client()
        client.create_bucket(Bucket=BUCKET)
        upload_tree(client, raw_formats, BUCKET, "lake")
        # the storage resource reads the standard AWS variables, as on a real deployment
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        # the corpus and recipe assets with the local resources: dbt's statistics over these
        # outputs are the same whatever storage the raw files came from (see test_end_to_end)
        exp = load_experiment(exp_dir)
        with automation.eager_everywhere():  # the conditions `corpuslab materialize` evaluates
            defs = dg.Definitions.merge(corpus.defs(exp), pool.defs(exp), environments.defs(home))
        new = shard_requests(exp, Layout(home), inst)
        assert new == {
            "lake": ["crawls_a", "crawls_b", "cut", "empty", "part-0", "part-1", "part-2"],
            "notes": ["_root", "guide", "guide_deep"],
            "reference": ["part-2"],
        }
        for source, keys in new.items():
            inst.add_dynamic_partitions(shard_partitions(source).name, keys)
        reports = materialize(defs, inst, log=lambda _: None)
    checks = {k: v for r in reports for k, v in r.checks.items()}
    assert all(checks.values())
    # every shard of every sharded stage was checked: 7 lake, 3 notes and 1 reference shard
    for stage, n in (("corpus/lake", 7), ("pool/web/lake", 7), ("filtered/web/notes", 3)):
        assert len([k for k in checks if k.startswith(f"{stage}:documents_conserved")]) == n
    layout = Layout(home)
    # corrupt input was set aside with its reason; the shards still completed
    reasons = {
        shard: [
            json.loads(line)["reason"].split(":")[0]
            for line in (layout.quarantine_dir("lake") / f"{shard}.jsonl").read_text().splitlines()
        ]
        for shard in ("cut", "empty", "crawls_b")
    }
    assert reasons["cut"] == ["truncated_stream"] and reasons["empty"] == ["empty_file"]
    assert reasons["crawls_b"] == ["truncated_stream"]
    warc = pq.read_table(layout.corpus_dir("lake") / "crawls_a.parquet").to_pylist()
    assert warc and all(d["url"] and "warc_date" in json.loads(d["metadata"]) for d in warc)
    pooled = pq.read_table(layout.pool_dir("web", "lake") / "part-0.parquet").num_rows
    assert pooled > 0
    quality = json.loads((layout.quality_dir("web") / "summary.json").read_text())
    assert quality["enabled"] and quality["positives"] == 10 and "auc" in quality["metrics"]
