"""Adding one shard vs building all N, through the ``corpuslab`` command and its Dagster instance.

The corpus: the demo sources scaled up (:func:`corpuslab.ingest.democorpus.scaled_records`:
each document and ``copies - 1`` near-duplicate variants), written as raw shards in the demo's
formats; the repository's own ``experiments/sources.yaml`` and ``recipes.yaml`` (every recipe
it declares) curate it. One shard of ``docstrings`` (in every recipe) is held back, its
largest, so the shard added is a full one. In one script, on one home, each a fresh
``corpuslab materialize`` process:

1. ``full``: every curation asset (``group:corpus or group:pool``) of the N shards;
2. ``noop``: the same command again, nothing stale (the fixed cost of a command);
3. ``add one``: the held-back shard copied in, the same command;
4. ``full recompute``: ``--full-recompute`` of every recipe (dedup decided again as one batch,
   the only way existing decisions may change).

After step 3 the Dagster instance is read back: every asset materialized since the step began
is listed by key and partition; none may belong to an existing shard, nor be a quality model.
The figure is ``add one / full`` against the target ``3 / N``.

    .venv/bin/python benchmarks/incremental.py --out incremental.json [--copies 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SELECT = "group:corpus or group:pool"
SCALED = ("docstrings", "code", "packages")
NEW_SOURCE = "docstrings"


def build_raw(raw: Path, copies: int, docs_per_shard: int) -> dict[str, int]:
    """Raw shards of the scaled demo sources (``reference`` unscaled: the positives)."""
    from corpuslab.ingest.democorpus import (
        _PRODUCERS,
        DEFAULT_MAX_DOCS,
        SHARD_SUFFIX,
        scaled_records,
        take,
        write_shard,
    )

    counts = {"documents": 0, "text_bytes": 0, "shards": 0}
    for source in (*SCALED, "reference"):
        base = take(_PRODUCERS[source](), DEFAULT_MAX_DOCS[source])
        rows = list(scaled_records(base, copies if source in SCALED else 1))
        (raw / source).mkdir(parents=True)
        for i in range(0, len(rows), docs_per_shard):
            chunk = rows[i : i + docs_per_shard]
            write_shard(
                chunk, raw / source / f"part-{i // docs_per_shard:05d}{SHARD_SUFFIX[source]}"
            )
            counts["shards"] += 1
        counts["documents"] += len(rows)
        counts["text_bytes"] += sum(len(r["text"].encode()) for r in rows)
    return counts


@dataclass
class Step:
    """One command's wall time, CPU time (it and every process below it) and output."""

    wall: float
    cpu: float
    output: str


def corpuslab(env: dict[str, str], *args: str) -> Step:
    """One ``corpuslab`` command in a fresh process (output also kept in the home's log)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(
        [str(Path(sys.executable).parent / "corpuslab"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker runs are waited for below it
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    log = Path(env["CORPUSLAB_HOME"]) / "bench.log"
    with log.open("a") as fh:
        fh.write(f"$ corpuslab {' '.join(args)}\n{out.stdout}{out.stderr}\n")
    if out.returncode != 0:
        raise SystemExit(f"corpuslab {' '.join(args)} failed ({out.returncode}); see {log}")
    return Step(wall, cpu, out.stdout)


def materialized_since(dagster_home: Path, since: float) -> list[tuple[str, str | None]]:
    """(asset key, partition) of every materialization recorded after ``since``."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    out = []
    with dg.DagsterInstance.get() as instance:
        for key in instance.get_asset_keys():
            found = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, after_timestamp=since), limit=10_000
            )
            for r in found.records:
                mat = r.asset_materialization
                assert mat is not None
                out.append((mat.asset_key.to_user_string(), mat.partition))
    return sorted(out, key=lambda kp: (kp[0], kp[1] or ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=6, help="copies of each scaled document")
    ap.add_argument("--docs-per-shard", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("incremental.json"))
    ap.add_argument("--keep", action="store_true", help="keep the home (path printed)")
    args = ap.parse_args()

    import dagster

    from corpuslab.ingest.readers import shard_key

    work = Path(tempfile.mkdtemp(prefix="corpuslab-incremental-"))
    home, exp = work / "home", work / "experiments"
    exp.mkdir()
    for name in ("sources.yaml", "recipes.yaml"):
        shutil.copyfile(REPO / "experiments" / name, exp / name)
    corpus = build_raw(home / "raw", args.copies, args.docs_per_shard)
    # a full-size shard (the last one of a source is usually short): the largest
    held = max(sorted((home / "raw" / NEW_SOURCE).iterdir()), key=lambda p: p.stat().st_size)
    aside = work / held.name
    shutil.move(held, aside)
    n = corpus["shards"] - 1
    env = {
        **os.environ,
        "CORPUSLAB_HOME": str(home),
        "CORPUSLAB_EXPERIMENTS": str(exp),
        "DAGSTER_HOME": str(home / "dagster"),
    }
    env.pop("CORPUSLAB_CACHE", None)
    print(f"corpus: {corpus['documents']:,} docs, {corpus['text_bytes'] / 1e6:.1f} MB, "
          f"{n} shards + 1 held back ({NEW_SOURCE}/{held.name}); home {home}")  # fmt: skip

    steps: dict[str, Step] = {}
    steps["full"] = corpuslab(env, "materialize", "--select", SELECT)
    steps["noop"] = corpuslab(env, "materialize", "--select", SELECT)
    shutil.copyfile(aside, held)
    since = time.time()
    steps["add one"] = corpuslab(env, "materialize", "--select", SELECT)
    added = materialized_since(home / "dagster", since)
    new_part = shard_key(held)
    foreign = [(k, p) for k, p in added if p != new_part]
    since = time.time()
    import yaml

    recipes = yaml.safe_load((exp / "recipes.yaml").read_text())["recipes"]
    recompute = [arg for recipe in recipes for arg in ("--full-recompute", recipe)]
    steps["full recompute"] = corpuslab(env, "materialize", "--select", SELECT, *recompute)
    recomputed = materialized_since(home / "dagster", since)

    full, one = steps["full"], steps["add one"]
    ratio, cpu_ratio = one.wall / full.wall, one.cpu / full.cpu
    names = {"full": "full build (N shards)", "noop": "nothing stale",
             "add one": "add one shard", "full recompute": "full recompute of dedup"}  # fmt: skip
    print("\n| step | wall s | / full | CPU s | / full |\n|---|---:|---:|---:|---:|")
    for key, step in steps.items():
        print(f"| {names[key]} | {step.wall:.1f} | {step.wall / full.wall:.3f} "
              f"| {step.cpu:.1f} | {step.cpu / full.cpu:.3f} |")  # fmt: skip
    for what, r in (("wall", ratio), ("CPU", cpu_ratio)):
        print(f"N = {n}; target add one / full <= 3/N = {3 / n:.3f}; {what}: {r:.3f} "
              f"({'met' if r <= 3 / n else 'NOT met'})")  # fmt: skip
    print(f"add one materialized {len(added)} assets: " + ", ".join(f"{k}[{p}]" for k, p in added))
    print(f"of them, assets of existing shards or global: {len(foreign)} {foreign or ''}")
    print(f"full recompute materialized {len(recomputed)} assets")
    print("\nadd one, as `corpuslab materialize` reported it:\n" + one.output.strip())

    report = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                    "python": platform.python_version(), "load": os.getloadavg()},
        "versions": {"dagster": dagster.__version__},
        "corpus": {**corpus, "n_shards": n, "new_shard": f"{NEW_SOURCE}/{held.name}"},
        "selection": SELECT,
        "wall_s": {k: st.wall for k, st in steps.items()},
        "cpu_s": {k: st.cpu for k, st in steps.items()},
        "ratio_add_one_to_full": ratio,
        "cpu_ratio_add_one_to_full": cpu_ratio,
        "target_ratio": 3 / n,
        "met": ratio <= 3 / n,
        "met_in_cpu": cpu_ratio <= 3 / n,
        "add_one_materialized": added,
        "add_one_existing_or_global": foreign,
        "full_recompute_materialized": len(recomputed),
    }  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.keep:
        print(f"home kept: {home}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not foreign else 1


if __name__ == "__main__":
    raise SystemExit(main())
