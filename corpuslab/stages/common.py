"""What several stages share: the per-document decision table, the conservation check and
recipe-wide document keys."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from corpuslab.declarations import Experiment
from corpuslab.fileio import read_parquet
from corpuslab.layout import Layout

SHOWN_IDS = 20  # ids named in a failed check's report; the counts say how many there are

DECISION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("shard", pa.string()),
        ("kept", pa.bool_()),
        ("step", pa.string()),
        ("reason", pa.string()),
    ]
)
KEY_SEP = "\x1f"  # joins source, shard and id: a document's key unique across a recipe


def decisions_table(
    ids: Sequence[str], shard: str, decided: Sequence[tuple[str, str] | None]
) -> pa.Table:
    """One row per input document: kept, or dropped by ``step`` for ``reason``."""
    return pa.table(
        {
            "id": list(ids),
            "shard": [shard] * len(ids),
            "kept": [d is None for d in decided],
            "step": [None if d is None else d[0] for d in decided],
            "reason": [None if d is None else d[1] for d in decided],
        },
        schema=DECISION_SCHEMA,
    )


@dataclass(frozen=True)
class Conservation:
    """``documents_conserved`` of one shard: each input id kept or dropped, exactly once.

    ``lost``: input ids neither in the output nor dropped; ``extra``: ids the output and the
    dropped decisions hold more often than the input does (a document both kept and dropped,
    written twice, or never read); ``undecided``: input ids without exactly one decision row
    (what dbt counts); each sorted, with repeats.
    """

    documents_in: int
    kept: int
    dropped: int
    lost: list[str]
    extra: list[str]
    undecided: list[str]

    @property
    def conserved(self) -> bool:
        return not (self.lost or self.extra or self.undecided)

    def report(self) -> dict[str, int | list[str]]:
        """Counts, and the first ids of each kind of failure (for the asset's metadata)."""
        out: dict[str, int | list[str]] = {}
        for name in ("lost", "extra", "undecided"):
            ids = getattr(self, name)
            if ids:
                out[f"{name}_documents"] = len(ids)
                out[f"{name}_ids"] = ids[:SHOWN_IDS]
        return out


def check_conservation(input_path: Path, output_path: Path, decisions_path: Path) -> Conservation:
    """Read a shard's input, output and decision files back and match their ids.

    Independent of the stage's own counters: the input ids come from the input file, the kept
    ids from the written output, the dropped ids from the decision file. Every input id must
    appear exactly once among the kept and dropped ones, and have exactly one decision row.
    """
    inputs = Counter(read_parquet(input_path, columns=["id"]).column("id").to_pylist())
    kept = Counter(read_parquet(output_path, columns=["id"]).column("id").to_pylist())
    decisions = read_parquet(decisions_path, columns=["id", "kept"]).to_pydict()
    decided = Counter(decisions["id"])
    dropped = Counter(i for i, k in zip(decisions["id"], decisions["kept"], strict=True) if not k)
    accounted = kept + dropped
    undecided = (inputs - decided) + (decided - inputs)
    return Conservation(
        documents_in=sum(inputs.values()),
        kept=sum(kept.values()),
        dropped=sum(dropped.values()),
        lost=sorted((inputs - accounted).elements()),
        extra=sorted((accounted - inputs).elements()),
        undecided=sorted(undecided.elements()),
    )


def doc_key(source: str, shard: str, doc_id: str) -> str:
    """A key unique across a recipe's shards: ids are only unique within one raw file."""
    return KEY_SEP.join((source, shard, doc_id))


def split_key(key: str) -> tuple[str, str, str]:
    source, shard, doc_id = key.split(KEY_SEP, 2)
    return source, shard, doc_id


def pool_tables(exp: Experiment, layout: Layout, recipe: str, columns: list[str]) -> pa.Table:
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
