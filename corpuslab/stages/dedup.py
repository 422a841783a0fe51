"""``dedup/<recipe>``: exact and MinHash-LSH near-duplicates across all pool shards of a recipe."""

from __future__ import annotations

import itertools

import pyarrow as pa

from corpuslab import dedup as dedup_lib
from corpuslab.declarations import Experiment
from corpuslab.fileio import digest, write_json, write_parquet
from corpuslab.layout import Layout
from corpuslab.stages.common import KEY_SEP, pool_tables, split_key

DROP_SCHEMA = pa.schema(
    [
        (n, pa.string())
        for n in ("id", "reason", "duplicate_of", "source", "shard", "key", "survivor_key")
    ]
)


def materialize_dedup(exp: Experiment, layout: Layout, recipe: str) -> dict:
    """Exact (normalized hash) then MinHash-LSH near-dup clusters across all shards of a recipe.

    MinHash signatures are cached per pool shard, keyed by its content digest: a new shard
    computes only its own, the others are reused.
    """
    decl = exp.recipes[recipe]
    pool = pool_tables(exp, layout, recipe, ["text"])
    keys = pool.column("key").to_pylist()
    texts = pool.column("text").to_pylist()
    exact = dedup_lib.exact_duplicates(keys, texts)
    remaining = [i for i, k in enumerate(keys) if k not in exact.drop]
    source_col = pool.column("source").to_pylist()
    shard_col = pool.column("shard").to_pylist()
    runs = itertools.groupby(range(len(keys)), key=lambda i: (source_col[i], shard_col[i]))
    shards = []
    for (source, shard), members in runs:
        idx = list(members)
        a, b = idx[0], idx[-1] + 1
        shards.append(
            (
                f"source={source}/{shard}",
                digest(layout.pool_dir(recipe, source) / f"{shard}.parquet"),
                lambda a=a, b=b: (keys[a:b], texts[a:b]),
            )
        )
    signatures, computed, reused = dedup_lib.cached_signatures(
        layout.dedup_dir(recipe) / "signatures", decl.dedup, shards
    )
    near = dedup_lib.find_duplicates_from_signatures(
        [keys[i] for i in remaining], signatures[remaining], decl.dedup
    )
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
