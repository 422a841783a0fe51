"""The working copy of an s3:// home against a real S3 server (moto on 127.0.0.1): unchanged
files are not moved, deletions propagate only for files a copy knew, and a push killed mid-way
leaves no partial object.

Two working copies of one prefix stand for two machines; a boto3 client (not the code under
test) plays a third writer and reads the store back. The text is Python's own documentation.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from corpuslab.ingest.storage import S3Options
from corpuslab.layout import Layout
from corpuslab.stages.io import StageIO
from corpuslab.sync import Mirror, ObjectStore, check_spec, local_etag
from tests.corpuslab.ingest.test_storage import S3Server

BUCKET = "sync"
REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
TEXTS = [topics[k] for k in sorted(topics)]


@pytest.fixture(scope="module")
def s3(s3_server: S3Server) -> S3Server:
    s3_server.client().create_bucket(Bucket=BUCKET)
    return s3_server


def _options(s3: S3Server) -> S3Options:
    return S3Options.from_kwargs(dict(s3.options()))


def _machine(root: Path, s3: S3Server, prefix: str) -> Mirror:
    """A working copy of ``s3://sync/<prefix>`` under ``root`` (one "machine")."""
    layout = Layout.for_location(f"s3://{BUCKET}/{prefix}", cache=root)
    return Mirror.for_layout(layout, _options(s3))


def _text_file(path: Path, n_bytes: int, offset: int = 0) -> Path:
    """``n_bytes`` of Python's help topics (repeated as needed), starting at topic ``offset``."""
    chunks, size, i = [], 0, offset
    while size < n_bytes:
        data = TEXTS[i % len(TEXTS)].encode()
        chunks.append(data)
        size += len(data)
        i += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(chunks)[:n_bytes])
    return path


def _objects(s3: S3Server, prefix: str) -> dict[str, str]:
    """Key below ``prefix`` -> ETag, listed by boto3."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {
        o["Key"][len(prefix) :]: o["ETag"].strip('"')
        for page in pages
        for o in page.get("Contents", [])
    }


def test_local_etag_is_the_etag_s3_gives_single_and_multipart_uploads(
    s3: S3Server, tmp_path: Path
) -> None:
    store = ObjectStore(f"s3://{BUCKET}/etags", _options(s3), part_size=5 * MIB)
    small = _text_file(tmp_path / "small.txt", 200_000)
    large = _text_file(tmp_path / "large.txt", 11 * MIB + 12345)
    assert store.put(small, "small.txt") == local_etag(small, 5 * MIB)
    assert local_etag(small, 5 * MIB) == hashlib.md5(small.read_bytes()).hexdigest()
    etag = store.put(large, "large.txt")
    assert etag.endswith("-3")  # three parts: a multipart upload
    assert etag == local_etag(large, 5 * MIB)
    assert _objects(s3, "etags/") == {"small.txt": etag_of(small), "large.txt": etag}
    assert s3.client().get_object(Bucket=BUCKET, Key="etags/large.txt")["Body"].read() == (
        large.read_bytes()
    )


def etag_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_pull_fetches_only_what_changed_and_keeps_unpushed_local_work(
    s3: S3Server, tmp_path: Path
) -> None:
    a = _machine(tmp_path / "a", s3, "pull")
    for i, name in enumerate(("x.txt", "y.txt", "z.txt")):
        _text_file(a.root / "data" / name, 5000 + i, offset=i)
    assert len(a.push(["data/"]).moved) == 3

    b = _machine(tmp_path / "b", s3, "pull")
    first = b.pull(["data/"])
    assert sorted(first.moved) == ["data/x.txt", "data/y.txt", "data/z.txt"]
    assert all((b.root / r).read_bytes() == (a.root / r).read_bytes() for r in first.moved)
    again = b.pull(["data/"])
    assert again.moved == [] and again.unchanged == 3

    # a third writer replaces y and deletes z; b sees exactly that
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key="pull/data/y.txt", Body=b"rewritten elsewhere")
    client.delete_object(Bucket=BUCKET, Key="pull/data/z.txt")
    (b.root / "data" / "mine.txt").write_text("a local file no step has pushed yet")
    third = b.pull(["data/"])
    assert third.moved == ["data/y.txt"] and third.deleted == ["data/z.txt"]
    assert third.unchanged == 1
    assert (b.root / "data" / "y.txt").read_bytes() == b"rewritten elsewhere"
    assert not (b.root / "data" / "z.txt").exists()
    assert (b.root / "data" / "mine.txt").is_file()  # untracked local files are left alone

    # a local change not pushed yet survives a pull while the object is unchanged ...
    (b.root / "data" / "x.txt").write_text("changed here, not pushed")
    assert b.pull(["data/"]).moved == []
    assert (b.root / "data" / "x.txt").read_text() == "changed here, not pushed"
    # ... and a file spec of a missing object brings nothing and breaks nothing
    assert b.pull(["data/absent.json"]).moved == []


def test_push_uploads_only_what_differs_and_deletes_only_what_it_knew(
    s3: S3Server, tmp_path: Path
) -> None:
    a = _machine(tmp_path / "a", s3, "push")
    for i, name in enumerate(("p.txt", "q.txt", "r.txt", "latest")):
        _text_file(a.root / "run" / name, 3000 + i, offset=10 + i)
    sent = a.push(["run/"], last=["run/latest"])
    assert sent.moved[-1] == "run/latest"  # the marker goes up after what it marks
    assert sorted(sent.moved) == ["run/latest", "run/p.txt", "run/q.txt", "run/r.txt"]

    # the same bytes written again (new inode and mtime): compared by content, not sent
    p = a.root / "run" / "p.txt"
    data = p.read_bytes()
    p.unlink()
    p.write_bytes(data)
    assert a.push(["run/"]).moved == []

    client = s3.client()
    client.put_object(Bucket=BUCKET, Key="push/run/theirs.txt", Body=b"another machine's")
    (a.root / "run" / "q.txt").write_text("changed")
    (a.root / "run" / "r.txt").unlink()
    (a.root / "run" / ".r.txt.123.tmp").write_text("an atomic write in progress")
    sent = a.push(["run/"])
    assert sent.moved == ["run/q.txt"] and sent.deleted == ["run/r.txt"]
    remote = _objects(s3, "push/run/")
    assert set(remote) == {"p.txt", "q.txt", "latest", "theirs.txt"}  # theirs is not ours
    assert remote["q.txt"] == etag_of(a.root / "run" / "q.txt")

    # an object another machine replaced after our pull is not deleted by our removal
    b = _machine(tmp_path / "b", s3, "push")
    b.pull(["run/"])
    client.put_object(Bucket=BUCKET, Key="push/run/p.txt", Body=b"newer, from elsewhere")
    (b.root / "run" / "p.txt").unlink()
    assert b.push(["run/"]).deleted == []
    assert _objects(s3, "push/run/")["p.txt"] == hashlib.md5(b"newer, from elsewhere").hexdigest()


def test_specs_must_stay_inside_the_home() -> None:
    for bad in ("/etc/passwd", "../x", "a/../../x", "a//b", ""):
        with pytest.raises(ValueError, match="relative to the home"):
            check_spec(bad)
    assert check_spec("data/x/") == "data/x/"
    assert StageIO().inputs == ()


KILLED_PUSH = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from corpuslab.sync import ObjectStore
    ObjectStore(sys.argv[2], part_size=5 << 20).put(Path(sys.argv[3]), "ckpt/model.pt")
    """
)


def test_a_push_killed_mid_upload_leaves_the_previous_object_intact(
    s3: S3Server, tmp_path: Path
) -> None:
    """SIGKILL a process while its multipart upload is half done: the key still holds the
    previous object, and the parts sent stay an incomplete upload S3 never shows."""
    store = ObjectStore(f"s3://{BUCKET}/killed", _options(s3), part_size=5 * MIB)
    old = _text_file(tmp_path / "old.pt", 100_000)
    old_etag = store.put(old, "ckpt/model.pt")
    new = _text_file(tmp_path / "new.pt", 60 * MIB, offset=7)  # 12 parts of 5 MiB
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    cmd = [sys.executable, "-c", KILLED_PUSH, str(REPO), f"s3://{BUCKET}/killed", str(new)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = s3.client()
    parts = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not parts:
            uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix="killed/").get(
                "Uploads", []
            )
            for up in uploads:
                listed = client.list_parts(
                    Bucket=BUCKET, Key=up["Key"], UploadId=up["UploadId"]
                ).get("Parts", [])
                parts = max(parts, len(listed))
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert parts, f"no part was seen uploading before the process ended: {err.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    head = client.head_object(Bucket=BUCKET, Key="killed/ckpt/model.pt")
    assert head["ETag"].strip('"') == old_etag and head["ContentLength"] == old.stat().st_size
    uploads = client.list_multipart_uploads(Bucket=BUCKET, Prefix="killed/").get("Uploads", [])
    assert [u["Key"] for u in uploads] == ["killed/ckpt/model.pt"]  # cut mid-way, never shown
    for up in uploads:  # what a lifecycle rule (AbortIncompleteMultipartUpload) would do
        client.abort_multipart_upload(Bucket=BUCKET, Key=up["Key"], UploadId=up["UploadId"])
    # the upload done again completes, and the object is the new file, whole
    assert store.put(new, "ckpt/model.pt") == local_etag(new, 5 * MIB)
