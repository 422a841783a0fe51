"""``dedup/<recipe>``: exact and MinHash-LSH near-duplicates across all pool shards of a recipe."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa

from corpuslab import dedup as dedup_lib
from corpuslab.declarations import Experiment
from corpuslab.fileio import digest, read_parquet, write_json, write_parquet
from corpuslab.layout import Layout
from corpuslab.stages.common import KEY_SEP, SHOWN_IDS, pool_tables, split_key

DROP_SCHEMA = pa.schema(
    [
        (n, pa.string())
        for n in ("id", "reason", "duplicate_of", "source", "shard", "key", "survivor_key")
    ]
)


def survivor_problems(pool: pa.Table, drop_path: Path) -> list[str]:
    """``survivors_kept``: what is wrong with the drop list written at ``drop_path``, if anything.

    ``pool`` holds the recipe's pool documents (``key``, ``text``); the drop list is read back
    from its file. Every dropped document must be a pool document, dropped once, and point at a
    survivor that is in the pool and not dropped; and no two documents the list keeps may be
    exact duplicates (the same NFKC-normalized, case- and whitespace-folded text), which the
    drop list exists to prevent. Returns at most ``SHOWN_IDS`` problems, one line each.
    """
    keys = pool.column("key").to_pylist()
    in_pool = set(keys)
    drops = read_parquet(drop_path, columns=["key", "survivor_key"]).to_pydict()
    dropped = Counter(drops["key"])
    problems = [f"dropped {n} times: {k!r}" for k, n in sorted(dropped.items()) if n > 1]
    problems += [f"dropped but not in the pool: {k!r}" for k in sorted(set(dropped) - in_pool)]
    for key, survivor in sorted(zip(drops["key"], drops["survivor_key"], strict=True)):
        if survivor not in in_pool:
            problems.append(f"{key!r} points at {survivor!r}, which is not in the pool")
        elif survivor in dropped:
            problems.append(f"{key!r} points at {survivor!r}, which is dropped too")
    kept_by_hash: dict[bytes, list[str]] = defaultdict(list)
    for key, text in zip(keys, pool.column("text").to_pylist(), strict=True):
        if key not in dropped:
            kept_by_hash[dedup_lib.normalized_hash(text)].append(key)
    for group in sorted(sorted(g) for g in kept_by_hash.values() if len(g) > 1):
        problems.append(f"kept documents are exact duplicates: {', '.join(map(repr, group))}")
    return problems[:SHOWN_IDS]


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
    # checked on the file as written, not on the lists it was written from
    problems = survivor_problems(pool, out)
    dropped = {r["key"] for r in rows}
    summary = {
        "documents": len(keys),
        "exact_duplicates": len(exact.drop),
        "near_duplicates": len(near.drop),
        "clusters": len({near.clusters[d] for d in near.drop}),
        "kept": len(keys) - len(dropped),
        "survivors_kept": not problems,
        **({"survivor_problems": problems} if problems else {}),
        "signature_shards_computed": computed,
        "signature_shards_reused": reused,
        "params": decl.dedup.model_dump(),
    }
    write_json(summary, layout.dedup_dir(recipe) / "summary.json")
    summary["data_version"] = digest(out)
    return summary
