"""``documents_conserved`` on the corpus stage: an independent count catches a lost record."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from corpuslab.declarations import load_experiment
from corpuslab.ingest.readers import ReadResult
from corpuslab.layout import Layout
from corpuslab.stages import corpus as corpus_stage
from tests.conftest import write_experiment

TOPICS = __import__("pydoc_data.topics", fromlist=["topics"]).topics
DOCS = [{"id": f"topic/{k}", "text": TOPICS[k]} for k in sorted(TOPICS)[:12]]


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    raw = tmp_path / "home" / "raw" / "web"
    raw.mkdir(parents=True)
    body = b"".join(json.dumps(d).encode() + b"\n" for d in DOCS)
    (raw / "whole.jsonl").write_bytes(body + b"{not json\n")
    cut = gzip.compress(body)
    (raw / "cut.jsonl.gz").write_bytes(cut[: len(cut) * 2 // 3])
    write_experiment(tmp_path / "exp", {"sources.yaml": "sources:\n  web: {path: raw/web}\n"})
    return tmp_path


def _materialize(home: Path, shard: str) -> dict:
    exp = load_experiment(home / "exp")
    return corpus_stage.materialize_corpus_shard(exp, Layout(home / "home"), "web", shard)


def test_an_intact_and_a_flagged_cut_shard_are_conserved(home: Path) -> None:
    whole = _materialize(home, "whole")
    assert whole["conserved"] and whole["records"] == 13 and whole["records_unit"] == "line"
    assert whole["documents"] == 12 and whole["quarantined"] == 1
    cut = _materialize(home, "cut")  # two thirds of the gzip stream: inside the sixth line
    assert cut["conserved"] and cut["raw_stream"].startswith("truncated")
    assert (cut["records"], cut["documents"], cut["quarantined"]) == (6, 5, 1)
    assert cut["quarantine_reasons"] == {"truncated_stream": 1} and cut["file_flags"] == []


def test_a_record_the_reader_loses_fails_documents_conserved(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plant a loss: a reader that drops its third document without a word."""
    real = corpus_stage.read_raw_shard

    def lossy(*args: object, **kwargs: object) -> ReadResult:
        res = real(*args, **kwargs)
        keep = [i for i in range(res.table.num_rows) if i != 2]
        res.table = res.table.take(keep)
        return res

    monkeypatch.setattr(corpus_stage, "read_raw_shard", lossy)
    summary = _materialize(home, "whole")
    assert summary["conserved"] is False
    assert summary["documents"] == 11 and summary["records"] == 13
    assert summary["conservation"] == "1 of 13 lines are neither kept, quarantined nor skipped"


def test_a_cut_the_reader_does_not_flag_fails_documents_conserved(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plant a silent truncation: the reader's stream flags are removed."""
    real = corpus_stage.read_raw_shard

    def quiet(*args: object, **kwargs: object) -> ReadResult:
        res = real(*args, **kwargs)
        res.quarantined = [q for q in res.quarantined if "stream" not in q["reason"]]
        return res

    monkeypatch.setattr(corpus_stage, "read_raw_shard", quiet)
    summary = _materialize(home, "cut")
    assert summary["conserved"] is False
    assert (
        "truncated" in summary["conservation"]
        and "no quarantine entry says so" in (summary["conservation"])
    )
