"""``evalset/<suite>``: a suite's fixed evaluation set, and the proof that no run trains on it.

The set is built from the suite's declaration and the raw corpus only (held-out documents are
an id-hash slice of the corpus, task items come from files or the built-in generators, and
generated text that overlaps the raw corpus outside the held-out slices is set aside first), so
changing a recipe or a mixture never changes what the runs are evaluated on.

:func:`check_excluded` is the asset's blocking check: no held-out document id in any filtered
pool (what tokenizers and mixtures read) or any mixture's selection (what token files pack),
and no evaluation text (held-out documents, task items with their answers) sharing more than
the declared share of its word n-grams with the training pools (:mod:`corpuslab.eval.decontam`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from corpuslab.declarations import Experiment
from corpuslab.eval import evalset as es
from corpuslab.eval.decontam import overlap
from corpuslab.eval.suite import SUITE_VERSION, builtin_items, order_key, reserved
from corpuslab.eval.tasks import Item, TaskDecl, read_items
from corpuslab.fileio import read_json, write_json
from corpuslab.layout import Layout
from corpuslab.lmdata.encoded import pool_shards


def _corpus_shards(layout: Layout, source: str) -> list:
    folder = layout.corpus_dir(source)
    shards = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not shards:
        raise FileNotFoundError(f"{folder} has no shards: materialize corpus/{source} first")
    return shards


def _reserved_rows(exp: Experiment, layout: Layout, suite: str) -> dict[str, list[tuple]]:
    """Source -> every held-out document as (order key, shard, id, text), in the fixed order."""
    decl = exp.evals[suite].heldout
    out: dict[str, list[tuple]] = {}
    for source, fraction in (decl.reserved_sources() if decl else {}).items():
        rows = []
        for path in _corpus_shards(layout, source):
            t = pq.read_table(path, columns=["id", "text"])
            for doc_id, text in zip(
                t.column("id").to_pylist(), t.column("text").to_pylist(), strict=True
            ):
                if reserved(doc_id, fraction):
                    rows.append((order_key(f"{source}/{doc_id}"), path.stem, doc_id, text))
        out[source] = sorted(rows)
    return out


def raw_training_text(exp: Experiment, layout: Layout) -> Iterator[tuple[str, str]]:
    """(``corpus/<source>/<shard>/<id>``, text) of every raw document no suite holds out: all
    a recipe could ever train on, whatever the recipes declare."""
    for source in exp.sources:
        fraction = exp.reserved_fraction(source)
        for path in _corpus_shards(layout, source):
            t = pq.read_table(path, columns=["id", "text"])
            for doc_id, text in zip(
                t.column("id").to_pylist(), t.column("text").to_pylist(), strict=True
            ):
                if not (fraction and reserved(doc_id, fraction)):
                    yield f"corpus/{source}/{path.stem}/{doc_id}", text


def _set_aside(
    exp: Experiment, layout: Layout, suite: str, texts: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Eval texts overlapping the raw training text beyond the suite's threshold (key -> why)."""
    dc = exp.evals[suite].decontamination
    report = overlap(texts, raw_training_text(exp, layout), n=dc.ngram, threshold=dc.max_overlap)
    return {
        o.key: {"fraction": round(o.fraction, 4), "overlaps": o.examples}
        for o in report.contaminated
    }


def materialize_evalset(exp: Experiment, layout: Layout, suite: str) -> dict[str, Any]:
    """Build the suite's eval set (see the module docstring); returns its manifest.

    With ``decontamination.set_aside`` (the default), held-out documents and builtin task
    items that overlap the raw corpus outside the held-out slices are set aside first (listed
    in the manifest with the documents they overlap); then up to ``max_docs`` documents per
    source are kept for scoring and builtin tasks are built from them.
    """
    decl = exp.evals[suite]
    rows = _reserved_rows(exp, layout, suite)
    keys = pa.table(
        {
            "source": [s for s, rs in rows.items() for _ in rs],
            "shard": [r[1] for rs in rows.values() for r in rs],
            "id": [r[2] for rs in rows.values() for r in rs],
        },
        schema=es.RESERVED_SCHEMA,
    )
    aside: dict[str, dict[str, Any]] = {}
    if decl.decontamination.set_aside and rows:
        aside = _set_aside(
            exp, layout, suite, {f"heldout:{s}:{r[2]}": r[3] for s, rs in rows.items() for r in rs}
        )
    docs: dict[str, list[tuple[str, str]]] = {}
    scored: dict[str, list[tuple]] = {}
    max_docs = decl.heldout.max_docs if decl.heldout else 0
    for source, rs in rows.items():
        clean = [r for r in rs if f"heldout:{source}:{r[2]}" not in aside]
        docs[source] = [(r[2], r[3]) for r in clean]  # builtin tasks draw on every clean one
        scored[source] = clean[:max_docs]
    heldout = pa.table(
        {
            "source": [s for s, rs in scored.items() for _ in rs],
            "shard": [r[1] for rs in scored.values() for r in rs],
            "id": [r[2] for rs in scored.values() for r in rs],
            "text": [r[3] for rs in scored.values() for r in rs],
        },
        schema=es.HELDOUT_SCHEMA,
    )
    tasks: dict[str, tuple[TaskDecl, list[Item]]] = {}
    built: dict[str, list[Item]] = {}
    for task in decl.tasks:
        path = task.resolve_file(exp.home)
        if path is not None:
            tasks[task.label] = (task, read_items(path, task.icl_task_type, task.has_categories))
        else:
            built[task.label] = builtin_items(task, docs, capped=False)
    item_aside: dict[str, dict[str, Any]] = {}
    if decl.decontamination.set_aside and built:
        texts = {f"task:{lbl}:{it.id}": it.text() for lbl, its in built.items() for it in its}
        item_aside = _set_aside(exp, layout, suite, texts)
    for task in decl.tasks:
        if task.label in built:
            kept = [
                it for it in built[task.label] if f"task:{task.label}:{it.id}" not in item_aside
            ]
            tasks[task.label] = (task, kept[: task.max_items] if task.max_items else kept)
    tasks = {t.label: tasks[t.label] for t in decl.tasks}  # declaration order
    folder = layout.evalset_dir(suite)
    manifest = es.write_evalset(
        folder,
        suite,
        SUITE_VERSION,
        tasks,
        heldout,
        keys,
        extra={
            "python": sys.version.split()[0],  # the builtin signature task reads its stdlib
            "decontamination": decl.decontamination.model_dump(),
            "set_aside": {"count": len(aside) + len(item_aside), "texts": aside | item_aside},
        },
    )
    (folder / es.DECONTAMINATION).unlink(missing_ok=True)  # the check writes it anew
    return manifest


def _training_recipes(exp: Experiment) -> dict[str, list[str]]:
    """Recipe -> mixtures over it: every pool any token file is drawn from."""
    out: dict[str, list[str]] = {}
    for mixture, mdecl in exp.mixtures.items():
        out.setdefault(mdecl.recipe, []).append(mixture)
    return out


def check_excluded(exp: Experiment, layout: Layout, suite: str) -> dict[str, Any]:
    """The blocking check of ``evalset/<suite>``; writes and returns its report.

    ``passed`` is False when a held-out document id is in a filtered pool or a mixture's
    selection (listed in ``in_training``), or an evaluation text overlaps the training pools
    beyond the declared threshold (listed in ``contaminated`` with the training documents).
    """
    decl = exp.evals[suite]
    folder = layout.evalset_dir(suite)
    evalset = es.read_evalset(folder, suite, decl.tasks)
    keys = pq.read_table(folder / es.RESERVED)
    held = set(zip(keys.column("source").to_pylist(), keys.column("id").to_pylist(), strict=True))
    in_training: list[dict[str, str]] = []
    recipes = _training_recipes(exp)
    training_docs: list[tuple[str, str]] = []
    for recipe, mixtures in sorted(recipes.items()):
        for source in exp.recipes[recipe].sources:
            for shard, path in pool_shards(layout.filtered_dir(recipe, source)).items():
                t = pq.read_table(path, columns=["id", "text"])
                for doc_id, text in zip(
                    t.column("id").to_pylist(), t.column("text").to_pylist(), strict=True
                ):
                    where = f"filtered/{recipe}/{source}/{shard}/{doc_id}"
                    if (source, doc_id) in held:
                        in_training.append({"document": f"{source}/{doc_id}", "found_in": where})
                    training_docs.append((where, text))
        for mixture in mixtures:
            sel_path = layout.mixture_dir(mixture) / "selection.parquet"
            if not sel_path.is_file():
                raise FileNotFoundError(f"{sel_path} is missing: materialize mixture/{mixture}")
            sel = pq.read_table(sel_path, columns=["domain", "id"])
            for domain, doc_id in set(
                zip(sel.column("domain").to_pylist(), sel.column("id").to_pylist(), strict=True)
            ):
                if (domain, doc_id) in held:
                    in_training.append(
                        {"document": f"{domain}/{doc_id}", "found_in": f"tokens/{mixture}"}
                    )
    dc = decl.decontamination
    report = overlap(es.eval_texts(evalset), training_docs, n=dc.ngram, threshold=dc.max_overlap)
    contaminated = [
        {
            "text": o.key,
            "fraction": round(o.fraction, 4),
            "ngrams": o.ngrams,
            "found": o.found,
            "training_documents": o.examples,
        }
        for o in report.contaminated
    ]
    touched = [o for o in report.texts.values() if o.found]
    result = {
        "passed": not in_training and not contaminated,
        "in_training": sorted(in_training, key=lambda r: (r["document"], r["found_in"])),
        "contaminated": contaminated,
        "ngram": dc.ngram,
        "max_overlap": dc.max_overlap,
        "eval_texts": len(report.texts),
        "unchecked_short_texts": len(report.unchecked),
        "texts_with_any_overlap": len(touched),
        "max_fraction": round(max((o.fraction for o in touched), default=0.0), 4),
        "training_documents": report.training_documents,
        "recipes": sorted(recipes),
        "mixtures": sorted(m for ms in recipes.values() for m in ms),
        "evalset": evalset.data_version,
    }
    write_json(result, folder / es.DECONTAMINATION)
    return result


def require_clean(layout: Layout, suite: str) -> None:
    """Refuse to score a suite whose exclusion check did not pass (or never ran)."""
    path = layout.evalset_dir(suite) / es.DECONTAMINATION
    if not path.is_file():
        raise RuntimeError(
            f"evalset/{suite} has no exclusion check result ({path}): materialize it (its "
            "blocking check proves no run trained on it) before evaluating"
        )
    result = read_json(path)
    if not result["passed"]:
        bad = [r["document"] for r in result["in_training"][:5]]
        bad += [c["text"] for c in result["contaminated"][:5]]
        raise RuntimeError(
            f"evalset/{suite} failed its exclusion check ({path}): evaluation text reached "
            f"training, e.g. {', '.join(bad)}; results on it would not be trustworthy"
        )
