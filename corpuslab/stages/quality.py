"""``quality_model/<recipe>``: the fastText quality classifier and the scores of the whole pool."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from corpuslab import quality as quality_lib
from corpuslab.declarations import Experiment
from corpuslab.eval.suite import reserved
from corpuslab.fileio import digest, read_parquet, write_json, write_parquet
from corpuslab.ingest.readers import read_parquet_dir
from corpuslab.layout import Layout
from corpuslab.stages.common import pool_tables


def materialize_quality_model(exp: Experiment, layout: Layout, recipe: str) -> dict:
    """Train fastText: declared positive source vs. a sample of the pool; score the whole pool.

    Duplicates found by ``dedup/<recipe>`` are neither negatives nor scored; positives held out
    by an evaluation suite (``evals.<suite>.heldout``) are left out. A recipe without a
    ``quality`` declaration scores every document 1.0 with threshold 0 (nothing is dropped).
    """
    decl = exp.recipes[recipe]
    params = decl.quality
    qdir = layout.quality_dir(recipe)
    drop = set(
        read_parquet(layout.dedup_dir(recipe) / "drop.parquet", columns=["key"])
        .column("key")
        .to_pylist()
    )
    pool = pool_tables(exp, layout, recipe, ["text"])
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
        # documents an evaluation suite holds out never teach the filter what "good" looks like
        fraction = exp.reserved_fraction(params.positive_source)
        if fraction:
            keep = [not reserved(i, fraction) for i in positives_t.column("id").to_pylist()]
            reserved_positives = positives_t.num_rows - sum(keep)
            positives_t = positives_t.filter(pa.array(keep, pa.bool_()))
        else:
            reserved_positives = 0
        if positives_t.num_rows == 0:
            raise ValueError(
                f"recipe {recipe!r}: positive_source {params.positive_source!r} has no documents; "
                "materialize its corpus asset"
            )
        # negatives never come from the positive source, should a recipe also pool it
        candidates = [
            i
            for i, s in enumerate(pool.column("source").to_pylist())
            if s != params.positive_source
        ]
        all_positives = positives_t.column("text").to_pylist()
        pos_idx, neg_idx = quality_lib.training_sample(len(all_positives), candidates, params)
        texts = pool.column("text").to_pylist()
        positives = [all_positives[i] for i in pos_idx]
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
            "positives_reserved_for_eval": reserved_positives,
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
    summary["data_version"] = digest(qdir / "scores.parquet", qdir / "summary.json")
    return summary
