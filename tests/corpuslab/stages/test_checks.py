"""The stages' checks fail when their invariant breaks, not only when the stage says so.

``documents_conserved`` (pool and filtered) matches ids read back from the shard's input,
output and decision files; ``survivors_kept`` (dedup) reads the written drop list back and
checks it against the pool. Each is run on what a real stage wrote, then on a copy with one
fault planted — a lost document, a swapped one, a document both kept and dropped, a missing
decision, a duplicate that survives — and must fail naming the document.
"""

from __future__ import annotations

import inspect
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from pydoc_data.topics import topics

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from corpuslab.declarations import Experiment, load_experiment
from corpuslab.fileio import read_parquet, write_parquet
from corpuslab.ingest.readers import SCHEMA
from corpuslab.layout import Layout
from corpuslab.stages.common import check_conservation
from corpuslab.stages.dedup import ShardRef, materialize_dedup_shard, survivor_problems
from corpuslab.stages.pool import materialize_filtered_shard, materialize_pool_shard
from corpuslab.stages.quality import materialize_quality_model

EXPERIMENT = """
    sources:
      a: {path: raw/a}
    recipes:
      r:
        sources: [a]
        steps:
          - gopher_quality: {min_words: 50, min_alpha_words_ratio: null, min_stop_words: null}
        dedup: {threshold: 0.8}
"""


def _docs(rows: list[tuple[str, str]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"id": i, "text": t, "source": "a", "url": None, "metadata": "{}"} for i, t in rows],
        schema=SCHEMA,
    )


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Experiment, Layout]:
    """Pool, dedup and filtered stages run for real over one corpus shard of Python's docs.

    The shard holds help topics (five too short for ``min_words: 50``: the pool drops them),
    textwrap's source, and an upper-cased copy of it: an exact duplicate that dedup drops.
    """
    root = tmp_path_factory.mktemp("checks")
    (root / "exp").mkdir()
    (root / "exp" / "e.yaml").write_text(textwrap.dedent(EXPERIMENT))
    exp, layout = load_experiment(root / "exp"), Layout(root / "home")
    source = inspect.getsource(textwrap)
    rows = [(f"topic/{k}", topics[k]) for k in sorted(topics)[:24]]
    rows += [("src/textwrap", source), ("src/TEXTWRAP", source.upper())]
    write_parquet(_docs(rows), layout.corpus_dir("a") / "s0.parquet")
    pool = materialize_pool_shard(exp, layout, "r", "a", "s0")
    assert pool["conserved"] and pool["dropped"] > 0 and pool["kept"] > 2
    dedup = materialize_dedup_shard(exp, layout, "r", "a", "s0")
    assert dedup["survivors_kept"] and dedup["exact_duplicates"] == 1
    materialize_quality_model(exp, layout, "r")  # no quality filter declared: all pass
    filtered = materialize_filtered_shard(exp, layout, "r", "a", "s0")
    assert filtered["conserved"] and filtered["drop_reasons"] == {"dedup:exact_duplicate": 1}
    return exp, layout


def _stage_files(layout: Layout, stage: str) -> tuple[Path, Path, Path]:
    """(input, output, decisions) of shard s0 of a stage."""
    inputs = {"pool": layout.corpus_dir("a"), "filtered": layout.pool_dir("r", "a")}
    outputs = {"pool": layout.pool_dir("r", "a"), "filtered": layout.filtered_dir("r", "a")}
    return (
        inputs[stage] / "s0.parquet",
        outputs[stage] / "s0.parquet",
        layout.decisions_dir(stage, "a", "r") / "s0.parquet",
    )


def _dropped_ids(decisions: pa.Table) -> list[str]:
    return decisions.filter(pc.invert(decisions.column("kept"))).column("id").to_pylist()


# Each fault takes (output, decisions) and returns the planted pair plus the ids the check must
# name as (lost, extra, undecided).
Fault = Callable[[pa.Table, pa.Table], tuple[pa.Table, pa.Table, tuple[list, list, list]]]


def lose_a_kept_document(out: pa.Table, dec: pa.Table) -> tuple:
    gone = out.column("id")[0].as_py()
    return out.slice(1), dec, ([gone], [], [])


def swap_a_kept_document_for_a_copy_of_another(out: pa.Table, dec: pa.Table) -> tuple:
    """Same number of rows, so a count of kept + dropped still adds up."""
    first, second = out.column("id")[0].as_py(), out.column("id")[1].as_py()
    swapped = pa.concat_tables([out.slice(1), out.slice(1, 1)])
    assert swapped.num_rows == out.num_rows
    return swapped, dec, ([first], [second], [])


def keep_a_dropped_document_too(out: pa.Table, dec: pa.Table) -> tuple:
    victim = _dropped_ids(dec)[0]
    row = out.slice(0, 1).set_column(0, "id", pa.array([victim], pa.string()))
    return pa.concat_tables([out, row]), dec, ([], [victim], [])


def lose_a_dropped_documents_decision(out: pa.Table, dec: pa.Table) -> tuple:
    victim = _dropped_ids(dec)[0]
    return out, dec.filter(pc.not_equal(dec.column("id"), victim)), ([victim], [], [victim])


@pytest.mark.parametrize("stage", ["pool", "filtered"])
@pytest.mark.parametrize(
    "fault",
    [
        lose_a_kept_document,
        swap_a_kept_document_for_a_copy_of_another,
        keep_a_dropped_document_too,
        lose_a_dropped_documents_decision,
    ],
)
def test_documents_conserved_fails_on_a_planted_fault(
    staged: tuple[Experiment, Layout], tmp_path: Path, stage: str, fault: Fault
) -> None:
    _, layout = staged
    src, out, dec = _stage_files(layout, stage)
    honest = check_conservation(src, out, dec)
    assert honest.conserved and honest.report() == {}
    assert honest.documents_in == honest.kept + honest.dropped > 0

    bad_out, bad_dec, (lost, extra, undecided) = fault(read_parquet(out), read_parquet(dec))
    write_parquet(bad_out, tmp_path / "out.parquet")
    write_parquet(bad_dec, tmp_path / "dec.parquet")
    got = check_conservation(src, tmp_path / "out.parquet", tmp_path / "dec.parquet")
    assert not got.conserved
    assert (got.lost, got.extra, got.undecided) == (lost, extra, undecided)
    if fault is swap_a_kept_document_for_a_copy_of_another:  # counts alone cannot see it
        assert got.documents_in == got.kept + got.dropped
    report = got.report()
    assert report.get("lost_ids", []) == lost and report.get("extra_ids", []) == extra
    assert report.get("lost_documents", 0) == len(lost)


def test_survivors_kept_fails_on_a_planted_duplicate_survivor(
    staged: tuple[Experiment, Layout], tmp_path: Path
) -> None:
    exp, staged_layout = staged
    layout = Layout(tmp_path / "home")  # a copy: the planted faults stay out of the fixture
    shutil.copytree(staged_layout.home, layout.home)
    shard = ShardRef("a", "s0")
    decisions = layout.dedup_decisions_dir("r", "a") / "s0.parquet"
    assert survivor_problems(exp, layout, "r", shard) == []
    honest = read_parquet(decisions)
    status = honest.column("status").to_pylist()
    (row,) = [i for i, st in enumerate(status) if st != "kept"]
    dropped = honest.column("key")[row].as_py()
    survivor = honest.column("survivor_key")[row].as_py()

    def planted(rows: list[dict]) -> list[str]:
        table = pa.Table.from_pylist(rows, schema=honest.schema)
        write_parquet(table.replace_schema_metadata(honest.schema.metadata), decisions)
        return survivor_problems(exp, layout, "r", shard)

    rows = honest.to_pylist()
    # the exact duplicate is no longer dropped: two kept documents hold the same text
    unflagged = [dict(r, status="kept", survivor_key=r["key"]) if r["key"] == dropped else r
                 for r in rows]  # fmt: skip
    assert planted(unflagged) == [f"kept documents are exact duplicates: {survivor!r}, {dropped!r}"]

    # the survivor is dropped too (pointing at its own copy): nobody keeps the text
    both = [
        dict(r, status="exact_duplicate", survivor_key=dropped) if r["key"] == survivor else r
        for r in rows
    ]
    assert planted(both) == [
        f"{dropped!r} points at {survivor!r}, which is not kept",
        f"{survivor!r} points at {dropped!r}, which is not kept",
    ]

    # a document decided twice, one the pool does not hold, a survivor no shard decided
    ghost = survivor.replace("src/", "ghost/")
    elsewhere = survivor.replace("\x1fs0\x1f", "\x1fs9\x1f")
    stray = rows + [rows[row], dict(rows[row], key=ghost), dict(rows[row], survivor_key=elsewhere)]
    problems = planted(stray)
    assert problems[:2] == [
        f"decided 3 times: {dropped!r}",
        f"decided but not in the pool: {ghost!r}",
    ]
    assert f"{dropped!r} points at {elsewhere!r}, whose shard is not decided" in problems
