"""``dedup/<recipe>``: exact and MinHash-LSH near-duplicates across all pool shards of a recipe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from corpuslab import dedup as dedup_lib
from corpuslab.compute import Compute, LocalCompute
from corpuslab.declarations import Experiment
from corpuslab.dedup import DedupParams
from corpuslab.fileio import digest, read_parquet, write_json, write_parquet
from corpuslab.layout import Layout
from corpuslab.stages.common import KEY_SEP, doc_key, split_key

DROP_SCHEMA = pa.schema(
    [
        (n, pa.string())
        for n in ("id", "reason", "duplicate_of", "source", "shard", "key", "survivor_key")
    ]
)


@dataclass(frozen=True)
class ShardInputs:
    """What dedup needs of one pool shard: ids, exact-text digests, a fresh signature cache."""

    ids: list[str]
    digests: list[bytes]
    computed: bool  # signatures were (re)computed rather than read from the cache


def shard_dedup_inputs(job: tuple[str, str, DedupParams]) -> ShardInputs:
    """One pool shard's ids and :func:`~corpuslab.dedup.normalized_hash` digests; its MinHash
    signatures computed into the cache unless the entry for its content is there.

    ``job`` is ``(pool shard path, signature cache path, params)``: one picklable argument, so
    it runs as a Ray task or in a local thread alike; only ids and 16-byte digests come back.
    """
    pool_path, cache_path, params = job
    table = read_parquet(Path(pool_path), columns=["id", "text"])
    ids = table.column("id").to_pylist()
    texts = table.column("text").to_pylist()
    _, _, computed = dedup_lib.shard_signatures(
        Path(cache_path), params, lambda: (ids, texts), key=digest(Path(pool_path))
    )
    return ShardInputs(ids, [dedup_lib.normalized_hash(t) for t in texts], computed)


def pool_shards(exp: Experiment, layout: Layout, recipe: str) -> list[tuple[str, str, Path]]:
    """``(source, shard, path)`` of every pool shard of a recipe, in a fixed order."""
    shards = [
        (source, path.stem, path)
        for source in exp.recipes[recipe].sources
        for path in sorted(layout.pool_dir(recipe, source).glob("*.parquet"))
        if not path.name.startswith(".")
    ]
    if not shards:
        raise FileNotFoundError(f"recipe {recipe!r} has no pool shards yet: materialize pool first")
    return shards


def materialize_dedup(
    exp: Experiment, layout: Layout, recipe: str, compute: Compute | None = None
) -> dict:
    """Exact (normalized hash) then MinHash-LSH near-dup clusters across all shards of a recipe.

    Per shard (a task each through ``compute``: local threads, or Ray tasks) the texts are
    read once, digested and, unless cached for the shard's content, MinHash-signed into the
    per-shard signature cache; a new shard computes only its own. The global step then holds
    ids and digests, never the texts, and bands the cached signatures one band at a time
    (:func:`~corpuslab.dedup.find_duplicates_banded`): memory grows with documents times one
    band, not times the whole signature.
    """
    decl = exp.recipes[recipe]
    shards = pool_shards(exp, layout, recipe)
    sig_dir = layout.dedup_dir(recipe) / "signatures"
    cache_paths = [sig_dir / f"source={source}" / f"{shard}.npz" for source, shard, _ in shards]
    jobs = [(str(p), str(c), decl.dedup) for (_, _, p), c in zip(shards, cache_paths, strict=True)]
    inputs = (compute or LocalCompute()).map(shard_dedup_inputs, jobs)
    wanted = set(cache_paths)
    for stale in sig_dir.glob("**/*.npz"):  # the cache holds exactly the current shards
        if stale not in wanted:
            stale.unlink()
    keys: list[str] = []
    digests: list[bytes] = []
    for (source, shard, _), got in zip(shards, inputs, strict=True):
        keys += [doc_key(source, shard, i) for i in got.ids]
        digests += got.digests
    exact = dedup_lib.exact_duplicates_from_digests(keys, digests)
    del digests
    selected, base = [], 0
    for path, got in zip(cache_paths, inputs, strict=True):
        rows = np.fromiter(
            (i for i in range(len(got.ids)) if keys[base + i] not in exact.drop), np.int64
        )
        selected.append(dedup_lib.SignatureShard(path, rows))
        base += len(got.ids)
    remaining = [k for k in keys if k not in exact.drop]
    near = dedup_lib.find_duplicates_banded(
        remaining, selected, decl.dedup, layout.dedup_dir(recipe)
    )
    computed = sum(got.computed for got in inputs)
    reused = len(inputs) - computed
    # an exact duplicate's survivor may itself be a near duplicate: point at the final survivor
    dropped_by = [
        (k, "exact_duplicate", near.keep_of.get(exact.keep_of[k], exact.keep_of[k]))
        for k in exact.drop
    ]
    dropped_by += [(k, "near_duplicate", near.keep_of[k]) for k in near.drop]
    rows = []
    for key, reason, survivor in sorted(dropped_by):
        source, shard, doc_id = split_key(key)
        rows.append(
            {
                "id": doc_id,
                "reason": reason,
                "duplicate_of": survivor.replace(KEY_SEP, "/"),
                "source": source,
                "shard": shard,
                "key": key,
                "survivor_key": survivor,
            }
        )
    out = layout.dedup_dir(recipe) / "drop.parquet"
    write_parquet(pa.Table.from_pylist(rows, schema=DROP_SCHEMA), out)
    # a real invariant: every dropped document points at a survivor that is itself kept
    dropped = {r["key"] for r in rows}
    survivors_ok = all(r["survivor_key"] not in dropped for r in rows)
    summary = {
        "documents": len(keys),
        "exact_duplicates": len(exact.drop),
        "near_duplicates": len(near.drop),
        "clusters": len({near.clusters[d] for d in near.drop}),
        "kept": len(keys) - len(dropped),
        "survivors_kept": survivors_ok,
        "signature_shards_computed": computed,
        "signature_shards_reused": reused,
        "params": decl.dedup.model_dump(),
    }
    write_json(summary, layout.dedup_dir(recipe) / "summary.json")
    summary["data_version"] = digest(out)
    return summary
