"""Bad input loses nothing: odd records are quarantined with a reason, cut streams are flagged.

Each test plants one kind of damage named in issue 12 in a file built from Python's own
documentation topics and checks where every record went.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from corpuslab.ingest.census import count_records, reconcile
from corpuslab.ingest.readers import ReadResult, list_shards, read_raw_shard

TOPICS = __import__("pydoc_data.topics", fromlist=["topics"]).topics
TEXTS = [TOPICS[k] for k in sorted(TOPICS)[:40]]


def _line(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def _docs(n: int) -> list[dict]:
    return [{"id": f"d{i}", "text": TEXTS[i % len(TEXTS)]} for i in range(n)]


def _reasons(res: ReadResult) -> dict[int, str]:
    return {q["line"]: q["reason"].split(":")[0] for q in res.quarantined}


def _conserved(path: Path, res: ReadResult) -> bool:
    census = count_records(path)
    kept = res.table.num_rows
    return reconcile(census, kept, res.quarantined, sum(res.skipped.values())).conserved


def test_odd_records_are_quarantined_and_the_shard_completes(tmp_path: Path) -> None:
    """Lone surrogates, 5,000-digit integers, 5,000-deep nesting and wrong types each cost
    only their own line; every field of every kept row is valid UTF-8."""
    lines = [
        _line({"id": "ok-1", "text": TEXTS[0]}),
        b'{"id": "sur", "text": "web text \\ud800 with a lone surrogate"}',
        b'{"id": "sur-id\\udfff", "text": "fine text"}',
        b'{"id": "sur-url", "text": "fine text", "url": "http://x/\\udc80"}',
        b'{"id": "sur-meta", "text": "fine text", "tags": ["\\ud801"]}',
        b'{"id": "big", "text": "fine text", "n": ' + b"9" * 5000 + b"}",
        b'{"id": "deep", "text": "fine text", "m": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"id": "t", "text": 5}',
        b'{"id": ["list"], "text": "fine text"}',
        b'{"id": true, "text": "fine text"}',
        b'{"id": "u", "text": "fine text", "url": 7}',
        b'{"id": "pair", "text": "an emoji \\ud83d\\ude00 is one code point", "x": NaN}',
        _line({"id": 7, "text": TEXTS[1]}),
    ]
    path = tmp_path / "odd.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    res = read_raw_shard(path, "src")
    assert _reasons(res) == {
        2: "invalid_unicode",
        3: "invalid_unicode",
        4: "invalid_unicode",
        5: "invalid_unicode",
        6: "invalid_json",
        7: "invalid_json",
        8: "missing_text",
        9: "invalid_id",
        10: "invalid_id",
        11: "invalid_url",
    }
    rows = res.table.to_pylist()
    assert [r["id"] for r in rows] == ["ok-1", "pair", "7"]
    assert json.loads(rows[1]["metadata"]) == {"x": None}  # JSON has no NaN
    for row in rows:
        for value in row.values():
            assert value is None or value.encode("utf-8")  # strict: no surrogates
    assert (
        "field 'text'" in res.quarantined[0]["reason"] and "\\ud800" in res.quarantined[0]["reason"]
    )
    assert _conserved(path, res)


def test_a_bom_and_cr_only_line_endings_do_not_lose_records(tmp_path: Path) -> None:
    """A leading BOM belongs to no record; CR, CRLF and LF each end a line."""
    docs = _docs(6)
    cr = tmp_path / "mac.jsonl"
    cr.write_bytes(b"\xef\xbb\xbf" + b"\r".join(_line(d) for d in docs) + b"\r")
    mixed = tmp_path / "mixed.jsonl.gz"
    body = _line(docs[0]) + b"\r\n" + _line(docs[1]) + b"\r" + b"  \r" + _line(docs[2]) + b"\n"
    mixed.write_bytes(gzip.compress(b"\xef\xbb\xbf" + body))
    res = read_raw_shard(cr, "src")
    assert res.quarantined == [] and res.table.column("id").to_pylist() == [d["id"] for d in docs]
    res = read_raw_shard(mixed, "src")
    assert res.quarantined == [] and res.table.column("id").to_pylist() == ["d0", "d1", "d2"]
    assert count_records(mixed).records == 3  # the blank line between is no record


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_a_stream_cut_anywhere_is_flagged_and_keeps_what_precedes(
    tmp_path: Path, codec: str
) -> None:
    """Cut at every 97th byte (inside headers, blocks and trailers): never ``empty_file``,
    always ``truncated_stream``, every complete line before the cut kept."""
    body = b"".join(_line(d) + b"\n" for d in _docs(120))  # zstd: several 128 KiB blocks
    data = gzip.compress(body) if codec == "gzip" else zstandard.ZstdCompressor().compress(body)
    suffix = ".jsonl.gz" if codec == "gzip" else ".jsonl.zst"
    kept = []
    for cut in [1, 5, 9, 13, *range(17, len(data) - 1, len(data) // 40), len(data) - 1]:
        path = tmp_path / f"cut{suffix}"
        path.write_bytes(data[:cut])
        res = read_raw_shard(path, "src")
        reasons = [q["reason"].split(":")[0] for q in res.quarantined]
        assert "empty_file" not in reasons and "truncated_stream" in reasons, (cut, reasons)
        ids = res.table.column("id").to_pylist()
        assert ids == [f"d{i}" for i in range(len(ids))]  # the intact prefix, in order
        assert _conserved(path, res), cut
        kept.append(len(ids))
    assert kept == sorted(kept) and kept[-1] >= 90  # the later the cut, the more survives
    # cut in the last 8 bytes of a gzip stream (its CRC and size): every record is intact
    path.write_bytes(data[:-3])
    res = read_raw_shard(path, "src")
    if codec == "gzip":
        assert res.table.num_rows == 120
        assert [q["scope"] for q in res.quarantined] == ["file"]


def test_parquet_row_groups_are_read_one_by_one(tmp_path: Path) -> None:
    """A corrupt row group costs its own rows (quarantined with the reason), not the file."""
    table = pa.table({"id": [f"d{i}" for i in range(9)], "text": TEXTS[:9]})
    path = tmp_path / "groups.parquet"
    pq.write_table(table, path, row_group_size=3, compression="none")
    meta = pq.read_metadata(path)
    middle = meta.row_group(1).column(1)  # the text column chunk of the second group
    start = middle.dictionary_page_offset or middle.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + middle.total_compressed_size] = b"\xff" * middle.total_compressed_size
    path.write_bytes(bytes(data))
    res = read_raw_shard(path, "src")
    assert res.table.column("id").to_pylist() == ["d0", "d1", "d2", "d6", "d7", "d8"]
    assert _reasons(res) == {
        4: "unreadable_parquet",
        5: "unreadable_parquet",
        6: "unreadable_parquet",
    }
    assert "row group 1" in res.quarantined[0]["reason"]
    assert _conserved(path, res)


def test_parquet_strings_that_are_not_utf8_cost_only_their_row(tmp_path: Path) -> None:
    """A foreign writer's invalid UTF-8 in a string column: that row quarantined, others kept."""
    raw = pa.array([TEXTS[0].encode(), b"caf\xe9 \xff", TEXTS[2].encode()], pa.binary())
    text = pa.Array.from_buffers(pa.string(), 3, raw.buffers(), raw.null_count)
    path = tmp_path / "latin.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": text}), path)
    res = read_raw_shard(path, "src")
    assert res.table.column("id").to_pylist() == ["a", "c"]
    assert _reasons(res) == {2: "invalid_record"}


def test_a_footerless_parquet_is_flagged_for_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": [TEXTS[0]]}), path)
    path.write_bytes(path.read_bytes()[:-20])
    res = read_raw_shard(path, "src")
    assert [(q["scope"], q["reason"].split(":")[0]) for q in res.quarantined] == [
        ("file", "unreadable_parquet")
    ]
    assert count_records(path).records is None and _conserved(path, res)


def test_ids_that_differ_by_trailing_nuls_stay_distinct(tmp_path: Path) -> None:
    path = tmp_path / "nul.jsonl"
    path.write_bytes(
        b'{"id": "a", "text": "one"}\n{"id": "a\\u0000", "text": "two"}\n'
        b'{"id": "a\\u0000\\u0000", "text": "three"}\n'
    )
    res = read_raw_shard(path, "src")
    assert res.quarantined == [] and res.table.column("id").to_pylist() == ["a", "a\0", "a\0\0"]


def test_file_names_that_are_not_utf8_are_skipped_and_reported(tmp_path: Path) -> None:
    """One undecodable name (a file, or a folder and what it holds) leaves the source listable."""
    root = os.fsencode(tmp_path)
    (tmp_path / "good.jsonl").write_bytes(_line(_docs(1)[0]) + b"\n")
    with open(root + b"/bad\xe9.jsonl", "wb") as fh:
        fh.write(b"{}\n")
    os.mkdir(root + b"/sub\xff")
    with open(root + b"/sub\xff/inner.jsonl", "wb") as fh:
        fh.write(b"{}\n")
    skipped: list[str] = []
    assert list(list_shards(tmp_path, skipped=skipped)) == ["good"]
    assert sorted(skipped) == [
        f"{tmp_path}/bad\\xe9.jsonl (name is not valid UTF-8)",
        f"{tmp_path}/sub\\xff (name is not valid UTF-8)",
    ]
    assert list(list_shards(tmp_path)) == ["good"]  # without a collector: still listable


def test_a_warc_cut_anywhere_keeps_every_record_before_the_cut(tmp_path: Path) -> None:
    """Cut a gzip WARC (a member per record) at every member and inside headers and members:
    flagged ``truncated_stream``, never ``empty_file``, conserved, the earlier pages kept."""
    from tests.corpuslab.ingest.test_warc import _gzip_members, topic_responses, write_warc

    pages = topic_responses()
    data = write_warc(tmp_path / "crawl.warc.gz", pages).read_bytes()
    members = _gzip_members(data)
    cuts = sorted({m + k for m in members[1:] for k in (-1, 3, 12, 60)} | {5, len(data) - 2})
    for cut in cuts:
        path = tmp_path / "cut.warc.gz"
        path.write_bytes(data[:cut])
        res = read_raw_shard(path, "web")
        reasons = [q["reason"].split(":")[0] for q in res.quarantined]
        assert reasons and set(reasons) <= {"truncated_stream"}, (cut, reasons)
        ends = [*members[1:], len(data)]  # a member ends where the next one starts
        # a response is whole once its member is, but for the 8-byte CRC/size trailer
        complete = sum(1 for i in range(2, len(members), 2) if ends[i] - 8 <= cut)
        urls = res.table.column("url").to_pylist()
        assert urls == [p.url for p in pages[:complete]], cut
        assert _conserved(path, res), cut
