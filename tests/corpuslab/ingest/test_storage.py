"""Storage: local folders and s3:// prefixes read the same, against a real S3 server (moto).

The server runs on 127.0.0.1 once a session (``s3_server``); this module's bucket holds the local
shards, real Python documentation text in every raw format, uploaded with boto3 (not the code
under test).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import zstandard

from corpuslab.ingest import storage
from corpuslab.ingest.readers import CorpusError, ReadResult, list_shards, read_raw_shard
from corpuslab.ingest.storage import S3Options, StorageError, open_fs
from tests.corpuslab.ingest.test_warc import topic_responses, write_warc

TOPICS = __import__("pydoc_data.topics", fromlist=["topics"]).topics
KEYS = sorted(TOPICS)
BUCKET = "corpus"
CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible server and how to reach it."""

    endpoint_url: str

    def options(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint_url, "region": "us-east-1", **CREDENTIALS}

    def client(self) -> Any:
        """A boto3 client: uploads go through a different S3 implementation."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


@contextlib.contextmanager
def moto_server() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, stopped on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


def upload_tree(client: Any, local: Path, bucket: str, prefix: str) -> None:
    """Upload every file below ``local`` under ``prefix``."""
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.put_object(
            Bucket=bucket,
            Key=f"{prefix}/{path.relative_to(local).as_posix()}",
            Body=path.read_bytes(),
        )


def _jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def build_raw(root: Path) -> Path:
    """Every raw format, a few corrupt files among them, from Python's documentation topics."""
    mixed = root / "mixed"
    (mixed / "crawls").mkdir(parents=True)
    docs = [{"id": f"topic/{k}", "text": TOPICS[k], "url": f"pydoc:{k}"} for k in KEYS[:40]]
    (mixed / "part-0.jsonl.gz").write_bytes(gzip.compress(_jsonl(docs[:15])))
    (mixed / "part-1.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(_jsonl(docs[15:30]))
    )
    pq.write_table(pa.Table.from_pylist(docs[30:]), mixed / "part-2.parquet")
    cut = gzip.compress(_jsonl(docs))
    (mixed / "cut.jsonl.gz").write_bytes(cut[: len(cut) // 2])
    (mixed / "empty.jsonl").write_bytes(b"")
    (mixed / ".part-3.jsonl.gz.tmp").write_bytes(b"half written")
    write_warc(mixed / "crawls" / "a.warc.gz", topic_responses())
    warc = write_warc(mixed / "crawls" / "b.warc", topic_responses()[:3]).read_bytes()
    (mixed / "crawls" / "b.warc").write_bytes(warc[: len(warc) - 500])  # last record cut
    text = root / "text"
    (text / "guide" / "deep").mkdir(parents=True)
    (text / "README.md").write_text(TOPICS[KEYS[50]])
    (text / "guide" / "intro.rst").write_text(TOPICS[KEYS[51]])
    (text / "guide" / "deep" / "a.txt").write_text(TOPICS[KEYS[52]])
    (text / "guide" / "deep" / "bad.txt").write_bytes(b"caf\xe9")
    return root


@pytest.fixture(scope="module")
def raw(raw_formats: Path) -> Path:
    return raw_formats


@pytest.fixture(scope="module")
def s3(raw: Path, s3_server: S3Server) -> S3Server:
    """The session's S3 server with this module's bucket: the raw files under ``raw/``."""
    client = s3_server.client()
    client.create_bucket(Bucket=BUCKET)
    upload_tree(client, raw, BUCKET, "raw")
    return s3_server


def _comparable(result: ReadResult) -> tuple:
    quarantined = [(q["line"], q["reason"], q.get("offset")) for q in result.quarantined]
    return result.table.to_pylist(), quarantined, result.skipped


@pytest.mark.parametrize(("folder", "fmt"), [("mixed", "auto"), ("text", "text")])
def test_s3_prefix_reads_like_the_local_copy(raw: Path, s3: S3Server, folder: str, fmt: str):
    fs, _ = open_fs(f"s3://{BUCKET}", **s3.options())
    local = list_shards(raw / folder, fmt)
    remote = list_shards(f"s3://{BUCKET}/raw/{folder}/", fmt, fs=fs)
    assert list(remote) == list(local)
    expected = {
        "mixed": ["crawls_a", "crawls_b", "cut", "empty", "part-0", "part-1", "part-2"],
        "text": ["_root", "guide", "guide_deep"],
    }[folder]
    assert list(local) == expected
    for key, location in remote.items():
        assert isinstance(location, str) and location.startswith(f"s3://{BUCKET}/raw/{folder}")
        mine = read_raw_shard(local[key], "src", shard=key)
        theirs = read_raw_shard(location, "src", fs=fs, shard=key)
        assert _comparable(theirs) == _comparable(mine), key
        assert all(q["file"].startswith("s3://") for q in theirs.quarantined)
    if folder == "mixed":
        reasons = {
            k: [q["reason"].split(":")[0] for q in read_raw_shard(local[k], "src").quarantined]
            for k in ("cut", "empty", "crawls_b")
        }
        assert reasons == {
            "cut": ["truncated_stream"],
            "empty": ["empty_file"],
            "crawls_b": ["truncated_stream"],
        }


def test_s3_settings_from_the_standard_environment(
    raw: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    shards = list_shards(f"s3://{BUCKET}/raw/mixed", "jsonl")
    assert list(shards) == ["cut", "empty", "part-0", "part-1"]
    res = read_raw_shard(shards["part-1"], "src")
    assert res.table.column("id").to_pylist() == [f"topic/{k}" for k in KEYS[15:30]]


def test_s3_missing_prefix_and_bucket(s3: S3Server) -> None:
    fs, _ = open_fs(f"s3://{BUCKET}", **s3.options())
    with pytest.raises(CorpusError, match="does not exist"):
        list_shards(f"s3://{BUCKET}/raw/nothing-here", fs=fs)
    with pytest.raises(CorpusError):
        list_shards("s3://no-such-bucket/raw", fs=fs)
    with pytest.raises(CorpusError, match="does not exist"):
        read_raw_shard(f"s3://{BUCKET}/raw/mixed/gone.jsonl", "src", fs=fs)


def test_open_input_streams_raw_bytes_from_s3(raw: Path, s3: S3Server) -> None:
    fs, path = open_fs(f"s3://{BUCKET}/raw/mixed/part-0.jsonl.gz", **s3.options())
    assert path == f"{BUCKET}/raw/mixed/part-0.jsonl.gz"
    with storage.open_input(fs, path, buffer_size=1024) as fh:
        head = fh.read(2)
        assert head == b"\x1f\x8b" and fh.tell() == 2  # not decompressed; position known
        assert head + fh.read() == (raw / "mixed" / "part-0.jsonl.gz").read_bytes()


def test_open_fs_forms_and_errors(tmp_path: Path) -> None:
    fs, path = open_fs(tmp_path)
    assert isinstance(fs, pafs.LocalFileSystem) and path == tmp_path.as_posix()
    assert open_fs(f"file://{tmp_path}")[1] == tmp_path.as_posix()
    fs, path = open_fs("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:1")
    assert fs.type_name == "s3" and path == "bucket/some/prefix"
    assert storage.to_location(fs, path) == "s3://bucket/some/prefix"
    with pytest.raises(StorageError, match="allowed: access_key_id"):
        open_fs("s3://bucket/x", endpoint="http://127.0.0.1:1")
    with pytest.raises(StorageError, match="unsupported scheme"):
        open_fs("gs://bucket/x")
    with pytest.raises(StorageError, match="names no bucket"):
        open_fs("s3://")
    with pytest.raises(StorageError, match="both access_key_id and secret_access_key"):
        S3Options(access_key_id="only-half").filesystem()


def test_list_files_sorted_filtered_and_without_hidden(tmp_path: Path) -> None:
    for name in ["b.jsonl", "a.jsonl", "sub/c.parquet", "sub/.d.jsonl", ".git/e.jsonl", "f.csv"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    fs, root = open_fs(tmp_path)
    found = storage.list_files(fs, root, (".jsonl", ".parquet"))
    assert [storage.relative(p, root).as_posix() for p in found] == [
        "a.jsonl",
        "b.jsonl",
        "sub/c.parquet",
    ]
    assert len(storage.list_files(fs, root, recursive=False)) == 3
    with pytest.raises(StorageError, match="does not exist"):
        storage.list_files(fs, (tmp_path / "missing").as_posix())


def test_a_failing_read_raises_instead_of_looking_like_bad_data(
    tmp_path: Path, s3: S3Server
) -> None:
    client = s3.client()
    fs, _ = open_fs(f"s3://{BUCKET}", **s3.options())
    client.put_object(Bucket=BUCKET, Key="tmp/vanishing.bin", Body=b"x" * 50_000)
    stream = storage.open_input(fs, f"{BUCKET}/tmp/vanishing.bin", buffer_size=1024)
    assert stream.read(10) == b"x" * 10
    client.delete_object(Bucket=BUCKET, Key="tmp/vanishing.bin")  # gone mid-read
    with pytest.raises(StorageError, match="failed"):
        stream.read()
    assert isinstance(storage.read_failure(stream), StorageError)

    # the WARC reader lets the storage error through instead of calling the file damaged
    from corpuslab.ingest.warc import iter_warc

    pages = topic_responses(KEYS[:40])  # larger than FastWARC's 64 KiB read-ahead
    body = write_warc(tmp_path / "v.warc", pages).read_bytes()
    client.put_object(Bucket=BUCKET, Key="tmp/v.warc", Body=body)
    stream = storage.open_input(fs, f"{BUCKET}/tmp/v.warc", buffer_size=1024)
    outcomes = iter_warc(stream)
    assert next(outcomes).skipped == "warcinfo"
    client.delete_object(Bucket=BUCKET, Key="tmp/v.warc")
    with pytest.raises(StorageError, match="failed"):  # raised, never read as a damaged file
        list(outcomes)
    assert isinstance(storage.read_failure(stream), StorageError)
