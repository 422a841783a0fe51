"""The same experiment through Dagster with its home in a local folder and on S3, side by side.

The experiment is ``tests/cli/test_s3_home.py``'s subset of the tiny one (three demo sources at
60 documents, one recipe with dedup and a quality model, one mixture, an 8-step DeepSpeed run
with checkpoints, its evaluation, the dbt statistics), materialized with ``corpuslab``'s engine
(``cli.materialize.materialize``) from scratch in each mode, each with a fresh Dagster instance:

- ``local``: the home is a folder (the peer: no synchronization at all);
- ``s3-shared``: the home on S3, one working copy shared by the steps (the default);
- ``s3-per-step``: the home on S3, a fresh working copy per step (a stateless worker).

S3 is moto's server on 127.0.0.1 (in this process: every request is Python, on the same cores,
so per-request costs are far above a real S3's and its CPU shows up here). Reported per mode:
wall time, CPU seconds of this process and its children (training, dbt), the seconds spent in
pulls and pushes (the steps' ``corpuslab.home`` log lines) and the bytes moved, and the ratio
to ``local``. Every mode must produce the same pool, filtered and token bytes (checked).

    .venv/bin/python benchmarks/s3_home.py --out s3_home.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import resource
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODES = ("local", "s3-shared", "s3-per-step")
BUCKET = "bench"
ENV_KEYS = (
    "CORPUSLAB_HOME", "CORPUSLAB_CACHE", "CORPUSLAB_WORKING_COPY", "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "MLFLOW_TRACKING_URI",
)  # fmt: skip
DATA_SUFFIXES = (".parquet", ".bin", ".npy")
TRANSFER = re.compile(r"(pulled|pushed) (\d+) file\(s\) \(([\d,]+) bytes\).* in ([\d.]+)s")


class Transfers(logging.Handler):
    """Sums the pulls and pushes the steps log (``corpuslab.home``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds = 0.0
        self.bytes = 0
        self.files = 0

    def emit(self, record: logging.LogRecord) -> None:
        m = TRANSFER.search(record.getMessage())
        if m:
            self.files += int(m.group(2))
            self.bytes += int(m.group(3).replace(",", ""))
            self.seconds += float(m.group(4))


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_mode(mode: str, raw: Path, root: Path, endpoint: str) -> dict[str, Any]:
    """Materialize the experiment from scratch in ``mode``; its timings and output digests."""
    import boto3
    import dagster as dg

    from assets.partitions import shard_partitions
    from cli.materialize import materialize
    from corpuslab.declarations import load_experiment
    from corpuslab.fileio import digest
    from corpuslab.layout import Layout
    from definitions import build
    from jobs.sensors import shard_requests
    from tests.cli.test_s3_home import S3_TINY, SOURCES
    from tests.conftest import write_experiment
    from tests.corpuslab.ingest.test_storage import upload_tree

    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if mode == "local":
        home: str = str(root / "home")
        shutil.copytree(raw, root / "home" / "raw")
    else:
        prefix = mode
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip
        for source in SOURCES:
            upload_tree(client, raw / source, BUCKET, f"{prefix}/raw/{source}")
        home = f"s3://{BUCKET}/{prefix}"
        os.environ |= {
            "CORPUSLAB_CACHE": str(root / "cache"),
            "CORPUSLAB_WORKING_COPY": mode.removeprefix("s3-"),
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
        }
    os.environ["CORPUSLAB_HOME"] = home
    transfers = Transfers()
    logging.getLogger("corpuslab.home").addHandler(transfers)
    logging.getLogger("corpuslab.home").setLevel(logging.INFO)
    exp_dir = write_experiment(root / "experiments", S3_TINY)
    (root / "dagster").mkdir()
    try:
        with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
            exp = load_experiment(exp_dir)
            layout = Layout.from_env()
            t0, c0 = time.perf_counter(), _cpu()
            for source, keys in shard_requests(exp, layout, instance).items():
                instance.add_dynamic_partitions(str(shard_partitions(source).name), keys)
            reports = materialize(build(exp_dir, home=home, now=True), instance, log=lambda _: None)
            wall, cpu = time.perf_counter() - t0, _cpu() - c0
        assert all(r.success for r in reports)
        # the outputs, read from this mode's home (for S3: a fresh pull of everything)
        if mode != "local":
            from corpuslab.home import Home

            check = Home.open(home, cache=root / "check")
            check.pull(["data/pool/", "data/filtered/", "data/tokens/"])
            layout = check.layout
        digests = {  # the data (summaries name their home's paths, which differ by design)
            str(p.relative_to(layout.home)): digest(p)
            for d in ("pool", "filtered", "tokens")
            for p in sorted((layout.data / d).rglob("*"))
            if p.is_file() and p.suffix in DATA_SUFFIXES and not p.name.startswith(".")
        }
    finally:
        logging.getLogger("corpuslab.home").removeHandler(transfers)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {
        "mode": mode,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "runs": len(reports),
        "sync_s": round(transfers.seconds, 2),
        "files_moved": transfers.files,
        "bytes_moved": transfers.bytes,
        "digests": digests,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import boto3
    from moto.server import ThreadedMotoServer

    from corpuslab.ingest.democorpus import build_demo_corpus

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    results = []
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="bench", aws_secret_access_key="bench",
                     ).create_bucket(Bucket=BUCKET)  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="s3-home-bench-") as tmp:
            raw = Path(tmp) / "raw"
            build_demo_corpus(raw, max_docs_per_source=60, docs_per_shard=30)
            for mode in MODES:
                results.append(run_mode(mode, raw, Path(tmp) / mode, endpoint))
                print(f"{mode}: {results[-1]['wall_s']} s", file=sys.stderr, flush=True)
    finally:
        server.stop()
    same = all(r["digests"] == results[0]["digests"] for r in results)
    base = results[0]
    for r in results[1:]:
        differ = sorted(k for k in base["digests"].keys() | r["digests"].keys()
                        if base["digests"].get(k) != r["digests"].get(k))  # fmt: skip
        if differ:
            print(f"{r['mode']} differs from local in: {', '.join(differ)}", file=sys.stderr)
    print("| mode | wall s | CPU s (with children) | in pulls/pushes s | files moved | MB moved "
          "| wall / local | CPU / local |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['mode']} | {r['wall_s']} | {r['cpu_s']} | {r['sync_s']} | {r['files_moved']} "
            f"| {r['bytes_moved'] / 1e6:.1f} | {r['wall_s'] / base['wall_s']:.2f} "
            f"| {r['cpu_s'] / base['cpu_s']:.2f} |"
        )
    print(f"\nsame pool, filtered and token bytes in every mode: {same} "
          f"({len(base['digests'])} files)")  # fmt: skip
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average": os.getloadavg()},
        "command": " ".join(sys.argv),
        "same_outputs": same,
        "results": [{k: v for k, v in r.items() if k != "digests"} for r in results],
    }  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(textwrap.dedent(f"\nwritten to {args.out}"))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
