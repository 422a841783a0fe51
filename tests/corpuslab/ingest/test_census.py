"""The independent census of raw records, and the reconciliation the corpus stage checks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from corpuslab.ingest.census import Census, count_records, reconcile
from tests.corpuslab.ingest.test_warc import topic_responses, write_warc

TOPICS = __import__("pydoc_data.topics", fromlist=["topics"]).topics
TEXTS = [TOPICS[k] for k in sorted(TOPICS)[:12]]


def _jsonl(n: int, eol: bytes = b"\n") -> bytes:
    return b"".join(json.dumps({"text": TEXTS[i % 12]}).encode() + eol for i in range(n))


def test_jsonl_lines_are_counted_in_every_compression(tmp_path: Path) -> None:
    """Non-blank lines, with CR, CRLF or LF endings, a BOM and blank lines in between."""
    body = b"\xef\xbb\xbf" + _jsonl(5, b"\r") + b"  \n\n" + _jsonl(4, b"\r\n") + _jsonl(1, b"")
    for name, data in [
        ("a.jsonl", body),
        ("a.jsonl.gz", gzip.compress(body[:100]) + gzip.compress(body[100:])),
        ("a.jsonl.zst", zstandard.ZstdCompressor().compress(body)),
    ]:
        (tmp_path / name).write_bytes(data)
        assert count_records(tmp_path / name) == Census("line", 10), name


def test_cut_streams_are_seen_as_truncated(tmp_path: Path) -> None:
    # every topic once: ~0.5 MB that zstd keeps in several 128 KiB blocks, decoded one by one
    body = b"".join(json.dumps({"text": TOPICS[k]}).encode() + b"\n" for k in sorted(TOPICS))
    for name, data in [
        ("c.jsonl.gz", gzip.compress(body)),
        ("c.jsonl.zst", zstandard.ZstdCompressor().compress(body)),
    ]:
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        census = count_records(path)
        assert census.ended == "truncated" and 0 < (census.records or 0) < len(TOPICS), census
        path.write_bytes(data[:3])  # inside the header: nothing decodes, still not complete
        assert count_records(path).ended == "truncated"


def test_parquet_rows_warc_records_and_text_files_are_counted(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": TEXTS}), tmp_path / "p.parquet", row_group_size=5)
    assert count_records(tmp_path / "p.parquet") == Census("row", 12)
    warc = write_warc(tmp_path / "w.warc.gz", topic_responses())  # warcinfo + 6 request/response
    assert count_records(warc) == Census("record", 13)
    warc.write_bytes(warc.read_bytes()[:-200])
    assert count_records(warc).ended == "truncated" and count_records(warc).records == 13
    (tmp_path / "docs").mkdir()
    for i in range(3):
        (tmp_path / "docs" / f"{i}.md").write_text(TEXTS[i])
    assert count_records(tmp_path / "docs") == Census("file", 3)


def test_reconcile_fails_every_unexplained_loss() -> None:
    """Equal counts pass; a shortfall, a surplus or a silent cut fails; a stream flag explains."""
    record = {"reason": "invalid_json: x", "scope": "record"}
    cut = {"reason": "truncated_stream: the gzip stream ends inside member 1", "scope": "file"}
    assert reconcile(Census("line", 5), 4, [record], 0).conserved
    short = reconcile(Census("line", 6), 4, [record], 0)
    assert not short.conserved and short.shortfall == 1
    assert "1 of 6 lines are neither kept, quarantined nor skipped" in short.explanation
    assert not reconcile(Census("line", 4), 4, [record], 0).conserved  # one too many
    silent = reconcile(Census("line", 3, "truncated", "gzip: cut"), 3, [], 0)
    assert not silent.conserved and "no quarantine entry says so" in silent.explanation
    assert reconcile(Census("line", 3, "truncated", "gzip: cut"), 3, [cut], 0).conserved
    assert reconcile(Census("record", 9), 2, [record], 6).conserved  # skips count
    assert not reconcile(Census("row", None, "corrupt", "bad footer"), 0, [], 0).conserved
