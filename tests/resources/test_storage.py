"""StorageResource: Dagster config (a local root, or S3 named as in dagster-aws) -> filesystem."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow.fs as pafs
import pytest

from corpuslab.ingest.readers import list_shards, read_raw_shard
from resources.storage import StorageResource
from tests.corpuslab.ingest.test_storage import S3Server, upload_tree

BUCKET = "resources"


def test_local_root_resolves_relative_locations(raw_formats: Path) -> None:
    storage = StorageResource(root=str(raw_formats.parent))
    fs, path = storage.open("raw/text")
    assert isinstance(fs, pafs.LocalFileSystem) and path == (raw_formats / "text").as_posix()
    assert list(list_shards(path, "text", fs=fs)) == ["_root", "guide", "guide_deep"]
    assert storage.location("/elsewhere") == "/elsewhere"
    assert storage.location("s3://b/k") == "s3://b/k"


def test_s3_root_with_s3resource_settings(
    raw_formats: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORPUS_S3_SECRET", "testing")
    client = s3_server.client()
    client.create_bucket(Bucket=BUCKET)
    upload_tree(client, raw_formats, BUCKET, "lake/raw")
    storage = StorageResource(
        root=f"s3://{BUCKET}/lake/",
        endpoint_url=s3_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key=dg.EnvVar("CORPUS_S3_SECRET"),
    )

    @dg.asset
    def shard_count(storage: StorageResource) -> int:
        fs, path = storage.open("raw/mixed")
        shards = list_shards(path, "auto", fs=fs)
        docs = read_raw_shard(shards["part-0"], "src", fs=fs, shard="part-0")
        assert docs.table.num_rows == 15 and docs.quarantined == []
        return len(shards)

    result = dg.materialize([shard_count], resources={"storage": storage})
    assert result.success
    assert result.output_for_node("shard_count") == 7
