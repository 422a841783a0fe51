"""Pure stage functions called by the assets: read inputs, call corpuslab, write outputs.

They take a Layout and declarations and return plain dicts, so tests can call them without
Dagster; the asset definitions stay a few lines each.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from corpuslab import dedup as dedup_lib
from corpuslab import quality as quality_lib
from corpuslab.config import Experiment
from corpuslab.documents import (
    CorpusError,
    list_shards,
    read_parquet,
    read_parquet_dir,
    read_raw_shard,
    write_jsonl,
    write_parquet,
)
from corpuslab.filters import Pipeline
from corpuslab.layout import Layout, atomic_path
from corpuslab.storage import StorageError, open_fs

DECISION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("shard", pa.string()),
        ("kept", pa.bool_()),
        ("step", pa.string()),
        ("reason", pa.string()),
    ]
)


def file_digest(*paths: Path) -> str:
    """Content hash of output files: the data version (unchanged outputs keep descendants fresh)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def write_json(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: materialize its upstream asset first")
    return json.loads(path.read_text())


def _decisions(ids: list[str], shard: str, decided: list[tuple[str, str] | None]) -> pa.Table:
    return pa.table(
        {
            "id": ids,
            "shard": [shard] * len(ids),
            "kept": [d is None for d in decided],
            "step": [None if d is None else d[0] for d in decided],
            "reason": [None if d is None else d[1] for d in decided],
        },
        schema=DECISION_SCHEMA,
    )


def doc_key(source: str, shard: str, doc_id: str) -> str:
    """A key unique across a recipe's shards: ids are only unique within one raw file."""
    return f"{source}\x1f{shard}\x1f{doc_id}"


def split_key(key: str) -> tuple[str, str, str]:
    source, shard, doc_id = key.split("\x1f", 2)
    return source, shard, doc_id


def _pool_tables(exp: Experiment, layout: Layout, recipe: str, columns: list[str]) -> pa.Table:
    """Every pool shard of a recipe with ``source``, ``shard`` and the unique ``key`` column."""
    tables = []
    for source in exp.recipes[recipe].sources:
        for path in sorted(layout.pool_dir(recipe, source).glob("*.parquet")):
            if path.name.startswith("."):
                continue
            t = read_parquet(path, columns=["id", *columns])
            n = t.num_rows
            keys = [doc_key(source, path.stem, i) for i in t.column("id").to_pylist()]
            tables.append(
                t.append_column("source", pa.array([source] * n, pa.string()))
                .append_column("shard", pa.array([path.stem] * n, pa.string()))
                .append_column("key", pa.array(keys, pa.string()))
            )
    if not tables:
        raise FileNotFoundError(f"recipe {recipe!r} has no pool shards yet: materialize pool first")
    return pa.concat_tables(tables)


def source_fs(
    exp: Experiment, layout: Layout, source: str, storage: Mapping[str, Any] | None = None
) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a source: local, or S3 with the resource's and YAML settings."""
    decl = exp.sources[source]
    return open_fs(decl.resolve(layout), **{**(storage or {}), **decl.storage})


def source_shards(
    exp: Experiment, layout: Layout, source: str, storage: Mapping[str, Any] | None = None
) -> dict[str, Path | str]:
    decl = exp.sources[source]
    try:
        fs, path = source_fs(exp, layout, source, storage)
        return list_shards(path, decl.format, fs=fs)
    except (CorpusError, StorageError) as exc:
        raise CorpusError(f"source {source!r} ({exp.where('sources', source)}): {exc}") from None


# ---------------------------------------------------------------- corpus


def materialize_corpus_shard(
    exp: Experiment,
    layout: Layout,
    source: str,
    shard: str,
    storage: Mapping[str, Any] | None = None,
) -> dict:
    """Normalize one raw shard into Parquet; malformed records go to quarantine with reasons."""
    shards = source_shards(exp, layout, source, storage)
    if shard not in shards:
        raise CorpusError(
            f"source {source!r} has no shard {shard!r} under "
            f"{exp.sources[source].resolve(layout)}; "
            f"known shards: {', '.join(sorted(shards)) or '(none)'}"
        )
    fs, _ = source_fs(exp, layout, source, storage)
    result = read_raw_shard(shards[shard], source, fs=fs, shard=shard)
    out = layout.corpus_dir(source) / f"{shard}.parquet"
    qpath = layout.quarantine_dir(source) / f"{shard}.jsonl"
    write_jsonl(result.quarantined, qpath)
    write_parquet(result.table, out)
    ids = result.table.column("id").to_pylist()
    q_ids = [f"{q['file']}:{q['line']}" for q in result.quarantined]
    reasons = [q["reason"].split(":", 1)[0] for q in result.quarantined]
    decisions = pa.concat_tables(
        [
            _decisions(ids, shard, [None] * len(ids)),
            _decisions(q_ids, shard, [("read", r) for r in reasons]),
        ]
    )
    write_parquet(decisions, layout.decisions_dir("corpus", source) / f"{shard}.parquet")
    # the check reads back what was written rather than trusting the counters above
    written = read_parquet(out, columns=["id"]).num_rows
    with open(qpath, encoding="utf-8") as fh:
        quarantined = sum(1 for _ in fh)
    return {
        "path": str(out),
        "raw_file": str(shards[shard]),
        "records": result.n_read,
        "documents": written,
        "quarantined": quarantined,
        "quarantine_reasons": dict(Counter(reasons)),
        "skipped": dict(result.skipped),
        "text_bytes": int(
            pc.sum(pc.binary_length(result.table.column("text").cast(pa.binary()))).as_py() or 0
        ),
        "conserved": written + quarantined == result.n_read,
        "data_version": file_digest(out, qpath),
    }


# ---------------------------------------------------------------- pool


def materialize_pool_shard(
    exp: Experiment, layout: Layout, recipe: str, source: str, shard: str
) -> dict:
    """Apply the recipe's per-document steps to one corpus shard; every drop keeps its reason."""
    decl = exp.recipes[recipe]
    table = read_parquet(layout.corpus_dir(source) / f"{shard}.parquet")
    pipeline = Pipeline.from_decls(decl.steps)
    result = pipeline.run(table.column("text").to_pylist())
    decided = result.decisions
    keep_mask = pa.array([d is None for d in decided], pa.bool_())
    # modifying steps (C4 lines, paragraph dedup) change the text that is kept
    cleaned = table.set_column(
        table.schema.get_field_index("text"), "text", pa.array(result.texts, pa.string())
    )
    kept = cleaned.filter(keep_mask)
    out = layout.pool_dir(recipe, source) / f"{shard}.parquet"
    write_parquet(kept, out)
    decisions = _decisions(table.column("id").to_pylist(), shard, decided)
    dpath = layout.decisions_dir("pool", source, recipe) / f"{shard}.parquet"
    write_parquet(decisions, dpath)
    if decl.write_dropped:
        dropped = table.filter(pc.invert(keep_mask)).append_column(
            "reason", decisions.filter(pc.invert(decisions.column("kept"))).column("reason")
        )
        write_parquet(dropped, layout.dropped_dir(recipe, source) / f"{shard}.parquet")
    reasons = Counter(f"{d[0]}:{d[1]}" for d in decided if d is not None)
    n_kept = read_parquet(out, columns=["id"]).num_rows
    back = read_parquet(dpath, columns=["kept"])
    n_dropped = back.num_rows - int(pc.sum(back.column("kept")).as_py() or 0)
    return {
        "path": str(out),
        "documents_in": table.num_rows,
        "kept": n_kept,
        "dropped": n_dropped,
        "drop_reasons": dict(reasons),
        "modified": sum(result.modified),
        "steps": {
            st.name: {
                "documents_in": st.documents_in,
                "dropped": dict(st.dropped),
                "modified": st.modified,
                f"{st.unit or 'unit'}s_removed": st.removed,
                "seconds": round(st.seconds, 3),
            }
            for st in result.steps
        },
        "conserved": n_kept + n_dropped == table.num_rows,
        "data_version": file_digest(out),
    }


# ---------------------------------------------------------------- dedup


def materialize_dedup(exp: Experiment, layout: Layout, recipe: str) -> dict:
    """Exact (normalized hash) then MinHash-LSH near-dup clusters across all shards of a recipe."""
    decl = exp.recipes[recipe]
    pool = _pool_tables(exp, layout, recipe, ["text"])
    keys = pool.column("key").to_pylist()
    texts = pool.column("text").to_pylist()
    exact = dedup_lib.exact_duplicates(keys, texts)
    remaining = [i for i, k in enumerate(keys) if k not in exact.drop]
    # MinHash signatures are cached per pool shard (keyed by its content hash): a new shard
    # computes only its own, the others are reused
    sig_dir = layout.dedup_dir(recipe) / "signatures"
    shard_col = pool.column("shard").to_pylist()
    source_col = pool.column("source").to_pylist()
    parts, computed, wanted = [], 0, set()
    start = 0
    while start < len(keys):
        end = start
        while end < len(keys) and (source_col[end], shard_col[end]) == (
            source_col[start],
            shard_col[start],
        ):
            end += 1
        source, shard = source_col[start], shard_col[start]
        cache = sig_dir / f"source={source}" / f"{shard}.npz"
        wanted.add(cache)
        _, sigs, fresh = dedup_lib.shard_signatures(
            cache,
            decl.dedup,
            lambda a=start, b=end: (keys[a:b], texts[a:b]),
            key=file_digest(layout.pool_dir(recipe, source) / f"{shard}.parquet"),
        )
        computed += fresh
        parts.append(sigs)
        start = end
    for stale in sig_dir.glob("*/*.npz"):
        if stale not in wanted:
            stale.unlink()
    signatures = np.concatenate(parts) if parts else np.zeros((0, decl.dedup.num_perm), np.uint64)
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
                "duplicate_of": survivor.replace("\x1f", "/"),
                "source": source,
                "shard": shard,
                "key": key,
                "survivor_key": survivor,
            }
        )
    ids = keys
    out = layout.dedup_dir(recipe) / "drop.parquet"
    schema = pa.schema(
        [
            (n, pa.string())
            for n in ("id", "reason", "duplicate_of", "source", "shard", "key", "survivor_key")
        ]
    )
    write_parquet(pa.Table.from_pylist(rows, schema=schema), out)
    # a real invariant: every dropped document points at a survivor that is itself kept
    dropped = {r["key"] for r in rows}
    survivors_ok = all(r["survivor_key"] not in dropped for r in rows)
    summary = {
        "documents": len(ids),
        "exact_duplicates": len(exact.drop),
        "near_duplicates": len(near.drop),
        "clusters": len({near.clusters[d] for d in near.drop}),
        "kept": len(ids) - len(dropped),
        "survivors_kept": survivors_ok,
        "signature_shards_computed": computed,
        "signature_shards_reused": len(parts) - computed,
        "params": decl.dedup.model_dump(),
    }
    write_json(summary, layout.dedup_dir(recipe) / "summary.json")
    summary["data_version"] = file_digest(out)
    return summary


# ---------------------------------------------------------------- quality


def materialize_quality_model(exp: Experiment, layout: Layout, recipe: str) -> dict:
    """Train fastText: declared positive source vs. a sample of the pool; score the whole pool."""
    decl = exp.recipes[recipe]
    params = decl.quality
    qdir = layout.quality_dir(recipe)
    drop = set(
        read_parquet(layout.dedup_dir(recipe) / "drop.parquet", columns=["key"])
        .column("key")
        .to_pylist()
    )
    pool = _pool_tables(exp, layout, recipe, ["text"])
    pool = pool.filter(
        pa.array([k not in drop for k in pool.column("key").to_pylist()], pa.bool_())
    )
    if params is None:
        scores = np.ones(pool.num_rows)
        summary: dict[str, Any] = {"enabled": False, "threshold": 0.0}
    else:
        positives_t = read_parquet_dir(
            layout.corpus_dir(params.positive_source), columns=["id", "text"]
        )
        if positives_t.num_rows == 0:
            raise ValueError(
                f"recipe {recipe!r}: positive_source {params.positive_source!r} has no documents; "
                "materialize its corpus asset"
            )
        rng = np.random.default_rng(params.seed)
        # negatives never come from the positive source, should a recipe also pool it
        candidates = [
            i
            for i, s in enumerate(pool.column("source").to_pylist())
            if s != params.positive_source
        ]
        n_neg = min(params.negative_sample, len(candidates))
        neg_idx = (
            sorted(rng.choice(candidates, size=n_neg, replace=False).tolist()) if n_neg else []
        )
        positives = positives_t.column("text").to_pylist()
        if params.positive_sample is not None and params.positive_sample < len(positives):
            pick = sorted(rng.choice(len(positives), size=params.positive_sample, replace=False))
            positives = [positives[i] for i in pick]
        texts = pool.column("text").to_pylist()
        negatives = [texts[i] for i in neg_idx]
        metrics = quality_lib.train_quality_model(positives, negatives, params, qdir / "model.bin")
        scores = quality_lib.score_texts(qdir / "model.bin", texts)
        keep = quality_lib.select(scores, params)
        threshold = float(scores[keep].min()) if keep.any() else float("inf")
        summary = {
            "enabled": True,
            "threshold": threshold,
            "metrics": metrics,
            "positives": len(positives),
            "negatives": len(negatives),
            "scored": len(texts),
            "kept": int(keep.sum()),
        }
    scored = pa.table(
        {
            "id": pool.column("id"),
            "source": pool.column("source"),
            "shard": pool.column("shard"),
            "score": pa.array(scores, pa.float64()),
        }
    )
    write_parquet(scored, qdir / "scores.parquet")
    write_json(summary, qdir / "summary.json")
    summary["data_version"] = file_digest(qdir / "scores.parquet", qdir / "summary.json")
    return summary


# ---------------------------------------------------------------- filtered


def materialize_filtered_shard(
    exp: Experiment, layout: Layout, recipe: str, source: str, shard: str
) -> dict:
    """Pool shard minus duplicates minus documents below the quality threshold."""
    table = read_parquet(layout.pool_dir(recipe, source) / f"{shard}.parquet")

    def this_shard(t: pa.Table) -> pa.Table:
        return t.filter(
            pc.and_(pc.equal(t.column("source"), source), pc.equal(t.column("shard"), shard))
        )

    dups = this_shard(read_parquet(layout.dedup_dir(recipe) / "drop.parquet"))
    dup_reason = dict(
        zip(dups.column("id").to_pylist(), dups.column("reason").to_pylist(), strict=True)
    )
    qdir = layout.quality_dir(recipe)
    threshold = float(read_json(qdir / "summary.json")["threshold"])
    scores_t = this_shard(
        read_parquet(qdir / "scores.parquet", columns=["id", "source", "shard", "score"])
    )
    score_of = dict(
        zip(scores_t.column("id").to_pylist(), scores_t.column("score").to_pylist(), strict=True)
    )
    decided: list[tuple[str, str] | None] = []
    doc_scores: list[float | None] = []
    for doc_id in table.column("id").to_pylist():
        if doc_id in dup_reason:
            decided.append(("dedup", dup_reason[doc_id]))
            doc_scores.append(None)
            continue
        if doc_id not in score_of:
            raise ValueError(
                f"document {doc_id!r} of pool/{recipe}/{source}/{shard} has no quality score: "
                "re-materialize quality_model after the pool"
            )
        s = score_of[doc_id]
        doc_scores.append(s)
        decided.append(None if s >= threshold else ("quality", "low_quality_score"))
    keep_mask = pa.array([d is None for d in decided], pa.bool_())
    kept = table.append_column("quality_score", pa.array(doc_scores, pa.float64())).filter(
        keep_mask
    )
    out = layout.filtered_dir(recipe, source) / f"{shard}.parquet"
    write_parquet(kept, out)
    dpath = layout.decisions_dir("filtered", source, recipe) / f"{shard}.parquet"
    write_parquet(_decisions(table.column("id").to_pylist(), shard, decided), dpath)
    n_kept = read_parquet(out, columns=["id"]).num_rows
    back = read_parquet(dpath, columns=["kept"])
    n_dropped = back.num_rows - int(pc.sum(back.column("kept")).as_py() or 0)
    return {
        "path": str(out),
        "documents_in": table.num_rows,
        "kept": n_kept,
        "dropped": n_dropped,
        "drop_reasons": dict(Counter(f"{d[0]}:{d[1]}" for d in decided if d is not None)),
        "conserved": n_kept + n_dropped == table.num_rows,
        "data_version": file_digest(out),
    }
