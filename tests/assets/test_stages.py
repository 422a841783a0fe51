"""Stage functions without Dagster: dedup keys and survivors across shards with clashing ids."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pyarrow as pa

from assets import stages
from corpuslab.config import load_experiment
from corpuslab.documents import SCHEMA, write_parquet
from corpuslab.layout import Layout


def _docs(source: str, rows: list[tuple[str, str]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"id": i, "text": t, "source": source, "url": None, "metadata": "{}"} for i, t in rows],
        schema=SCHEMA,
    )


def test_dedup_across_shards_with_clashing_ids(tmp_path: Path) -> None:
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "e.yaml").write_text(
        textwrap.dedent("""
        sources:
          a: {path: raw/a}
        recipes:
          r: {sources: [a], dedup: {threshold: 0.8}}
    """)
    )
    exp = load_experiment(tmp_path / "exp")
    layout = Layout(tmp_path / "home")
    base = inspect.getsource(textwrap)  # a real module's source
    near = base.replace("whitespace", "blank space", 3)  # a near duplicate of it
    assert near != base
    other = inspect.getsource(inspect.getmodule(Path))  # unrelated
    pool = layout.pool_dir("r", "a")
    # the same id "1" in both shards names different documents
    write_parquet(_docs("a", [("1", base), ("2", other)]), pool / "s0.parquet")
    write_parquet(_docs("a", [("1", near), ("3", base.upper())]), pool / "s1.parquet")
    summary = stages.materialize_dedup(exp, layout, "r")
    assert summary["documents"] == 4 and summary["survivors_kept"]
    drops = pa.parquet.read_table(layout.dedup_dir("r") / "drop.parquet").to_pylist()
    got = {(d["shard"], d["id"]): (d["reason"], d["duplicate_of"]) for d in drops}
    # exact (case-folded) copy and the near copy both point at the one kept survivor
    assert got == {
        ("s1", "3"): ("exact_duplicate", "a/s0/1"),
        ("s1", "1"): ("near_duplicate", "a/s0/1"),
    }
    assert summary["signature_shards_computed"] == 2

    # a new shard: only its signatures are computed, the old ones are reused
    write_parquet(_docs("a", [("9", near.replace("paragraph", "section", 2))]), pool / "s2.parquet")
    again = stages.materialize_dedup(exp, layout, "r")
    assert again["signature_shards_computed"] == 1 and again["signature_shards_reused"] == 2
    assert again["near_duplicates"] == 2
