"""Raw readers: JSONL (plain/.gz/.zst) and Parquet; malformed records are set aside, counted."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from corpuslab.fileio import write_parquet
from corpuslab.ingest.readers import CorpusError, list_shards, read_raw_shard, shard_key

TOPICS = __import__("pydoc_data.topics", fromlist=["topics"]).topics
TEXTS = [TOPICS[k] for k in sorted(TOPICS)[:5]]


def _jsonl(records: list[object]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_formats_read_the_same(tmp_path: Path, suffix: str) -> None:
    body = _jsonl(
        [{"id": f"d{i}", "text": t, "url": f"u{i}", "lang": "en"} for i, t in enumerate(TEXTS)]
    )
    if suffix.endswith(".gz"):
        body = gzip.compress(body)
    elif suffix.endswith(".zst"):
        body = zstandard.ZstdCompressor().compress(body)
    path = tmp_path / f"part-00001{suffix}"
    path.write_bytes(body)
    res = read_raw_shard(path, "prose")
    assert res.quarantined == []
    assert res.table.column("text").to_pylist() == TEXTS
    assert res.table.column("id").to_pylist() == [f"d{i}" for i in range(5)]
    assert json.loads(res.table.column("metadata")[0].as_py()) == {"lang": "en"}
    assert set(res.table.column("source").to_pylist()) == {"prose"}
    assert shard_key(path) == "part-00001"


def test_malformed_lines_are_quarantined_with_reasons(tmp_path: Path) -> None:
    good = json.dumps({"text": TEXTS[0]}).encode()
    lines = [
        good,
        b"{not json",
        b"[1, 2, 3]",
        json.dumps({"text": 7}).encode(),
        json.dumps({"text": "   "}).encode(),
        b'{"text": "caf\xe9"}',  # latin-1 byte: invalid UTF-8
        b"",
        json.dumps({"id": "x", "text": TEXTS[1]}).encode(),
        json.dumps({"id": "x", "text": TEXTS[2]}).encode(),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    res = read_raw_shard(path, "src")
    reasons = {q["line"]: q["reason"].split(":")[0] for q in res.quarantined}
    assert reasons == {
        2: "invalid_json",
        3: "not_an_object",
        4: "missing_text",
        5: "empty_text",
        6: "invalid_utf8",
        9: "duplicate_id",
    }
    assert res.table.num_rows == 2 and res.n_read == 8  # the blank line is not a record
    assert res.table.column("id").to_pylist() == ["src/bad/1", "x"]
    assert all(q["file"] == str(path) for q in res.quarantined)


def test_truncated_gzip_keeps_what_was_read(tmp_path: Path) -> None:
    body = gzip.compress(_jsonl([{"text": t} for t in TEXTS * 40]))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(body[: len(body) // 2])
    res = read_raw_shard(path, "src")
    assert 0 < res.table.num_rows < 200
    assert [q["reason"].split(":")[0] for q in res.quarantined] == ["truncated_stream"]


def test_parquet_input(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": [TEXTS[0], None], "url": ["a", "b"]}), path)
    res = read_raw_shard(path, "src")
    assert res.table.num_rows == 1
    assert res.quarantined[0]["reason"].startswith("missing_text")


def test_list_shards(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("")
    (tmp_path / "b.jsonl.zst").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.parquet").write_bytes(b"")
    assert list(list_shards(tmp_path)) == ["a", "b", "sub_c"]
    assert list(list_shards(tmp_path, "parquet")) == ["sub_c"]
    with pytest.raises(CorpusError, match="does not exist"):
        list_shards(tmp_path / "missing")
    (tmp_path / "a.jsonl.gz").write_bytes(b"")
    with pytest.raises(CorpusError, match="same shard key 'a'"):
        list_shards(tmp_path)


def test_write_is_atomic_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    with pytest.raises(Exception):  # noqa: B017 - any failure mid-write
        write_parquet("not a table", target)  # pyright: ignore[reportArgumentType] - on purpose
    assert list(tmp_path.iterdir()) == []


def test_text_folders_are_shards_and_files_are_documents(tmp_path: Path) -> None:
    keys = sorted(TOPICS)[:6]
    (tmp_path / "guide" / "deep").mkdir(parents=True)
    (tmp_path / "guide" / ".drafts").mkdir()
    (tmp_path / "README.md").write_text(TOPICS[keys[0]])
    (tmp_path / "notes.txt").write_text(TOPICS[keys[1]])
    (tmp_path / "guide" / "intro.rst").write_text(TOPICS[keys[2]])
    (tmp_path / "guide" / "data.jsonl").write_text("{}\n")  # not a text file: ignored
    (tmp_path / "guide" / "deep" / "a.txt").write_text(TOPICS[keys[3]])
    (tmp_path / "guide" / "deep" / "b.md").write_text(TOPICS[keys[4]])
    (tmp_path / "guide" / ".drafts" / "wip.txt").write_text(TOPICS[keys[5]])
    shards = list_shards(tmp_path, "text")
    assert shards == {
        "_root": tmp_path,
        "guide": tmp_path / "guide",
        "guide_deep": tmp_path / "guide" / "deep",
    }
    res = read_raw_shard(shards["guide_deep"], "docs", shard="guide_deep")
    assert res.quarantined == []
    assert res.table.column("id").to_pylist() == ["docs/guide_deep/a.txt", "docs/guide_deep/b.md"]
    assert res.table.column("text").to_pylist() == [TOPICS[keys[3]], TOPICS[keys[4]]]
    root = read_raw_shard(shards["_root"], "docs", shard="_root")  # its own files, not subfolders
    assert root.table.column("id").to_pylist() == ["docs/_root/README.md", "docs/_root/notes.txt"]
    assert list(list_shards(tmp_path)) == ["guide_data"]  # auto never takes text files


def test_bad_text_files_are_quarantined(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text(TEXTS[0])
    (tmp_path / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (tmp_path / "blank.md").write_text("  \n\n")
    res = read_raw_shard(tmp_path, "docs", shard="_root")
    assert res.table.column("text").to_pylist() == [TEXTS[0]]
    reasons = {Path(q["file"]).name: q["reason"].split(":")[0] for q in res.quarantined}
    assert reasons == {"latin1.txt": "invalid_utf8", "blank.md": "empty_text"}
    assert res.n_read == 3


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("zero.jsonl", b""),
        ("zero.jsonl.gz", b""),
        ("nothing.jsonl.gz", gzip.compress(b"")),
        ("blank.jsonl.zst", zstandard.ZstdCompressor().compress(b"\n\n")),
        ("zero.parquet", b""),
    ],
)
def test_empty_files_leave_one_quarantine_entry(tmp_path: Path, name: str, body: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(body)
    res = read_raw_shard(path, "src")
    assert res.table.num_rows == 0
    assert [q["reason"].split(":")[0] for q in res.quarantined] == ["empty_file"]
    assert res.quarantined[0]["scope"] == "file" and res.n_read == 0  # flags the file, no record


def test_zero_row_parquet_is_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "none.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    res = read_raw_shard(path, "src")
    assert [q["reason"].split(":")[0] for q in res.quarantined] == ["empty_file"]


def test_multi_frame_zstd_is_read_to_the_end(tmp_path: Path) -> None:
    frames = [zstandard.ZstdCompressor().compress(_jsonl([{"text": t}])) for t in TEXTS]
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(b"".join(frames))  # as written by parallel compressors or by appending
    assert read_raw_shard(path, "src").table.column("text").to_pylist() == TEXTS


def test_corrupt_gzip_data_is_quarantined_not_raised(tmp_path: Path) -> None:
    body = bytearray(gzip.compress(_jsonl([{"text": t} for t in TEXTS * 40])))
    body[len(body) // 2 : len(body) // 2 + 16] = bytes(16)
    path = tmp_path / "flip.jsonl.gz"
    path.write_bytes(bytes(body))
    res = read_raw_shard(path, "src")  # garbage lines may decode before the stream fails
    reasons = [q["reason"].split(":")[0] for q in res.quarantined]
    assert reasons[-1] == "unreadable_stream" and 0 < res.table.num_rows < 200
    assert set(reasons[:-1]) <= {"invalid_json", "invalid_utf8"}


def test_unknown_format_and_missing_shard(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="unknown format 'csv'; allowed: auto, jsonl"):
        list_shards(tmp_path, "csv")
    with pytest.raises(CorpusError, match="does not exist"):
        read_raw_shard(tmp_path / "gone.jsonl", "src")


def test_hidden_files_and_folders_are_never_shards(tmp_path: Path) -> None:
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "x.jsonl").write_text("")
    (tmp_path / ".a.jsonl.123.tmp").write_text("")
    (tmp_path / ".b.jsonl").write_text("")
    (tmp_path / "c.jsonl").write_text("")
    assert list(list_shards(tmp_path)) == ["c"]
