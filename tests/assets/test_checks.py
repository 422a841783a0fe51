"""Blocking asset checks stop what is downstream of them, in real Dagster runs.

A small recipe over one shard of real docstrings (plus an exact copy of one of them) is
materialized through Dagster on a temporary instance. Then a fault is planted in a stage's
writer — the kind of bug the checks exist for — and the stage is run again together with its
downstream asset: the check fails, the run fails, and the downstream asset is never
materialized. The same run without the fault materializes it, so nothing else stopped it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from assets.common import assets_of
from assets.partitions import shard_partitions
from corpuslab.fileio import read_parquet
from corpuslab.layout import Layout
from corpuslab.stages import dedup as dedup_stage
from corpuslab.stages import pool as pool_stage
from definitions import build
from tests.conftest import write_experiment

SHARD = "part-00000"
COPY = "#copy"
EXPERIMENT = {
    "e.yaml": """
        sources:
          docstrings: {path: raw/docstrings}
        recipes:
          r:
            sources: [docstrings]
            steps:
              - gopher_quality: {min_words: 20, min_alpha_words_ratio: null, min_stop_words: null}
            dedup: {ngram: 5, num_perm: 64, threshold: 0.8}
    """
}
CORPUS = dg.AssetKey(["corpus", "docstrings"])
POOL = dg.AssetKey(["pool", "r", "docstrings"])
DEDUP = dg.AssetKey(["dedup", "r", "docstrings"])
QUALITY = dg.AssetKey(["quality_model", "r"])
FILTERED = dg.AssetKey(["filtered", "r", "docstrings"])


@dataclass
class Home:
    """A home with one raw shard, its Dagster instance and the experiment's definitions."""

    layout: Layout
    instance: dg.DagsterInstance
    defs: dg.Definitions

    def run(
        self, keys: list[dg.AssetKey], partition: str | None = None, config: dict | None = None
    ) -> dg.ExecuteInProcessResult:
        """One real Dagster run of ``keys`` on the instance; failures are returned, not raised."""
        return dg.materialize(
            assets=assets_of(self.defs),
            selection=keys,
            partition_key=partition,
            instance=self.instance,
            resources=self.defs.resources,
            raise_on_error=False,
            run_config={"ops": config or {}},
        )

    def materializations(self, key: dg.AssetKey) -> int:
        return len(self.instance.fetch_materializations(key, limit=100).records)


@pytest.fixture()
def home(tmp_path: Path, tiny_raw: Path) -> Iterator[Home]:
    """One shard of the tiny corpus's docstrings, one document repeated: corpus and pool built."""
    raw = tmp_path / "home" / "raw" / "docstrings"
    raw.mkdir(parents=True)
    with gzip.open(tiny_raw / "docstrings" / f"{SHARD}.jsonl.gz", "rt", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    longest = max(docs, key=lambda d: len(d["text"]))  # kept by the recipe's steps
    docs.append({**longest, "id": longest["id"] + COPY})  # an exact duplicate, to be dropped
    with gzip.open(raw / f"{SHARD}.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(d) + "\n" for d in docs)
    exp_dir = write_experiment(tmp_path / "experiments", EXPERIMENT)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        instance.add_dynamic_partitions(shard_partitions("docstrings").name, [SHARD])
        h = Home(Layout(tmp_path / "home"), instance, build(exp_dir, home=tmp_path / "home"))
        assert h.run([CORPUS, POOL], SHARD).success
        yield h


def _losing_last_row(under: Path, write: Callable[[pa.Table, Path], None]) -> Callable:
    """A ``write_parquet`` that drops the last row of every table written below ``under``."""

    def faulty(table: pa.Table, path: Path) -> None:
        if Path(path).is_relative_to(under):
            table = table.slice(0, table.num_rows - 1)
        write(table, path)

    return faulty


def _check(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.asset_key == key]
    return evaluation


def _materialized(result: dg.ExecuteInProcessResult) -> set[dg.AssetKey]:
    return {e.asset_key for e in result.get_asset_materialization_events()}


def test_a_lost_document_fails_documents_conserved_and_blocks_the_filtered_shard(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert home.run([DEDUP], SHARD).success and home.run([QUALITY]).success
    pool_file = home.layout.pool_dir("r", "docstrings") / f"{SHARD}.parquet"
    last_kept = read_parquet(pool_file, columns=["id"]).column("id").to_pylist()[-1]
    monkeypatch.setattr(
        pool_stage,
        "write_parquet",
        _losing_last_row(home.layout.pool_dir("r", "docstrings"), pool_stage.write_parquet),
    )
    result = home.run([POOL, FILTERED], SHARD)
    assert not result.success
    check = _check(result, POOL)
    assert check.check_name == "documents_conserved" and not check.passed
    assert _materialized(result) == {POOL}  # recorded, with its failed check; nothing after it
    assert home.materializations(FILTERED) == 0
    pool_meta = home.instance.get_latest_materialization_event(POOL).asset_materialization.metadata
    assert pool_meta["lost_ids"].data == [last_kept]  # the report names the lost document

    monkeypatch.undo()  # the same run without the fault goes through to the filtered shard
    again = home.run([POOL, FILTERED], SHARD)
    assert again.success and _check(again, POOL).passed
    assert _materialized(again) == {POOL, FILTERED} and home.materializations(FILTERED) == 1


def test_a_duplicate_survivor_fails_survivors_kept_and_blocks_the_filtered_shard(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dedup writer that keeps every document (the exact copy included): the check reads the
    decisions back, finds two kept documents with the same text, and the filtered shard in the
    same run is never built. The dedup index is rebuilt (``full_recompute``) so it is rewritten."""
    assert home.run([DEDUP], SHARD).success and home.run([QUALITY]).success
    write = dedup_stage._write_decisions

    def keeping_everything(layout, recipe, ref, rows, stamp):  # noqa: ANN001, ANN202
        rows = rows | {"status": ["kept"] * len(rows["key"]), "survivor_key": list(rows["key"])}
        write(layout, recipe, ref, rows, stamp)

    monkeypatch.setattr(dedup_stage, "_write_decisions", keeping_everything)
    recompute = {DEDUP.to_python_identifier(): {"config": {"full_recompute": "fault"}}}
    result = home.run([DEDUP, FILTERED], SHARD, recompute)
    assert not result.success
    check = _check(result, DEDUP)
    assert check.check_name == "survivors_kept" and not check.passed
    (problem,) = check.metadata["problems"].data
    assert problem.startswith("kept documents are exact duplicates") and COPY in problem
    assert _materialized(result) == {DEDUP} and home.materializations(FILTERED) == 0

    monkeypatch.undo()
    recompute = {DEDUP.to_python_identifier(): {"config": {"full_recompute": "honest"}}}
    again = home.run([DEDUP, FILTERED], SHARD, recompute)
    assert again.success and _check(again, DEDUP).passed
    assert _materialized(again) == {DEDUP, FILTERED}
    decided = read_parquet(
        home.layout.dedup_decisions_dir("r", "docstrings") / f"{SHARD}.parquet"
    ).to_pylist()
    dropped = [(d["id"].endswith(COPY), d["status"]) for d in decided if d["status"] != "kept"]
    assert dropped == [(True, "exact_duplicate")]


def test_a_failed_check_blocks_its_own_shard_only_whatever_ran_after_it(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checks are recorded per shard: shard A's pool fails its check, then shard B's pool passes.
    The automation conditions request B's dedup and not A's (a check without partitions would
    count only the latest evaluation, B's pass, for both)."""
    other = "part-00001"
    raw = home.layout.home / "raw" / "docstrings"
    with gzip.open(raw / f"{SHARD}.jsonl.gz", "rt", encoding="utf-8") as fh:
        docs = [{**json.loads(line), "id": f"b-{i}"} for i, line in enumerate(fh)]
    with gzip.open(raw / f"{other}.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(d) + "\n" for d in docs)
    home.instance.add_dynamic_partitions(shard_partitions("docstrings").name, [other])
    with monkeypatch.context() as m:
        m.setattr(
            pool_stage,
            "write_parquet",
            _losing_last_row(home.layout.pool_dir("r", "docstrings"), pool_stage.write_parquet),
        )
        assert not home.run([POOL], SHARD).success
    assert home.run([CORPUS, POOL], other).success  # the latest evaluation: a pass, of shard B
    now = build(home.layout.home.parent / "experiments", home=home.layout.home, now=True)
    result = dg.evaluate_automation_conditions(now, home.instance)
    assert result.get_requested_partitions(DEDUP) == {other}
