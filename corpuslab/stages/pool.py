"""``pool/<recipe>/<source>`` and ``filtered/<recipe>/<source>``: per-shard keep/drop decisions.

The pool first sets aside the documents an evaluation suite holds out (``eval_heldout``), then
applies the recipe's per-document steps to the rest; the filtered pool removes the recipe's
duplicates and the documents below its quality threshold. Every dropped document keeps its
reason in the stage's decision table, which dbt reads.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from corpuslab.declarations import Experiment
from corpuslab.eval.suite import reserved
from corpuslab.fileio import digest, read_json, read_parquet, write_parquet
from corpuslab.filters import Pipeline
from corpuslab.layout import Layout
from corpuslab.stages.common import decisions_table

# the decision of a document an evaluation suite holds out (evals.<suite>.heldout)
RESERVED = ("eval_heldout", "reserved_for_evaluation")


def _conservation(out_path, decisions_path, n_in: int) -> tuple[int, int, bool]:  # noqa: ANN001
    """(kept, dropped, conserved) read back from the written output and decision files."""
    n_kept = read_parquet(out_path, columns=["id"]).num_rows
    back = read_parquet(decisions_path, columns=["kept"])
    n_dropped = back.num_rows - int(pc.sum(back.column("kept")).as_py() or 0)
    return n_kept, n_dropped, n_kept + n_dropped == n_in


def materialize_pool_shard(
    exp: Experiment, layout: Layout, recipe: str, source: str, shard: str
) -> dict:
    """Apply the recipe's per-document steps to one corpus shard; every drop keeps its reason."""
    decl = exp.recipes[recipe]
    table = read_parquet(layout.corpus_dir(source) / f"{shard}.parquet")
    # documents an evaluation suite holds out never reach the recipe's steps (nor training)
    fraction = exp.reserved_fraction(source)
    held = [reserved(i, fraction) for i in table.column("id").to_pylist()] if fraction else []
    candidates = [i for i, h in enumerate(held) if not h] if fraction else range(table.num_rows)
    texts = table.column("text").to_pylist()
    pipeline = Pipeline.from_decls(decl.steps)
    result = pipeline.run([texts[i] for i in candidates])
    decided: list[tuple[str, str] | None] = [RESERVED] * table.num_rows
    for i, d, text in zip(candidates, result.decisions, result.texts, strict=True):
        decided[i] = d
        texts[i] = text
    keep_mask = pa.array([d is None for d in decided], pa.bool_())
    # modifying steps (C4 lines, paragraph dedup) change the text that is kept
    cleaned = table.set_column(
        table.schema.get_field_index("text"), "text", pa.array(texts, pa.string())
    )
    kept = cleaned.filter(keep_mask)
    out = layout.pool_dir(recipe, source) / f"{shard}.parquet"
    write_parquet(kept, out)
    decisions = decisions_table(table.column("id").to_pylist(), shard, decided)
    dpath = layout.decisions_dir("pool", source, recipe) / f"{shard}.parquet"
    write_parquet(decisions, dpath)
    if decl.write_dropped:
        dropped = table.filter(pc.invert(keep_mask)).append_column(
            "reason", decisions.filter(pc.invert(decisions.column("kept"))).column("reason")
        )
        write_parquet(dropped, layout.dropped_dir(recipe, source) / f"{shard}.parquet")
    n_kept, n_dropped, conserved = _conservation(out, dpath, table.num_rows)
    return {
        "path": str(out),
        "documents_in": table.num_rows,
        "kept": n_kept,
        "dropped": n_dropped,
        "drop_reasons": dict(result.drop_reasons()),
        "reserved_for_eval": sum(held),
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
        "conserved": conserved,
        "data_version": digest(out),
    }


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
    write_parquet(decisions_table(table.column("id").to_pylist(), shard, decided), dpath)
    n_kept, n_dropped, conserved = _conservation(out, dpath, table.num_rows)
    return {
        "path": str(out),
        "documents_in": table.num_rows,
        "kept": n_kept,
        "dropped": n_dropped,
        "drop_reasons": dict(Counter(f"{d[0]}:{d[1]}" for d in decided if d is not None)),
        "conserved": conserved,
        "data_version": digest(out),
    }
