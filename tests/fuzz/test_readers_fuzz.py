"""The seeded reader fuzz (see :mod:`tests.fuzz.readers`) in the suite: a few hundred cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpuslab.ingest.readers import ReadResult
from tests.fuzz import readers as fuzz

SEED = 20261130
CASES = 400


def test_fuzzed_inputs_never_crash_never_lose_a_record_unflagged() -> None:
    """Zero crashes, zero unflagged shortfalls, zero intact records lost, in every category."""
    results = fuzz.campaign(CASES, SEED)
    failures = [(c.name, c.category, o) for c, o in results if o.crash or o.unflagged or o.lost]
    assert failures == []
    categories = fuzz.summarize(results)
    assert len(categories) >= 12  # every generator and damage mode was exercised
    assert sum(row["cases"] for row in categories.values()) == CASES


def test_the_fuzz_oracle_catches_a_reader_that_drops_a_record(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The oracles can fail: a reader that silently drops its last document is caught."""
    real = fuzz.read_raw_shard

    def lossy(path: Path, source: str, **kwargs: object) -> ReadResult:
        res = real(path, source, **kwargs)
        if res.table.num_rows:
            res.table = res.table.slice(0, res.table.num_rows - 1)
        return res

    monkeypatch.setattr(fuzz, "read_raw_shard", lossy)
    cases = [fuzz.make_case(SEED, i) for i in range(60)]
    with_docs = [c for c in cases if c.category == "jsonl_odd_records" and c.exact_keep]
    outcomes = [fuzz.check(c, tmp_path) for c in with_docs]
    assert len(outcomes) >= 5
    assert all(o.crash is None and o.unflagged and o.lost for o in outcomes)
