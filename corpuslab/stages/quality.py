"""``quality_model/<recipe>``: the fastText quality classifier and its keep threshold.

The model is fixed by its declaration and its training sample: the sample (positives from the
declared source, negatives from the deduplicated pool) is drawn once and recorded with a digest
of its texts; materializing again with the same declaration and an intact sample reuses the
model bit for bit, so filtered shards stay fresh. New pool shards do not even request it (its
automation condition reacts to its declaration only: ``jobs/automation.py``). The
keep threshold (``keep_fraction`` of the pool at training time, or ``min_score``) is recorded
too; every filtered shard, old or new, is scored by this model against this threshold. A new
``retrain`` token (or a declaration change) draws a new sample and trains again.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa

from corpuslab import quality as quality_lib
from corpuslab.declarations import Experiment
from corpuslab.eval.suite import reserved
from corpuslab.fileio import digest, read_json, read_parquet, write_json
from corpuslab.layout import Layout
from corpuslab.stages.common import doc_key, pool_tables
from corpuslab.stages.dedup import recipe_decisions
from corpuslab.stages.versions import fingerprint

MODEL = "model.bin"
SUMMARY = "summary.json"
SAMPLE = "sample.json"


def _texts_digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _positives(exp: Experiment, layout: Layout, source: str) -> tuple[pa.Table, int]:
    """Every document of the positive source with its key (source, shard, id), less those an
    evaluation suite holds out (``evals.<suite>.heldout``: they never teach the filter what
    "good" looks like); and how many were held out."""
    fraction = exp.reserved_fraction(source)
    tables, held = [], 0
    for path in sorted(layout.corpus_dir(source).glob("*.parquet")):
        if path.name.startswith("."):
            continue
        t = read_parquet(path, columns=["id", "text"])
        if fraction:
            keep = [not reserved(i, fraction) for i in t.column("id").to_pylist()]
            held += t.num_rows - sum(keep)
            t = t.filter(pa.array(keep, pa.bool_()))
        keys = [doc_key(source, path.stem, i) for i in t.column("id").to_pylist()]
        tables.append(t.append_column("key", pa.array(keys, pa.string())))
    if not tables or not sum(t.num_rows for t in tables):
        raise ValueError(f"positive source {source!r} has no documents: materialize its corpus")
    return pa.concat_tables(tables), held


def _deduplicated_pool(exp: Experiment, layout: Layout, recipe: str) -> pa.Table:
    """The recipe's pool without the documents its dedup index drops."""
    pool = pool_tables(exp, layout, recipe, ["text"])
    t = recipe_decisions(exp, layout, recipe)
    dropped = {
        k
        for k, s in zip(t.column("key").to_pylist(), t.column("status").to_pylist(), strict=True)
        if s != "kept"
    }
    keep = pa.array([k not in dropped for k in pool.column("key").to_pylist()], pa.bool_())
    return pool.filter(keep)


def _recorded_model_is_current(
    exp: Experiment, layout: Layout, recipe: str, declared: str, retrain: str
) -> dict[str, Any] | None:
    """The recorded summary when model, declaration and sample texts are all unchanged."""
    qdir = layout.quality_dir(recipe)
    if not all((qdir / f).is_file() for f in (MODEL, SUMMARY, SAMPLE)):
        return None
    sample = read_json(qdir / SAMPLE)
    if sample.get("declaration") != declared or sample.get("retrain", "") != retrain:
        return None
    if sample.get("model_digest") != digest(qdir / MODEL):
        return None
    params = exp.recipes[recipe].quality
    assert params is not None
    positives, _ = _positives(exp, layout, params.positive_source)
    pool = _deduplicated_pool(exp, layout, recipe)
    pos_text = dict(zip(positives.column("key").to_pylist(), positives.column("text").to_pylist(),
                        strict=True))  # fmt: skip
    pool_text = dict(zip(pool.column("key").to_pylist(), pool.column("text").to_pylist(),
                         strict=True))  # fmt: skip
    try:
        texts = [pos_text[k] for k in sample["positives"]] + [
            pool_text[k] for k in sample["negatives"]
        ]
    except KeyError:
        return None  # a sampled document left the pool (or was dropped as a duplicate)
    if _texts_digest(texts) != sample["texts_digest"]:
        return None
    return read_json(qdir / SUMMARY)


def materialize_quality_model(
    exp: Experiment, layout: Layout, recipe: str, retrain: str = ""
) -> dict:
    """Train (or keep) the recipe's quality classifier and record its sample and threshold.

    Negatives are a seeded sample of the deduplicated pool outside the positive source;
    positives the declared source. A recipe without a ``quality`` declaration keeps every
    document (threshold 0, every score 1.0). ``retrain``: a token not seen before forces a new
    sample and training.
    """
    params = exp.recipes[recipe].quality
    qdir = layout.quality_dir(recipe)
    if params is None:
        summary: dict[str, Any] = {"enabled": False, "threshold": 0.0}
        write_json(summary, qdir / SUMMARY)
        return summary | {"data_version": digest(qdir / SUMMARY)}
    declared = fingerprint(params)
    recorded = _recorded_model_is_current(exp, layout, recipe, declared, retrain)
    if recorded is not None:
        return recorded | {
            "reused": True,
            "data_version": digest(qdir / MODEL, qdir / SUMMARY),
        }
    positives_t, reserved_positives = _positives(exp, layout, params.positive_source)
    pool = _deduplicated_pool(exp, layout, recipe)
    # negatives never come from the positive source, should a recipe also pool it
    candidates = [
        i for i, s in enumerate(pool.column("source").to_pylist()) if s != params.positive_source
    ]
    all_positives = positives_t.column("text").to_pylist()
    pos_idx, neg_idx = quality_lib.training_sample(len(all_positives), candidates, params)
    texts = pool.column("text").to_pylist()
    positives = [all_positives[i] for i in pos_idx]
    negatives = [texts[i] for i in neg_idx]
    metrics = quality_lib.train_quality_model(positives, negatives, params, qdir / MODEL)
    # the threshold that keeps `keep_fraction` of today's pool; later shards meet the same bar
    scores = quality_lib.score_texts(qdir / MODEL, texts)
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
    pos_keys = positives_t.column("key").to_pylist()
    pool_keys = pool.column("key").to_pylist()
    write_json(
        {
            "declaration": declared,
            "retrain": retrain,
            "positives": [pos_keys[i] for i in pos_idx],
            "negatives": [pool_keys[i] for i in neg_idx],
            "texts_digest": _texts_digest(positives + negatives),
            "model_digest": digest(qdir / MODEL),
        },
        qdir / SAMPLE,
    )
    write_json(summary, qdir / SUMMARY)
    return summary | {"reused": False, "data_version": digest(qdir / MODEL, qdir / SUMMARY)}


def score_shard(layout: Layout, recipe: str, texts: list[str]) -> np.ndarray:
    """Scores of ``texts`` by the recipe's recorded model (1.0 each without a quality filter)."""
    qdir = layout.quality_dir(recipe)
    if not read_json(qdir / SUMMARY).get("enabled"):
        return np.ones(len(texts))
    return quality_lib.score_texts(qdir / MODEL, texts)
