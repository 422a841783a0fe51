"""Adding one shard vs building all N, through the ``corpuslab`` command and its Dagster instance.

The corpus: the demo sources scaled up (:func:`corpuslab.ingest.democorpus.scaled_records`:
each document and ``copies - 1`` near-duplicate variants), written as raw shards in the demo's
formats; the repository's own ``experiments/sources.yaml`` and ``recipes.yaml`` (two recipes:
``baseline`` and ``dclm``) curate it. One shard of ``docstrings`` (in both recipes) is held
back. In one script, on one home, each a fresh ``corpuslab materialize`` process:

1. ``full``: every curation asset (``group:corpus or group:pool``) of the N shards;
2. ``noop``: the same command again, nothing stale (the fixed cost of a command);
3. ``add one``: the held-back shard copied in, the same command;
4. ``full recompute``: ``--full-recompute`` of both recipes (dedup decided again as one batch,
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
import shutil
import subprocess
import sys
import tempfile
import time
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


def corpuslab(env: dict[str, str], *args: str) -> float:
    """One ``corpuslab`` command in a fresh process; its wall time (output kept in the log)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [str(Path(sys.executable).parent / "corpuslab"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    log = Path(env["CORPUSLAB_HOME"]) / "bench.log"
    with log.open("a") as fh:
        fh.write(f"$ corpuslab {' '.join(args)}\n{out.stdout}{out.stderr}\n")
    if out.returncode != 0:
        raise SystemExit(f"corpuslab {' '.join(args)} failed ({out.returncode}); see {log}")
    return wall


def materialized_since(dagster_home: Path, since: float) -> list[tuple[str, str | None]]:
    """(asset key, partition) of every materialization recorded after ``since``."""
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    with dg.DagsterInstance.get() as instance:
        records = instance.get_event_records(
            dg.EventRecordsFilter(
                event_type=dg.DagsterEventType.ASSET_MATERIALIZATION, after_timestamp=since
            ),
            limit=100_000,
        )
        out = []
        for r in records:
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
    held = sorted((home / "raw" / NEW_SOURCE).iterdir())[-1]
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

    timings: dict[str, float] = {}
    timings["full"] = corpuslab(env, "materialize", "--select", SELECT)
    timings["noop"] = corpuslab(env, "materialize", "--select", SELECT)
    shutil.copyfile(aside, held)
    since = time.time()
    timings["add one"] = corpuslab(env, "materialize", "--select", SELECT)
    added = materialized_since(home / "dagster", since)
    new_part = shard_key(held)
    foreign = [(k, p) for k, p in added if p != new_part]
    since = time.time()
    timings["full recompute"] = corpuslab(
        env, "materialize", "--select", SELECT,
        "--full-recompute", "baseline", "--full-recompute", "dclm",
    )  # fmt: skip
    recomputed = materialized_since(home / "dagster", since)

    ratio = timings["add one"] / timings["full"]
    rows = [
        ("full build (N shards)", timings["full"], 1.0),
        ("nothing stale", timings["noop"], timings["noop"] / timings["full"]),
        ("add one shard", timings["add one"], ratio),
        ("full recompute of dedup", timings["full recompute"],
         timings["full recompute"] / timings["full"]),
    ]  # fmt: skip
    print("\n| step | wall s | / full |\n|---|---:|---:|")
    for name, wall, r in rows:
        print(f"| {name} | {wall:.1f} | {r:.3f} |")
    print(f"\nN = {n}; target add one / full <= 3/N = {3 / n:.3f}; measured {ratio:.3f} "
          f"({'met' if ratio <= 3 / n else 'NOT met'})")  # fmt: skip
    print(f"add one materialized {len(added)} assets: " + ", ".join(f"{k}[{p}]" for k, p in added))
    print(f"of them, assets of existing shards or global: {len(foreign)} {foreign or ''}")
    print(f"full recompute materialized {len(recomputed)} assets")

    report = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                    "python": platform.python_version(), "load": os.getloadavg()},
        "versions": {"dagster": dagster.__version__},
        "corpus": {**corpus, "n_shards": n, "new_shard": f"{NEW_SOURCE}/{held.name}"},
        "selection": SELECT,
        "timings_s": timings,
        "ratio_add_one_to_full": ratio,
        "target_ratio": 3 / n,
        "met": ratio <= 3 / n,
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
