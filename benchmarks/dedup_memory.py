"""Peak memory of the dedup stage on a corpus 10x the demo's: in-memory (before) vs banded (now).

The corpus: the demo corpus's docstrings, code and packages (default caps, ~10 MB of real
text), each document followed by 9 variants (:func:`corpuslab.ingest.democorpus.scaled_records`:
word edits at 1/3/12%, every fourth copy re-punctuated), written as pool shards of 500
documents. Both paths run in fresh processes on the same pool with a warm signature cache, and
report ``ru_maxrss`` (peak resident set) and the wall time:

- ``in-memory``: the stage as it was (commit cbb2650): every pool text read at once, exact
  digests over them, all signatures stacked, :func:`find_duplicates_from_signatures`;
- ``banded``: :func:`corpuslab.stages.dedup.materialize_dedup_shard` on an empty index (every
  shard decided as one batch, as a build from scratch): per-shard digests, signatures banded
  from the cache one band at a time;
- ``baseline``: a process that imports the same modules and does nothing else.

Both must drop exactly the same documents (checked). Memory above the baseline is the figure.

    .venv/bin/python benchmarks/dedup_memory.py --out dedup_memory.json [--copies 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RECIPE = "bench"
SOURCES = ("docstrings", "code", "packages")
DOCS_PER_SHARD = 500
EXPERIMENT = """
sources:
  docstrings: {path: raw/docstrings}
  code: {path: raw/code}
  packages: {path: raw/packages}
recipes:
  bench:
    sources: [docstrings, code, packages]
    dedup: {ngram: 5, num_perm: 128, threshold: 0.8, bands: 16, rows: 8}
"""


def build(root: Path, copies: int) -> dict[str, int]:
    """Experiment folder and pool shards of the scaled corpus under ``root``."""
    import pyarrow as pa

    from corpuslab.fileio import write_parquet
    from corpuslab.ingest.democorpus import (
        _PRODUCERS,
        DEFAULT_MAX_DOCS,
        scaled_records,
        take,
    )
    from corpuslab.layout import Layout

    (root / "exp").mkdir(parents=True)
    (root / "exp" / "e.yaml").write_text(textwrap.dedent(EXPERIMENT))
    layout = Layout(root / "home")
    docs = text_bytes = 0
    for source in SOURCES:
        base = take(_PRODUCERS[source](), DEFAULT_MAX_DOCS[source])
        rows = [{"id": r["id"], "text": r["text"]} for r in scaled_records(base, copies)]
        for i in range(0, len(rows), DOCS_PER_SHARD):
            part = rows[i : i + DOCS_PER_SHARD]
            out = layout.pool_dir(RECIPE, source) / f"part-{i // DOCS_PER_SHARD:05d}.parquet"
            write_parquet(pa.Table.from_pylist(part), out)
        docs += len(rows)
        text_bytes += sum(len(r["text"].encode()) for r in rows)
    return {"documents": docs, "text_bytes": text_bytes}


def _imports() -> None:
    import corpuslab.dedup  # noqa: F401
    import corpuslab.stages.common  # noqa: F401
    import corpuslab.stages.dedup  # noqa: F401


def run_mode(mode: str, root: Path) -> dict:
    """One mode in this (fresh) process: its drops, wall time and peak RSS."""
    _imports()
    from corpuslab import dedup as dl
    from corpuslab.declarations import load_experiment
    from corpuslab.fileio import digest
    from corpuslab.layout import Layout
    from corpuslab.stages.common import pool_tables
    from corpuslab.stages.dedup import materialize_dedup_shard, recipe_decisions

    exp = load_experiment(root / "exp")
    layout = Layout(root / "home")
    t0 = time.perf_counter()
    drops: list[list[str]] = []
    if mode == "banded":
        first = sorted(layout.pool_dir(RECIPE, SOURCES[0]).glob("*.parquet"))[0].stem
        materialize_dedup_shard(exp, layout, RECIPE, SOURCES[0], first)
        table = recipe_decisions(exp, layout, RECIPE)
        status = table.column("status").to_pylist()
        drops = sorted(
            [k, r, s]
            for k, r, s in zip(
                table.column("key").to_pylist(), status, table.column("survivor_key").to_pylist(),
                strict=True,
            )
            if r != "kept"
        )  # fmt: skip
        extra = {
            "documents": len(status),
            "exact_duplicates": status.count("exact_duplicate"),
            "near_duplicates": status.count("near_duplicate"),
        }
    elif mode == "in-memory":  # the stage at cbb2650, without its writes
        params = exp.recipes[RECIPE].dedup
        pool = pool_tables(exp, layout, RECIPE, ["text"])
        keys, texts = pool.column("key").to_pylist(), pool.column("text").to_pylist()
        exact = dl.exact_duplicates(keys, texts)
        rest = [i for i, k in enumerate(keys) if k not in exact.drop]
        shards = []
        for source in exp.recipes[RECIPE].sources:
            for path in sorted(layout.pool_dir(RECIPE, source).glob("*.parquet")):
                shards.append((f"source={source}/{path.stem}", digest(path), lambda: ([], [])))
        sigs, computed, _ = dl.cached_signatures(
            layout.dedup_dir(RECIPE) / "signatures", params, shards
        )
        assert computed == 0, "run banded first: it fills the signature cache"
        near = dl.find_duplicates_from_signatures([keys[i] for i in rest], sigs[rest], params)
        drops = sorted(
            [[k, "exact_duplicate", near.keep_of.get(exact.keep_of[k], exact.keep_of[k])]
             for k in exact.drop]
            + [[k, "near_duplicate", near.keep_of[k]] for k in near.drop]
        )  # fmt: skip
        extra = {"documents": len(keys), "near_duplicates": len(near.drop)}
    else:
        extra = {}
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"mode": mode, "wall_s": wall, "peak_rss_mib": peak_kib / 1024, "drops": drops, **extra}


def in_subprocess(mode: str, root: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--root", str(root)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return json.loads(out.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--child")
    parser.add_argument("--root", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_mode(args.child, args.root)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = build(root, args.copies)
        warm = in_subprocess("banded", root)  # computes and caches the signatures
        runs = {m: in_subprocess(m, root) for m in ("baseline", "in-memory", "banded")}
    same = runs["in-memory"]["drops"] == runs["banded"]["drops"] == warm["drops"]
    base = runs["baseline"]["peak_rss_mib"]
    rows = []
    for mode in ("in-memory", "banded"):
        r = runs[mode]
        rows.append(
            {
                "mode": mode,
                "peak_rss_mib": round(r["peak_rss_mib"], 1),
                "above_baseline_mib": round(r["peak_rss_mib"] - base, 1),
                "wall_s": round(r["wall_s"], 2),
            }
        )
    print(
        f"corpus: {corpus['documents']:,} documents, {corpus['text_bytes'] / 1e6:.1f} MB of text "
        f"({args.copies}x the demo's docstrings/code/packages); baseline process {base:.0f} MiB; "
        f"same drops: {same} ({len(runs['banded']['drops'])} documents)"
    )
    print("| path | peak RSS MiB | above baseline MiB | wall s |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['peak_rss_mib']} | {r['above_baseline_mib']} | {r['wall_s']} |")
    ratio = rows[0]["above_baseline_mib"] / max(rows[1]["above_baseline_mib"], 1e-9)
    print(f"banded uses {ratio:.1f}x less memory above the baseline")
    if args.out:
        report = {
            "command": " ".join(sys.argv),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "load_average": os.getloadavg(),
            "corpus": corpus,
            "copies": args.copies,
            "baseline_mib": base,
            "rows": rows,
            "same_drops": same,
            "first_banded_run_with_signatures_s": round(warm["wall_s"], 2),
        }
        args.out.write_text(json.dumps(report, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
