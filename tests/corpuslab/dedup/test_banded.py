"""Banded LSH over the signature cache gives exactly the in-memory path's clusters and counts."""

from __future__ import annotations

import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from corpuslab.declarations import load_experiment
from corpuslab.dedup import (
    DedupParams,
    DedupResult,
    SignatureShard,
    compute_signatures,
    exact_duplicates,
    find_duplicates_banded,
    find_duplicates_from_signatures,
)
from corpuslab.dedup.cache import save_signatures
from corpuslab.fileio import write_parquet
from corpuslab.ingest.democorpus import scaled_records
from corpuslab.layout import Layout
from corpuslab.stages.common import KEY_SEP, pool_tables
from corpuslab.stages.dedup import materialize_dedup_shard, recipe_decisions

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MODULES = [
    "textwrap.py", "heapq.py", "bisect.py", "shlex.py", "fnmatch.py", "glob.py", "sched.py",
    "queue.py", "csv.py", "fractions.py", "calendar.py", "string.py", "json/decoder.py",
    "json/encoder.py", "colorsys.py", "keyword.py",
]  # fmt: skip


@pytest.fixture(scope="module")
def docs() -> list[dict[str, str]]:
    """Stdlib modules and 5 variants each (word edits at 1/3/12%, a re-punctuated copy)."""
    records = [{"id": m, "text": (STDLIB / m).read_text(encoding="utf-8")} for m in MODULES]
    return list(scaled_records(records, copies=6))


def _same(a: DedupResult, b: DedupResult) -> None:
    assert a.clusters == b.clusters
    assert a.drop == b.drop and a.keep_of == b.keep_of
    assert (a.n_candidate_pairs, a.n_verified_pairs) == (b.n_candidate_pairs, b.n_verified_pairs)


@pytest.mark.parametrize(
    "params",
    [
        DedupParams(num_perm=64, threshold=0.8),  # datasketch optimum + leftover columns
        DedupParams(num_perm=64, threshold=0.7, bands=16, rows=4),  # every column banded
        DedupParams(num_perm=64, threshold=0.8, verify=False),
    ],
    ids=["optimum", "16x4", "unverified"],
)
@pytest.mark.parametrize("max_pairs", [3, 1 << 24], ids=["spilled", "one-range"])
def test_banded_equals_in_memory(
    docs: list[dict[str, str]], params: DedupParams, max_pairs: int, tmp_path: Path
) -> None:
    """Same clusters, drops, survivors and pair counts, in one merge range or in many."""
    ids = [d["id"] for d in docs]
    sigs = compute_signatures(ids, [d["text"] for d in docs], params)
    # three cache shards; the middle one takes part only partly (as after exact dedup)
    cuts = [0, 30, 61, len(ids)]
    shards, chosen = [], []
    for s, (lo, hi) in enumerate(zip(cuts, cuts[1:], strict=False)):
        path = tmp_path / f"s{s}.npz"
        save_signatures(path, ids[lo:hi], sigs[lo:hi], params)
        rows = np.arange(hi - lo) if s != 1 else np.arange(0, hi - lo, 2)
        shards.append(SignatureShard(path, None if s != 1 else rows))
        chosen += (lo + rows).tolist()
    want = find_duplicates_from_signatures([ids[i] for i in chosen], sigs[chosen], params)
    got = find_duplicates_banded(
        [ids[i] for i in chosen], shards, params, tmp_path / "spill", max_pairs=max_pairs
    )
    _same(got, want)
    assert want.n_dropped >= 10  # real near-duplicates, not a vacuous comparison
    # re-punctuated copies have the same shingles: identical signatures are grouped too
    assert any(k.endswith("~4") for k in want.drop)
    assert not list((tmp_path / "spill").iterdir())  # spill files removed


def test_banded_rejects_a_missing_cache_entry(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing or stale"):
        find_duplicates_banded(
            ["a"], [SignatureShard(tmp_path / "nope.npz")], DedupParams(), tmp_path
        )


def _in_memory_drops(exp, layout: Layout, recipe: str) -> set[tuple[str, str, str]]:  # noqa: ANN001
    """The drops of the in-memory stage (before banding): every text and signature at once."""
    params = exp.recipes[recipe].dedup
    pool = pool_tables(exp, layout, recipe, ["text"])
    keys, texts = pool.column("key").to_pylist(), pool.column("text").to_pylist()
    exact = exact_duplicates(keys, texts)
    rest = [i for i, k in enumerate(keys) if k not in exact.drop]
    sigs = compute_signatures([keys[i] for i in rest], [texts[i] for i in rest], params)
    near = find_duplicates_from_signatures([keys[i] for i in rest], sigs, params)
    out = {
        (k, "exact_duplicate", near.keep_of.get(exact.keep_of[k], exact.keep_of[k]))
        for k in exact.drop
    }
    return out | {(k, "near_duplicate", near.keep_of[k]) for k in near.drop}


def test_dedup_stage_drops_what_the_in_memory_path_drops(
    docs: list[dict[str, str]], tmp_path: Path
) -> None:
    """The banded stage (per-shard digests, cached signatures), deciding every shard as one
    batch, against the all-in-memory global clustering."""
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "e.yaml").write_text(
        textwrap.dedent("""
        sources:
          a: {path: raw/a}
          b: {path: raw/b}
        recipes:
          r: {sources: [a, b], dedup: {num_perm: 64, threshold: 0.8, bands: 16, rows: 4}}
    """)
    )
    exp = load_experiment(tmp_path / "exp")
    layout = Layout(tmp_path / "home")
    rows = [{"id": d["id"], "text": d["text"], "source": "", "url": None} for d in docs]
    rows.append({**rows[0], "id": "copy", "text": rows[0]["text"].upper()})  # exact, case only
    for i, (source, shard) in enumerate([("a", "s0"), ("a", "s1"), ("b", "s0")]):
        part = [{**r, "source": source} for r in rows[i::3]]
        write_parquet(pa.Table.from_pylist(part), layout.pool_dir("r", source) / f"{shard}.parquet")
    summary = materialize_dedup_shard(exp, layout, "r", "a", "s0")
    assert summary["batch"]["batch_shards"] == 3
    table = recipe_decisions(exp, layout, "r").to_pylist()
    got = {(r["key"], r["status"], r["survivor_key"]) for r in table if r["status"] != "kept"}
    assert got == _in_memory_drops(exp, layout, "r")
    statuses = [r["status"] for r in table]
    assert statuses.count("exact_duplicate") >= 1 and statuses.count("near_duplicate") >= 10
    assert all(KEY_SEP in r["key"] for r in table)
