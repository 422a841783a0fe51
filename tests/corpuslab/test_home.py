"""A step on an s3:// home (moto on 127.0.0.1): inputs pulled before it, outputs pushed only if it
succeeds, and a per-step working copy removed after it (or, if its process died, by the next)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from corpuslab.home import Home
from corpuslab.ingest.storage import S3Options
from corpuslab.stages.io import StageIO
from tests.corpuslab.ingest.test_storage import S3Server

BUCKET = "steps"


@pytest.fixture(scope="module")
def s3(s3_server: S3Server) -> S3Server:
    s3_server.client().create_bucket(Bucket=BUCKET)
    return s3_server


def _home(s3: S3Server, cache: Path, per_step: bool = False) -> Home:
    options = S3Options.from_kwargs(dict(s3.options()))
    return Home.open(f"s3://{BUCKET}/h", cache=cache, options=options, per_step=per_step)


def _keys(s3: S3Server) -> set[str]:
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="h/").get("Contents", [])
    return {o["Key"][2:] for o in listed}


def test_a_step_pushes_its_outputs_only_when_it_succeeds(s3: S3Server, tmp_path: Path) -> None:
    s3.client().put_object(Bucket=BUCKET, Key="h/data/in/a.txt", Body=b"an input")
    home = _home(s3, tmp_path / "cache")
    io = StageIO(inputs=("data/in/",), outputs=("data/out/",))
    with pytest.raises(RuntimeError, match="the step failed"), home.staged(io) as layout:
        assert (layout.home / "data/in/a.txt").read_bytes() == b"an input"
        (layout.home / "data/out").mkdir(parents=True)
        (layout.home / "data/out/b.txt").write_text("half done")
        raise RuntimeError("the step failed")
    assert _keys(s3) == {"data/in/a.txt"}  # nothing of the failed step reached the store
    with home.staged(io) as layout:
        (layout.home / "data/out/b.txt").write_text("done")
    assert _keys(s3) == {"data/in/a.txt", "data/out/b.txt"}


def test_per_step_copies_go_with_their_step_or_with_their_dead_process(
    s3: S3Server, tmp_path: Path
) -> None:
    s3.client().put_object(Bucket=BUCKET, Key="h/data/in/a.txt", Body=b"an input")
    home = _home(s3, tmp_path / "cache", per_step=True)
    steps = home.layout.home.parent / "steps"
    host = socket.gethostname().replace("-", "_")
    dead = steps / f"{host}-999999999-x1"  # above any pid: a step killed on this host
    alive = steps / f"{host}-{os.getpid()}-x2"
    elsewhere = steps / "otherhost-1-x3"  # another machine's, on a shared cache folder
    for d in (dead, alive, elsewhere):
        (d / "work").mkdir(parents=True)
    with home.staged(StageIO(inputs=("data/in/",))) as layout:
        assert layout.home.parent.parent == steps and layout.home != home.layout.home
        assert (layout.home / "data/in/a.txt").is_file()  # pulled into its own copy
        mine = layout.home.parent
    assert not mine.exists() and not dead.exists()
    assert alive.is_dir() and elsewhere.is_dir()
