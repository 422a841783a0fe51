"""A suite's fixed evaluation set on disk, and scoring a model on it.

An eval-set folder holds ``manifest.json`` (suite version, per task its type, item count,
digest and baselines; per held-out source its documents and digest), ``tasks/<label>.jsonl``
(items in llm-foundry's formats, with ids), ``heldout.parquet`` (the held-out documents that
are scored: ``source, shard, id, text``) and ``reserved.parquet`` (every held-out document's
``source, shard, id``, scored or not: what training must never contain). It is built once from
the suite's declaration and the raw corpus, and every run is scored on the same files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corpuslab.eval.metrics import suite_metrics, task_metrics
from corpuslab.eval.tasks import CHOICE_TYPES, Item, TaskDecl, read_items, task_name, write_items
from corpuslab.fileio import digest, write_json, write_parquet

if TYPE_CHECKING:  # torch is imported only where a model is scored
    from corpuslab.eval.scoring import Encoder
    from corpuslab.training.model import GPT

MANIFEST = "manifest.json"
HELDOUT = "heldout.parquet"
RESERVED = "reserved.parquet"
DECONTAMINATION = "decontamination.json"
HELDOUT_SCHEMA = pa.schema(
    [("source", pa.string()), ("shard", pa.string()), ("id", pa.string()), ("text", pa.string())]
)
RESERVED_SCHEMA = pa.schema([("source", pa.string()), ("shard", pa.string()), ("id", pa.string())])


@dataclass
class EvalSet:
    """A loaded eval set: task items per label, held-out documents per source."""

    suite: str
    folder: Path
    manifest: dict[str, Any]
    tasks: dict[str, tuple[TaskDecl, list[Item]]]
    heldout: dict[str, list[tuple[str, str]]]  # source -> (id, text)

    @property
    def data_version(self) -> str:
        return self.manifest["data_version"]


def uniform_baseline(items: Sequence[Item]) -> float:
    """Expected accuracy of guessing uniformly: the mean of 1 / (number of choices)."""
    return float(np.mean([1.0 / item.n_alternatives for item in items]))


def write_evalset(
    folder: Path,
    suite: str,
    version: int,
    tasks: Mapping[str, tuple[TaskDecl, list[Item]]],
    heldout: pa.Table,
    reserved: pa.Table,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the eval set's files and its manifest (returned, with its ``data_version``)."""
    folder.mkdir(parents=True, exist_ok=True)
    task_files = []
    task_meta: dict[str, Any] = {}
    for label, (decl, items) in tasks.items():
        path = folder / "tasks" / f"{label}.jsonl"
        write_items(items, decl.icl_task_type, path)
        task_files.append(path)
        task_meta[label] = {
            "icl_task_type": decl.icl_task_type,
            "items": len(items),
            "digest": digest(path),
            "random_baseline": decl.baseline,
            "names": decl.names(),
            "declaration": decl.model_dump(mode="json", exclude_none=True),
        }
        if decl.icl_task_type in CHOICE_TYPES:
            task_meta[label]["uniform_guess_baseline"] = uniform_baseline(items)
    write_parquet(heldout.cast(HELDOUT_SCHEMA), folder / HELDOUT)
    write_parquet(reserved.cast(RESERVED_SCHEMA), folder / RESERVED)
    sources = heldout.column("source").to_pylist()
    manifest: dict[str, Any] = {
        "suite": suite,
        "version": version,
        "tasks": task_meta,
        "heldout": {s: {"documents": sources.count(s)} for s in dict.fromkeys(sources)},
        "reserved_documents": reserved.num_rows,
        **(extra or {}),
    }
    write_json(manifest, folder / MANIFEST)
    manifest["data_version"] = digest(
        folder / MANIFEST, folder / HELDOUT, folder / RESERVED, *task_files
    )
    write_json(manifest, folder / MANIFEST)
    return manifest


def read_evalset(folder: Path, suite: str, decls: Sequence[TaskDecl]) -> EvalSet:
    """Load an eval set written by :func:`write_evalset` for the suite's task declarations."""
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: materialize evalset/{suite} first")
    manifest = json.loads(path.read_text())
    tasks = {}
    for decl in decls:
        if decl.label not in manifest["tasks"]:
            raise ValueError(
                f"{folder} has no task {decl.label!r}: materialize evalset/{suite} again"
            )
        items = read_items(folder / "tasks" / f"{decl.label}.jsonl", decl.icl_task_type)
        tasks[decl.label] = (decl, items)
    table = pq.read_table(folder / HELDOUT, columns=["source", "id", "text"])
    heldout: dict[str, list[tuple[str, str]]] = {}
    for source, doc_id, text in zip(
        table.column("source").to_pylist(),
        table.column("id").to_pylist(),
        table.column("text").to_pylist(),
        strict=True,
    ):
        heldout.setdefault(source, []).append((doc_id, text))
    return EvalSet(suite, folder, manifest, tasks, heldout)


def eval_texts(evalset: EvalSet) -> dict[str, str]:
    """What decontamination compares: held-out documents and each item with its answer."""
    out = {f"heldout:{s}:{i}": text for s, docs in evalset.heldout.items() for i, text in docs}
    for label, (_, items) in evalset.tasks.items():
        out |= {f"task:{label}:{item.id}": item.text() for item in items}
    return out


def evaluate(
    model: GPT,
    encoder: Encoder,
    tokenizer_path: Path,
    evalset: EvalSet,
    batch_size: int = 32,
    per_item: bool = True,
) -> dict[str, Any]:
    """Score ``model`` on every task (each few-shot count) and held-out source of ``evalset``.

    Returns ``metrics`` (flat suite metrics: ``core``, ``bpb``, ``heldout.<s>.bpb``, and
    ``<task>.<metric>``), ``tasks`` (per task its metrics and, with ``per_item``, its items'
    results) and ``heldout`` (per source its bpb and per-document ``id``/``nll``/``bytes``).
    """
    from corpuslab.eval.bpb import document_scores
    from corpuslab.eval.metrics import flat_metrics
    from corpuslab.eval.scoring import score_task

    tasks: dict[str, dict[str, Any]] = {}
    for label, (decl, items) in evalset.tasks.items():
        for k in decl.num_fewshot:
            results = score_task(model, encoder, decl, items, k, batch_size)
            entry: dict[str, Any] = {"metrics": task_metrics(results, decl.baseline)}
            if per_item:
                entry["items"] = results
            tasks[task_name(label, k)] = entry
    heldout: dict[str, dict[str, Any]] = {}
    for source, docs in evalset.heldout.items():
        scores = document_scores(model, tokenizer_path, [t for _, t in docs], batch_size=batch_size)
        n_bytes = int(scores["bytes"].sum())
        nll = float(scores["nll"].sum())
        entry = {"bpb": nll / (math.log(2) * n_bytes) if n_bytes else float("nan")}
        entry["documents"] = len(docs)
        if per_item:
            entry["docs"] = [
                {"id": doc_id, "nll": float(n), "bytes": int(b)}
                for (doc_id, _), n, b in zip(docs, scores["nll"], scores["bytes"], strict=True)
            ]
        heldout[source] = entry
    summary = suite_metrics({t: v["metrics"] for t, v in tasks.items()}, heldout)
    return {
        "metrics": flat_metrics(
            evalset.suite, {t: v["metrics"] for t, v in tasks.items()}, summary
        ),
        "tasks": tasks,
        "heldout": heldout,
    }
