"""StorageResource: Dagster config (a local root, or S3 named as in dagster-aws) -> filesystem."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow.fs as pafs
import pytest

from corpuslab.ingest.readers import list_shards, read_raw_shard
from resources.storage import StorageResource
from tests.corpuslab.ingest.test_storage import BUCKET, build_raw, moto_server, upload_tree


def test_local_root_resolves_relative_locations(tmp_path: Path) -> None:
    raw = build_raw(tmp_path / "raw")
    storage = StorageResource(root=str(tmp_path))
    fs, path = storage.open("raw/text")
    assert isinstance(fs, pafs.LocalFileSystem) and path == (raw / "text").as_posix()
    assert list(list_shards(path, "text", fs=fs)) == ["_root", "guide", "guide_deep"]
    assert storage.location("/elsewhere") == "/elsewhere"
    assert storage.location("s3://b/k") == "s3://b/k"


def test_s3_root_with_s3resource_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = build_raw(tmp_path / "raw")
    monkeypatch.setenv("CORPUS_S3_SECRET", "testing")
    with moto_server() as server:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        upload_tree(client, raw, BUCKET, "lake/raw")
        storage = StorageResource(
            root=f"s3://{BUCKET}/lake/",
            endpoint_url=server.endpoint_url,
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
