"""``dedup/<recipe>/<source>``: exact and MinHash-LSH duplicates of one pool shard, decided
against the recipe's index of every shard decided before (:mod:`corpuslab.dedup.incremental`).

The index is the per-shard decision files plus the per-shard signature cache. Materializing a
shard decides, in one batch, every pool shard of the recipe that is on disk and not yet in the
index (so a build whose pools are complete before dedup runs equals the global clustering), and
writes one decision file per shard; a shard already decided by an earlier batch is read back.
Decisions about indexed shards never change: a new shard can only drop its own documents.
``full_recompute`` (any new value) clears the index once and rebuilds it from every pool shard.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corpuslab import dedup as dedup_lib
from corpuslab.compute import Compute, LocalCompute
from corpuslab.declarations import Experiment
from corpuslab.dedup import DedupParams
from corpuslab.dedup.banded import SignatureShard, banded_components
from corpuslab.dedup.incremental import EXACT, KEPT, Index, decide
from corpuslab.dedup.lsh import Components
from corpuslab.fileio import atomic_path, digest, exclusive, read_parquet, write_json
from corpuslab.layout import Layout
from corpuslab.progress import Progress
from corpuslab.stages.common import KEY_SEP, SHOWN_IDS, doc_key, split_key

DECISION_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("id", pa.string()),
        ("source", pa.string()),
        ("shard", pa.string()),
        ("status", pa.string()),  # kept, exact_duplicate or near_duplicate
        ("survivor_key", pa.string()),  # the key of the document that stands for this one
        ("duplicate_of", pa.string()),  # the survivor as source/shard/id, for people
        ("exact", pa.binary(16)),  # normalized-text digest (exact dedup against the index)
    ]
)
META = b"corpuslab.dedup"  # Parquet metadata: what the decisions were computed from


class DedupIndexError(RuntimeError):
    """The index cannot be extended consistently; the message says what to recompute."""


@dataclass(frozen=True)
class ShardRef:
    source: str
    shard: str

    def name(self) -> str:
        return f"{self.source}/{self.shard}"


def _decision_path(layout: Layout, recipe: str, ref: ShardRef) -> Path:
    return layout.dedup_decisions_dir(recipe, ref.source) / f"{ref.shard}.parquet"


def _pool_path(layout: Layout, recipe: str, ref: ShardRef) -> Path:
    return layout.pool_dir(recipe, ref.source) / f"{ref.shard}.parquet"


def _pool_shards(exp: Experiment, layout: Layout, recipe: str) -> list[ShardRef]:
    """Every materialized pool shard of the recipe, in declaration order of sources."""
    out = []
    for source in exp.recipes[recipe].sources:
        folder = layout.pool_dir(recipe, source)
        for path in sorted(folder.glob("*.parquet")):
            if not path.name.startswith("."):
                out.append(ShardRef(source, path.stem))
    return out


def _stamp(layout: Layout, recipe: str, ref: ShardRef, fingerprint: str) -> dict[str, str]:
    return {
        "pool_digest": digest(_pool_path(layout, recipe, ref)),
        "params": fingerprint,
    }


def _read_stamp(path: Path) -> dict[str, str]:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(META, b"{}"))


def _locked(folder: Path) -> contextlib.AbstractContextManager[None]:
    """One dedup batch of a recipe at a time (parallel runs would race on the index)."""
    return exclusive(folder / ".lock")


def _params_fingerprint(exp: Experiment, recipe: str) -> str:
    from corpuslab.stages.versions import fingerprint

    return fingerprint(exp.recipes[recipe].dedup)


def _cache_path(layout: Layout, recipe: str, ref: ShardRef) -> Path:
    return layout.dedup_dir(recipe) / "signatures" / f"source={ref.source}" / f"{ref.shard}.npz"


@dataclass(frozen=True)
class ShardInputs:
    """What dedup needs of a new pool shard: ids and exact-text digests (signatures: cached)."""

    ids: list[str]
    digests: list[bytes]
    computed: bool  # signatures were (re)computed rather than read from the cache


def shard_dedup_inputs(job: tuple[str, str, DedupParams]) -> ShardInputs:
    """A pool shard's ids and normalized-text digests; its MinHash signatures computed into the
    cache unless the entry for its content is there.

    ``job`` is ``(pool shard path, signature cache path, params)``: one picklable argument, so it
    runs as a Ray task or in a local thread alike; only ids and 16-byte digests come back, the
    global step never holds the texts.
    """
    pool_path, cache_path, params = job
    table = read_parquet(Path(pool_path), columns=["id", "text"])
    ids = table.column("id").to_pylist()
    texts = table.column("text").to_pylist()
    _, _, computed = dedup_lib.shard_signatures(
        Path(cache_path), params, lambda: (ids, texts), key=digest(Path(pool_path))
    )
    return ShardInputs(ids, [dedup_lib.normalized_hash(t) for t in texts], computed)


def ensure_signatures(job: tuple[str, str, DedupParams]) -> bool:
    """An indexed shard's signature cache entry, computed only if missing or stale."""
    pool_path, cache_path, params = job

    def read() -> tuple[list[str], list[str]]:
        t = read_parquet(Path(pool_path), columns=["id", "text"])
        return t.column("id").to_pylist(), t.column("text").to_pylist()

    return dedup_lib.shard_signatures(Path(cache_path), params, read, key=digest(Path(pool_path)))[
        2
    ]


def _load_index(layout: Layout, recipe: str, refs: list[ShardRef]) -> tuple[Index, list[int]]:
    """The index over ``refs`` from their decision files, and each shard's document count."""
    tables = [read_parquet(_decision_path(layout, recipe, r)) for r in refs]
    index = Index()
    for t in tables:
        index.keys += t.column("key").to_pylist()
        index.exact += t.column("exact").to_pylist()
        index.status += t.column("status").to_pylist()
        index.survivor += t.column("survivor_key").to_pylist()
    return index, [t.num_rows for t in tables]


def _split_rows(rows: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Ascending global row numbers over consecutive shards of ``sizes``, as per-shard rows."""
    bounds = np.cumsum([0, *sizes])
    pairs = zip(bounds[:-1], bounds[1:], strict=True)
    return [rows[(rows >= lo) & (rows < hi)] - lo for lo, hi in pairs]


def _valid_and_stale(
    exp: Experiment, layout: Layout, recipe: str, fingerprint: str
) -> tuple[list[ShardRef], list[ShardRef]]:
    """Decided shards whose pool and params are unchanged, and decided shards that went stale."""
    valid, stale = [], []
    pools = {(r.source, r.shard) for r in _pool_shards(exp, layout, recipe)}
    for source in exp.recipes[recipe].sources:
        for path in sorted(layout.dedup_decisions_dir(recipe, source).glob("*.parquet")):
            if path.name.startswith("."):
                continue
            ref = ShardRef(source, path.stem)
            stamp = _read_stamp(path)
            ok = (source, ref.shard) in pools and stamp == _stamp(layout, recipe, ref, fingerprint)
            (valid if ok else stale).append(ref)
    return valid, stale


def _clear(layout: Layout, recipe: str, refs: list[ShardRef]) -> None:
    for ref in refs:
        _decision_path(layout, recipe, ref).unlink(missing_ok=True)


def _write_decisions(
    layout: Layout, recipe: str, ref: ShardRef, rows: dict[str, list], stamp: dict[str, str]
) -> None:
    table = pa.table(rows, schema=DECISION_SCHEMA).replace_schema_metadata(
        {META: json.dumps(stamp, sort_keys=True).encode()}
    )
    path = _decision_path(layout, recipe, ref)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _decide_pending(
    exp: Experiment,
    layout: Layout,
    recipe: str,
    valid: list[ShardRef],
    pending: list[ShardRef],
    fingerprint: str,
    compute: Compute,
) -> dict[str, int]:
    """Decide every pending shard in one batch against the index of ``valid`` shards.

    Per shard (a task each through ``compute``: local threads or Ray tasks) the texts are read
    once, digested and MinHash-signed into the signature cache; the batch then holds keys and
    digests only, and its near duplicates come from banding the cached signatures one band at
    a time (:func:`~corpuslab.dedup.banded.banded_components`): bounded memory, the same
    components as the in-memory path.
    """
    params = exp.recipes[recipe].dedup
    index, index_sizes = _load_index(layout, recipe, valid)

    def job(ref: ShardRef) -> tuple[str, str, DedupParams]:
        return (str(_pool_path(layout, recipe, ref)), str(_cache_path(layout, recipe, ref)), params)

    progress = Progress(f"dedup/{recipe}: MinHash signatures", len(valid) + len(pending), "shards")
    compute.map(ensure_signatures, [job(r) for r in valid])
    progress.advance(len(valid), note="indexed shards")
    inputs = compute.map(shard_dedup_inputs, [job(r) for r in pending])
    progress.advance(len(pending), note=f"{sum(i.computed for i in inputs)} computed")
    keys = [doc_key(r.source, r.shard, i) for r, got in zip(pending, inputs, strict=True)
            for i in got.ids]  # fmt: skip
    digests = [d for got in inputs for d in got.digests]
    sizes = [len(got.ids) for got in inputs]

    def near(index_rows: np.ndarray, rows: np.ndarray) -> Components:
        shards = [
            SignatureShard(_cache_path(layout, recipe, ref), local)
            for refs, rows_of, n_of in ((valid, index_rows, index_sizes), (pending, rows, sizes))
            for ref, local in zip(refs, _split_rows(rows_of, n_of), strict=True)
        ]
        return banded_components(shards, params, layout.dedup_dir(recipe))

    found = decide(index, keys, digests, near)
    at = 0
    for ref, n in zip(pending, sizes, strict=True):
        sl = slice(at, at + n)
        at += n
        shard_keys = found.keys[sl]
        survivors = found.survivor[sl]
        _write_decisions(
            layout,
            recipe,
            ref,
            {
                "key": shard_keys,
                "id": [split_key(k)[2] for k in shard_keys],
                "source": [ref.source] * n,
                "shard": [ref.shard] * n,
                "status": found.status[sl],
                "survivor_key": survivors,
                "duplicate_of": [s.replace(KEY_SEP, "/") for s in survivors],
                "exact": found.exact[sl],
            },
            _stamp(layout, recipe, ref, fingerprint),
        )
    return {
        "batch_shards": len(pending),
        "batch_documents": len(keys),
        "index_documents": len(index),
        "signature_shards_computed": sum(got.computed for got in inputs),
        "candidate_pairs": found.n_candidate_pairs,
        "verified_pairs": found.n_verified_pairs,
    }


def materialize_dedup_shard(
    exp: Experiment,
    layout: Layout,
    recipe: str,
    source: str,
    shard: str,
    full_recompute: str = "",
    compute: Compute | None = None,
) -> dict:
    """The dedup decisions of one pool shard (deciding every undecided shard in one batch).

    ``full_recompute``: a value not seen before clears the recipe's index first, so the whole
    recipe is decided again as one batch (the same result as a build from scratch).
    """
    ddir = layout.dedup_dir(recipe)
    this = ShardRef(source, shard)
    if not _pool_path(layout, recipe, this).is_file():
        raise FileNotFoundError(
            f"{_pool_path(layout, recipe, this)} is missing: materialize pool/{recipe}/{source} "
            f"[{shard}] first"
        )
    fingerprint = _params_fingerprint(exp, recipe)
    batch: dict[str, int] = {}
    with _locked(ddir):
        token_file = ddir / "full_recompute.json"
        if full_recompute:
            done = json.loads(token_file.read_text()) if token_file.is_file() else {}
            if done.get("token") != full_recompute:
                for src in exp.recipes[recipe].sources:
                    for old in layout.dedup_decisions_dir(recipe, src).glob("*.parquet"):
                        old.unlink()
                write_json({"token": full_recompute}, token_file)
        valid, stale = _valid_and_stale(exp, layout, recipe, fingerprint)
        if stale:
            stale_keys = {ref.name() for ref in stale}
            index, _ = _load_index(layout, recipe, valid)
            leaning = sorted(
                {
                    "/".join(split_key(k)[:2])
                    for k, s in zip(index.keys, index.survivor, strict=True)
                    if s != k and "/".join(split_key(s)[:2]) in stale_keys
                }
            )
            if leaning:
                raise DedupIndexError(
                    f"dedup/{recipe}: pool shards {sorted(stale_keys)} changed since they were "
                    f"deduplicated, and shards {leaning} dropped documents as duplicates of "
                    "theirs; decide the recipe again as a whole: corpuslab materialize --select "
                    f"'dedup/{recipe}/*' --full-recompute"
                )
            _clear(layout, recipe, stale)
        decided = {r.name() for r in valid}
        if this.name() not in decided:
            pending = [r for r in _pool_shards(exp, layout, recipe) if r.name() not in decided]
            batch = _decide_pending(
                exp, layout, recipe, valid, pending, fingerprint, compute or LocalCompute()
            )
    path = _decision_path(layout, recipe, this)
    t = read_parquet(path)
    status = Counter(t.column("status").to_pylist())
    return {
        "path": layout.url(path),
        "documents": t.num_rows,
        "kept": status.get(KEPT, 0),
        "exact_duplicates": status.get(EXACT, 0),
        "near_duplicates": status.get("near_duplicate", 0),
        **({"batch": batch} if batch else {"batch": "decided in an earlier batch"}),
        **_survivor_check(exp, layout, recipe, this),
        "data_version": digest(path),
    }


def survivor_problems(exp: Experiment, layout: Layout, recipe: str, ref: ShardRef) -> list[str]:
    """``survivors_kept``: what is wrong with a shard's decision file, read back, if anything.

    Every document of the pool shard is decided exactly once and nothing else is; every dropped
    document points at a survivor that is a pool document of the recipe its own shard keeps; no
    two documents the recipe keeps are exact duplicates (this shard's texts re-hashed from the
    pool, the other shards' digests from their decision files). At most ``SHOWN_IDS`` problems.
    """
    t = read_parquet(_decision_path(layout, recipe, ref))
    keys = t.column("key").to_pylist()
    status = t.column("status").to_pylist()
    pool = read_parquet(_pool_path(layout, recipe, ref), columns=["id", "text"])
    pool_keys = [doc_key(ref.source, ref.shard, i) for i in pool.column("id").to_pylist()]
    problems: list[str] = []
    counts = Counter(keys)
    problems += [f"decided {n} times: {k!r}" for k, n in sorted(counts.items()) if n > 1]
    problems += [f"decided but not in the pool: {k!r}" for k in sorted(set(keys) - set(pool_keys))]
    problems += [f"not decided: {k!r}" for k in sorted(set(pool_keys) - set(keys))]
    status_of: dict[str, str] = dict(zip(keys, status, strict=True))
    wanted: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for k, st, sv in zip(keys, status, t.column("survivor_key").to_pylist(), strict=True):
        if st != KEPT:
            source, shard, _ = split_key(sv)
            wanted.setdefault((source, shard), []).append((k, sv))
    others: dict[bytes, str] = {}
    for source in exp.recipes[recipe].sources:
        for path in sorted(layout.dedup_decisions_dir(recipe, source).glob("*.parquet")):
            if path.name.startswith(".") or (source, path.stem) == (ref.source, ref.shard):
                continue
            other = read_parquet(path, columns=["key", "status", "exact"])
            o_status = dict(
                zip(
                    other.column("key").to_pylist(), other.column("status").to_pylist(), strict=True
                )
            )
            for k, sv in wanted.pop((source, path.stem), []):
                if o_status.get(sv) != KEPT:
                    problems.append(f"{k!r} points at {sv!r}, which is not kept")
            for k, st, h in zip(o_status, o_status.values(), other.column("exact").to_pylist(),
                                strict=True):  # fmt: skip
                if st == KEPT:
                    others[h] = k
    for k, sv in wanted.pop((ref.source, ref.shard), []):
        if status_of.get(sv) != KEPT:
            problems.append(f"{k!r} points at {sv!r}, which is not kept")
    for pairs in wanted.values():
        problems += [f"{k!r} points at {sv!r}, whose shard is not decided" for k, sv in pairs]
    texts = dict(zip(pool_keys, pool.column("text").to_pylist(), strict=True))
    mine: dict[bytes, str] = {}
    for k, st in status_of.items():
        if st != KEPT or k not in texts:
            continue
        h = dedup_lib.normalized_hash(texts[k])
        twin = mine.get(h) or others.get(h)
        if twin is not None:
            pair = ", ".join(map(repr, sorted((twin, k))))
            problems.append(f"kept documents are exact duplicates: {pair}")
        mine[h] = k
    return problems[:SHOWN_IDS]


def _survivor_check(exp: Experiment, layout: Layout, recipe: str, ref: ShardRef) -> dict:
    problems = survivor_problems(exp, layout, recipe, ref)
    return {"survivors_kept": not problems} | ({"survivor_problems": problems} if problems else {})


def recipe_decisions(exp: Experiment, layout: Layout, recipe: str) -> pa.Table:
    """Every decided document of the recipe (the index's decision files, concatenated)."""
    tables = []
    for source in exp.recipes[recipe].sources:
        for path in sorted(layout.dedup_decisions_dir(recipe, source).glob("*.parquet")):
            if not path.name.startswith("."):
                tables.append(read_parquet(path))
    return pa.concat_tables(tables) if tables else DECISION_SCHEMA.empty_table()


def dedup_summary(exp: Experiment, layout: Layout, recipe: str) -> dict:
    """Documents, exact and near duplicates and clusters across the recipe's decided shards."""
    t = recipe_decisions(exp, layout, recipe)
    status = t.column("status").to_pylist()
    near = zip(t.column("survivor_key").to_pylist(), status, strict=True)
    survivors = [s for s, st in near if st == "near_duplicate"]
    return {
        "documents": t.num_rows,
        "exact_duplicates": status.count(EXACT),
        "near_duplicates": status.count("near_duplicate"),
        "clusters": len(set(survivors)),
        "kept": status.count(KEPT),
    }
