"""``corpuslab``: the command line over the Dagster definitions.

    corpuslab demo                    build the demo corpus, materialize everything, report
    corpuslab materialize [--select]  materialize what is missing or stale, now
    corpuslab status                  what is missing, stale, waiting or failing, and why
    corpuslab report                  the per-stage report of the home

Everything uses ``$CORPUSLAB_HOME`` (default ``./.corpuslab``), its Dagster instance
(``$DAGSTER_HOME``, default ``$CORPUSLAB_HOME/dagster``) and ``$CORPUSLAB_EXPERIMENTS``
(default ``experiments/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from corpuslab.declarations import default_experiments_dir, load_experiment
from corpuslab.layout import Layout

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_INSTANCE_YAML = REPO_ROOT / "infra" / "dagster" / "local.yaml"


def prepare_environment(layout: Layout) -> None:
    """A persistent local Dagster instance and MLflow store under the home (created once)."""
    os.environ.setdefault("DAGSTER_HOME", str(layout.dagster_home))
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        shutil.copyfile(LOCAL_INSTANCE_YAML, dagster_home / "dagster.yaml")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    layout.mlflow_dir.mkdir(parents=True, exist_ok=True)


def _progress_to_terminal() -> None:
    """Progress lines of long steps (``corpuslab.*`` loggers) printed as they come."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    logger = logging.getLogger("corpuslab")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def add_new_shards(layout: Layout, instance: Any) -> dict[str, list[str]]:
    """Register a shard partition per raw file not yet known (what the shard sensor does);
    sources that cannot be listed and files that cannot be shards are reported, not hidden."""
    from assets.partitions import shard_partitions
    from jobs.sensors import discover_shards

    found = discover_shards(load_experiment(), layout, instance)
    for problem in found.errors + [f"skipped {name}" for name in found.skipped]:
        print(f"warning: {problem}", file=sys.stderr)
    for source, keys in found.new.items():
        instance.add_dynamic_partitions(shard_partitions(source).name, keys)
        print(f"added {len(keys)} shard partition(s) for source {source}")
    return found.new


def cmd_materialize(args: argparse.Namespace) -> int:
    import dagster as dg

    from cli.materialize import MaterializeError, materialize
    from definitions import build

    layout = Layout.from_env()
    prepare_environment(layout)
    instance = dg.DagsterInstance.get()
    add_new_shards(layout, instance)
    defs = build(now=True)
    exp = load_experiment()
    force: dict[Any, dict[str, Any]] = {}
    token = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    for recipe in args.full_recompute or []:
        if recipe not in exp.recipes:
            raise SystemExit(f"--full-recompute: unknown recipe {recipe!r}; allowed: "
                             f"{', '.join(exp.recipes)}")  # fmt: skip
        for source in exp.recipes[recipe].sources:
            key = dg.AssetKey(["dedup", recipe, source])
            pdef = defs.resolve_asset_graph().get(key).partitions_def
            assert pdef is not None, f"{key.to_user_string()} is partitioned by shard"
            for part in pdef.get_partition_keys(dynamic_partitions_store=instance):
                force[(key, part)] = {"full_recompute": token}
    for recipe in args.retrain or []:
        if recipe not in exp.recipes:
            raise SystemExit(f"--retrain: unknown recipe {recipe!r}; allowed: "
                             f"{', '.join(exp.recipes)}")  # fmt: skip
        force[(dg.AssetKey(["quality_model", recipe]), None)] = {"retrain": token}
    selection = dg.AssetSelection.from_string(args.select) if args.select else None
    t0 = time.time()
    last: list[Any] = []
    try:
        reports = materialize(
            defs,
            instance,
            selection=selection,
            force=force,
            jobs=args.jobs,
            experiments=default_experiments_dir(),
            home=layout.location,  # an s3:// home stays one: worker runs synchronize it too
            last_tick=last.append,
        )
    except MaterializeError as exc:
        print(f"corpuslab materialize: {exc}", file=sys.stderr)
        print("(corpuslab status lists what is failing; the run's logs are in `make ui`)",
              file=sys.stderr)  # fmt: skip
        return 1
    if reports:
        n = sum(len(r.keys) for r in reports)
        print(
            f"materialized {n} asset(s) in {len(reports)} Dagster run(s) in {time.time() - t0:.0f}s"
        )
        print(_time_table(reports, args.jobs))
    return _left_over(defs, instance, selection, last[0], bool(reports))


def _time_table(reports: list[Any], jobs: int) -> str:
    """Where the time went: each stage's step count and summed step time."""
    from cli.materialize import time_by_stage

    rows = time_by_stage(reports)
    total = sum(sec for _, _, sec in rows)
    side = f"; up to {jobs} runs side by side" if jobs > 1 else ""
    lines = [f"time by stage (step time summed over {len(reports)} run(s){side}):"]
    lines += [
        f"  {stage:<14} {n:>4} step(s) {sec:>8.1f}s  {100 * sec / total if total else 0:5.1f}%"
        for stage, n, sec in rows
    ]
    return "\n".join(lines)


def _left_over(defs: Any, instance: Any, selection: Any, result: Any, ran: bool) -> int:
    """Say what of the selection is still stale, waiting or failing; 1 if anything is failing.

    The automation conditions request nothing for an asset whose inputs are missing or whose
    inputs' blocking checks failed: the command must not call that "up to date".
    """
    from cli.status import format_status, status

    keys = {k.to_user_string() for k in (selection or _all()).resolve(defs.resolve_asset_graph())}
    lines = {
        cat: [line for line in found if line.split("[")[0].split(":")[0] in keys]
        for cat, found in status(defs, instance, result).items()
    }
    if not any(lines.values()):
        if not ran:
            print("nothing is stale: every selected asset is up to date, nothing was materialized")
        return 0
    print(format_status(lines))
    return 1 if lines.get("failing") else 0


def _all() -> Any:
    import dagster as dg

    return dg.AssetSelection.all()


def cmd_status(args: argparse.Namespace) -> int:
    import dagster as dg

    from cli.status import format_status, status
    from definitions import build

    layout = Layout.from_env()
    prepare_environment(layout)
    instance = dg.DagsterInstance.get()
    print(format_status(status(build(now=True), instance)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from corpuslab.home import Home
    from corpuslab.report import summary
    from corpuslab.stages.io import report_inputs

    home, exp = Home.open(), load_experiment()
    home.pull(report_inputs(exp, home.layout))  # an s3:// home: its summaries, not its weights
    print(summary(exp, home.layout))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from corpuslab.ingest.democorpus import DemoCorpusError, build_demo_corpus

    layout = Layout.from_env()
    prepare_environment(layout)
    t0 = time.time()
    marker = layout.raw / ".complete"
    if not marker.exists():  # the builder is deterministic: once per home
        try:  # it refuses (before writing) a demo source folder holding files it did not write
            shards = build_demo_corpus(layout.raw)
        except DemoCorpusError as exc:
            print(f"corpuslab demo: {exc}", file=sys.stderr)
            return 2
        marker.write_text(json.dumps({s: [p.name for p in ps] for s, ps in shards.items()}))
        from corpuslab.home import Home

        Home.open().push(["raw/"])  # an s3:// home: the raw corpus goes to the store
    print(f"demo corpus: {layout.raw} ({time.time() - t0:.1f}s)")
    rc = cmd_materialize(args)
    cmd_report(args)
    print(
        "\nInspect it:\n"
        f"  DAGSTER_HOME={os.environ['DAGSTER_HOME']} CORPUSLAB_HOME={layout.home} "
        ".venv/bin/dagster dev      # or: make ui\n"
        f"  .venv/bin/mlflow ui --backend-store-uri {layout.mlflow_uri}      # or: make mlflow"
    )
    return rc


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corpuslab", description=(__doc__ or "").partition("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def materialize_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--select", help="Dagster asset selection, e.g. 'key:\"pool/*\"'")
        sp.add_argument(
            "--full-recompute",
            action="append",
            metavar="RECIPE",
            help="decide the recipe's dedup again as one batch (repeatable)",
        )
        sp.add_argument(
            "--retrain",
            action="append",
            metavar="RECIPE",
            help="draw a new sample and retrain the recipe's quality model",
        )
        sp.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                        help="independent runs side by side (default: 2 on 2+ cores)")  # fmt: skip

    demo = sub.add_parser("demo", help="build the demo corpus, materialize, report")
    materialize_options(demo)
    demo.set_defaults(func=cmd_demo)
    mat = sub.add_parser("materialize", help="materialize what is missing or stale")
    materialize_options(mat)
    mat.set_defaults(func=cmd_materialize)
    sub.add_parser("status", help="what is missing, stale, waiting or failing").set_defaults(
        func=cmd_status
    )
    sub.add_parser("report", help="the per-stage report").set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import dagster as dg

    # beta and preview notices about Dagster's own APIs are not for the person at the terminal
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    _progress_to_terminal()
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
