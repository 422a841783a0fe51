"""A training run whose home is on S3 (moto's server on 127.0.0.1): it pulls what it reads, its
checkpoints reach the store as they complete, and killed after one of them it resumes on
another machine (an empty working copy) from the store alone.

The token file is the session's (Python's help topics, BPE-encoded), uploaded with boto3; the
entry point runs as a plain process, as a pod would run it, with no Dagster step around it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from corpuslab.layout import Layout
from corpuslab.training.runspec import RunSpec, StoreSpec
from tests.corpuslab.ingest.test_storage import S3Server, upload_tree
from tests.corpuslab.training.test_train import make_spec, write_spec
from tests.training import ENTRYPOINT, kill_tree, trainer_env

BUCKET = "training"
HOME = f"s3://{BUCKET}/home"


def _spec(machine: Path) -> RunSpec:
    """The run as one machine sees it: below its own working copy of the home."""
    root = Layout.for_location(HOME, cache=machine).home
    spec = make_spec(
        root / "runs" / "r", root / "data" / "tokens" / "mixture=m", checkpoint_every=10
    )
    return spec.model_copy(update={"store": StoreSpec(root=root, remote=HOME)})


def _latest(s3: S3Server) -> int | None:
    try:
        got = s3.client().get_object(Bucket=BUCKET, Key="home/runs/r/checkpoints/latest")
    except Exception:
        return None
    return int(got["Body"].read().decode().removeprefix("step"))


def test_a_run_killed_after_a_pushed_checkpoint_resumes_on_another_machine(
    tmp_path: Path, tokens_dir: Path, s3_server: S3Server
) -> None:
    client = s3_server.client()
    client.create_bucket(Bucket=BUCKET)
    upload_tree(client, tokens_dir, BUCKET, "home/data/tokens/mixture=m")
    env = trainer_env(
        {
            "AWS_ENDPOINT_URL": s3_server.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }
    )

    # machine a: starts from an empty working copy, killed once a checkpoint is in the store
    spec_a = _spec(tmp_path / "a")
    cmd = [sys.executable, str(ENTRYPOINT), "--spec"]
    proc = subprocess.Popen(
        [*cmd, str(write_spec(spec_a, tmp_path / "spec-a.json"))],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not _latest(s3_server):
            time.sleep(0.05)
    finally:
        kill_tree(proc.pid)
        _, err = proc.communicate()
    pushed = _latest(s3_server)
    assert pushed, f"no checkpoint reached the store before the run ended: {err[-3000:]!r}"
    assert proc.returncode != 0 and not (Path(spec_a.out_dir) / "summary.json").exists()
    assert (Path(spec_a.tokens_dir) / "train.bin").is_file()  # pulled by the trainer itself

    # machine b: nothing local; the store's run folder is pulled and resumed from
    spec_b = _spec(tmp_path / "b")
    assert not Path(spec_b.out_dir).exists()
    done = subprocess.run(
        [*cmd, str(write_spec(spec_b, tmp_path / "spec-b.json"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((Path(spec_b.out_dir) / "summary.json").read_text())
    assert summary["resumed_from_step"] == pushed
    assert _latest(s3_server) == 30
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="home/runs/r/")
    keys = {o["Key"][len("home/runs/r/") :] for p in pages for o in p.get("Contents", [])}
    assert {"summary.json", "model.pt", "checkpoints/step30/model.pt"} <= keys
    assert f"checkpoints/step{pushed}/trainer_state_rank0.json" in keys
    assert not [k for k in keys if any(part.startswith(".") for part in k.split("/"))]
    stored = json.loads(client.get_object(Bucket=BUCKET, Key="home/runs/r/summary.json")["Body"]
                        .read())  # fmt: skip
    assert stored == summary
