"""`make demo`: build the demo corpus, materialize the default experiment through Dagster, report.

Run again with nothing changed and nothing is materialized (everything is fresh).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from corpuslab.declarations import load_experiment
from corpuslab.ingest.democorpus import DemoCorpusError, build_demo_corpus
from corpuslab.layout import Layout
from corpuslab.report import summary

LOCAL_INSTANCE_YAML = Path(__file__).resolve().parent.parent / "infra" / "dagster" / "local.yaml"


def _prepare_environment(layout: Layout) -> None:
    os.environ.setdefault("DAGSTER_HOME", str(layout.dagster_home))
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        shutil.copyfile(LOCAL_INSTANCE_YAML, dagster_home / "dagster.yaml")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    layout.mlflow_dir.mkdir(parents=True, exist_ok=True)


def ensure_demo_corpus(layout: Layout) -> None:
    """Build the raw demo corpus once; the builder is deterministic, so a rebuild is a no-op.

    Raises :class:`DemoCorpusError` (before writing anything) when a demo source folder under
    ``raw/`` holds files the builder did not write, e.g. the user's own ``raw/code``.
    """
    marker = layout.raw / ".complete"
    if marker.exists():
        return
    shards = build_demo_corpus(layout.raw)
    marker.write_text(json.dumps({s: [p.name for p in ps] for s, ps in shards.items()}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    from dagster import DagsterInstance

    layout = Layout.from_env()
    _prepare_environment(layout)
    t0 = time.time()
    try:
        ensure_demo_corpus(layout)
    except DemoCorpusError as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return 2
    print(f"demo corpus: {layout.raw} ({time.time() - t0:.1f}s)")

    from assets.partitions import shard_partitions
    from cli.materialize import materialize_stale
    from definitions import build
    from jobs.sensors import discover_shards

    defs = build()
    exp = load_experiment()
    instance = DagsterInstance.get()
    found = discover_shards(exp, layout, instance)
    for problem in found.errors + [f"skipped {name}" for name in found.skipped]:
        print(f"warning: {problem}", file=sys.stderr)
    for source, keys in found.new.items():
        instance.add_dynamic_partitions(shard_partitions(source).name, keys)
        print(f"added {len(keys)} shard partitions for source {source}")
    reports = materialize_stale(defs, instance)
    if reports:
        print(
            f"materialized {sum(len(r.keys) for r in reports)} asset(s) in {len(reports)} "
            f"Dagster run(s) in {time.time() - t0:.0f}s"
        )
    else:
        print("nothing is stale: every asset is up to date, nothing was materialized")
    print(summary(exp, layout))
    home = layout.home
    print(
        "\nInspect it:\n"
        f"  DAGSTER_HOME={os.environ['DAGSTER_HOME']} CORPUSLAB_HOME={home} "
        ".venv/bin/dagster dev      # or: make ui\n"
        f"  .venv/bin/mlflow ui --backend-store-uri {layout.mlflow_uri}      # or: make mlflow"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
