"""``pool/<recipe>/<source>`` and ``filtered/<recipe>/<source>``: per-shard keep/drop decisions.

The pool first sets aside the documents an evaluation suite holds out (``eval_heldout``), then
applies the recipe's per-document steps to the rest; the filtered pool removes the shard's
duplicates (``dedup/<recipe>/<source>``) and the documents below the quality threshold. Every
dropped document keeps its reason in the stage's decision table, which dbt reads.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from corpuslab.arrow import pc
from corpuslab.declarations import Experiment
from corpuslab.eval.suite import reserved
from corpuslab.fileio import digest, read_json, read_parquet, write_parquet
from corpuslab.filters import Pipeline
from corpuslab.layout import Layout
from corpuslab.stages.common import check_conservation, decisions_table
from corpuslab.stages.quality import score_shard

# the decision of a document an evaluation suite holds out (evals.<suite>.heldout)
RESERVED = ("eval_heldout", "reserved_for_evaluation")


def materialize_pool_shard(
    exp: Experiment, layout: Layout, recipe: str, source: str, shard: str
) -> dict:
    """Apply the recipe's per-document steps to one corpus shard; every drop keeps its reason."""
    decl = exp.recipes[recipe]
    src = layout.corpus_dir(source) / f"{shard}.parquet"
    table = read_parquet(src)
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
    check = check_conservation(src, out, dpath)
    return {
        "path": layout.url(out),
        "documents_in": check.documents_in,
        "kept": check.kept,
        "dropped": check.dropped,
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
        "conserved": check.conserved,
        **check.report(),
        "data_version": digest(out),
    }


def materialize_filtered_shard(
    exp: Experiment, layout: Layout, recipe: str, source: str, shard: str
) -> dict:
    """Pool shard minus its dedup drops minus documents below the recorded quality threshold.

    Scores come from the recipe's recorded model (``quality_model/<recipe>``) and are written
    per shard for the score histogram; dropped documents keep their reason.
    """
    src = layout.pool_dir(recipe, source) / f"{shard}.parquet"
    table = read_parquet(src)
    ids = table.column("id").to_pylist()
    dpath = layout.dedup_decisions_dir(recipe, source) / f"{shard}.parquet"
    dedup = read_parquet(dpath, columns=["id", "status"])
    status = dict(
        zip(dedup.column("id").to_pylist(), dedup.column("status").to_pylist(), strict=True)
    )
    if set(status) != set(ids):
        raise ValueError(
            f"{dpath} does not decide exactly the documents of pool/{recipe}/{source} "
            f"[{shard}]: re-materialize dedup/{recipe}/{source} [{shard}]"
        )
    threshold = float(read_json(layout.quality_dir(recipe) / "summary.json")["threshold"])
    unique = [i for i, doc_id in enumerate(ids) if status[doc_id] == "kept"]
    texts = table.column("text").to_pylist()
    scores = score_shard(layout, recipe, [texts[i] for i in unique])
    score_at = dict(zip(unique, scores.tolist(), strict=True))
    decided: list[tuple[str, str] | None] = []
    doc_scores: list[float | None] = []
    for i, doc_id in enumerate(ids):
        if status[doc_id] != "kept":
            decided.append(("dedup", status[doc_id]))
            doc_scores.append(None)
            continue
        s = score_at[i]
        doc_scores.append(s)
        decided.append(None if s >= threshold else ("quality", "low_quality_score"))
    keep_mask = pa.array([d is None for d in decided], pa.bool_())
    kept = table.append_column("quality_score", pa.array(doc_scores, pa.float64())).filter(
        keep_mask
    )
    out = layout.filtered_dir(recipe, source) / f"{shard}.parquet"
    write_parquet(kept, out)
    scored = pa.table(
        {
            "id": pa.array([ids[i] for i in unique], pa.string()),
            "shard": pa.array([shard] * len(unique), pa.string()),
            "score": pa.array(scores, pa.float64()),
        }
    )
    write_parquet(scored, layout.scores_dir(recipe, source) / f"{shard}.parquet")
    decisions_path = layout.decisions_dir("filtered", source, recipe) / f"{shard}.parquet"
    write_parquet(decisions_table(ids, shard, decided), decisions_path)
    check = check_conservation(src, out, decisions_path)
    return {
        "path": layout.url(out),
        "documents_in": check.documents_in,
        "kept": check.kept,
        "dropped": check.dropped,
        "drop_reasons": dict(Counter(f"{d[0]}:{d[1]}" for d in decided if d is not None)),
        "conserved": check.conserved,
        **check.report(),
        "data_version": digest(out),
    }
