"""Raw corpus readers and the normalized document shard format.

Every shard of every stage is Parquet with the columns of :data:`SCHEMA`. Raw input may be
JSONL (plain, ``.gz``, ``.zst``) or Parquet; a line that cannot become a document is set aside
with its reason, file and line number instead of being lost.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from corpuslab.layout import atomic_path

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("metadata", pa.string()),  # JSON object, kept as text so any fields survive
    ]
)

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)
FORMATS = {"jsonl": JSONL_SUFFIXES, "parquet": PARQUET_SUFFIXES}
_SHARD_KEY_OK = re.compile(r"[^A-Za-z0-9_.-]+")


class CorpusError(ValueError):
    """Input that cannot be read at all (as opposed to single malformed records)."""


@dataclass
class ReadResult:
    """Documents read from one raw shard plus the records set aside."""

    table: pa.Table
    quarantined: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_read(self) -> int:
        return self.table.num_rows + len(self.quarantined)


def shard_key(path: Path) -> str:
    """The partition key of a raw file: its name without the format suffixes."""
    name = path.name
    for suffix in sorted(JSONL_SUFFIXES + PARQUET_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _SHARD_KEY_OK.sub("_", name)


def list_shards(folder: Path, fmt: str = "auto") -> dict[str, Path]:
    """Map shard key -> file for every readable file in ``folder`` (sorted, recursive)."""
    if not folder.is_dir():
        raise CorpusError(f"source folder {folder} does not exist or is not a directory")
    suffixes = JSONL_SUFFIXES + PARQUET_SUFFIXES if fmt == "auto" else FORMATS[fmt]
    shards: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith(".") or not path.name.endswith(suffixes):
            continue
        rel = path.relative_to(folder)
        key = (
            shard_key(path)
            if rel.parent == Path(".")
            else shard_key(Path("_".join([*rel.parent.parts, path.name])))
        )
        if key in shards:
            raise CorpusError(f"{path} and {shards[key]} map to the same shard key {key!r}")
        shards[key] = path
    return shards


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))  # noqa: SIM115
    return open(path, "rb")  # noqa: SIM115


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes | None, str | None]]:
    """Yield (line number, raw bytes, stream error); a decompression failure ends the file."""
    lineno = 0
    try:
        with _open_binary(path) as fh:
            for lineno, raw in enumerate(io.BufferedReader(fh), start=1):  # type: ignore[arg-type]
                yield lineno, raw, None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        yield lineno + 1, None, f"unreadable_stream: {type(exc).__name__}: {exc}"
    except Exception as exc:  # zstandard raises its own ZstdError
        if type(exc).__name__ != "ZstdError":
            raise
        yield lineno + 1, None, f"unreadable_stream: ZstdError: {exc}"


def _record_to_row(
    record: dict[str, Any], source: str, shard: str, position: int
) -> dict[str, Any]:
    text = record.get("text")
    if not isinstance(text, str):
        raise ValueError(f"missing_text: field 'text' is {type(text).__name__}, not a string")
    if not text.strip():
        raise ValueError("empty_text: field 'text' is blank")
    doc_id = record.get("id")
    doc_id = f"{source}/{shard}/{position}" if doc_id in (None, "") else str(doc_id)
    url = record.get("url")
    metadata = {k: v for k, v in record.items() if k not in ("id", "text", "url", "source")}
    return {
        "id": doc_id,
        "text": text,
        "source": source,
        "url": None if url is None else str(url),
        "metadata": json.dumps(metadata, ensure_ascii=False, sort_keys=True, default=str),
    }


def read_raw_shard(path: Path, source: str) -> ReadResult:
    """Read one raw JSONL or Parquet file into normalized rows, quarantining bad records."""
    shard = shard_key(path)
    rows: list[dict[str, Any]] = []
    quarantined: list[dict[str, Any]] = []

    def set_aside(line: int, reason: str, raw: str | None) -> None:
        quarantined.append(
            {"file": str(path), "line": line, "reason": reason, "raw": (raw or "")[:2000]}
        )

    if path.name.endswith(PARQUET_SUFFIXES):
        try:
            records = pq.read_table(path).to_pylist()
        except Exception as exc:
            set_aside(0, f"unreadable_parquet: {type(exc).__name__}: {exc}", None)
            records = []
        for i, record in enumerate(records, start=1):
            try:
                rows.append(_record_to_row(record, source, shard, i))
            except ValueError as exc:
                set_aside(i, str(exc), json.dumps(record, default=str))
    else:
        seen_ids: set[str] = set()
        for lineno, raw, error in _iter_lines(path):
            if error is not None:
                set_aside(lineno, error, None)
                break
            assert raw is not None
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                set_aside(lineno, f"invalid_utf8: {exc}", raw.decode("utf-8", "replace"))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                set_aside(lineno, f"invalid_json: {exc.msg} at column {exc.colno}", line)
                continue
            if not isinstance(record, dict):
                set_aside(lineno, f"not_an_object: got {type(record).__name__}", line)
                continue
            try:
                row = _record_to_row(record, source, shard, lineno)
            except ValueError as exc:
                set_aside(lineno, str(exc), line)
                continue
            if row["id"] in seen_ids:
                set_aside(lineno, f"duplicate_id: {row['id']!r} already seen in this file", line)
                continue
            seen_ids.add(row["id"])
            rows.append(row)
    return ReadResult(pa.Table.from_pylist(rows, schema=SCHEMA), quarantined)


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write a table atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_jsonl(records: list[dict[str, Any]], path: Path) -> None:
    """Write records as JSONL atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    if not path.exists():
        raise FileNotFoundError(f"expected shard {path} is missing: materialize its upstream asset")
    return pq.read_table(path, columns=columns)


def read_parquet_dir(folder: Path, columns: list[str] | None = None) -> pa.Table:
    """Concatenate every shard of a stage folder (ignores temp and sidecar files)."""
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in files])
