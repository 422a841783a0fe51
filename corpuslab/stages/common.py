"""What several stages share: the per-document decision table and recipe-wide document keys."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from corpuslab.declarations import Experiment
from corpuslab.fileio import read_parquet
from corpuslab.layout import Layout

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
