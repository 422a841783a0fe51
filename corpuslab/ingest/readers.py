"""Raw corpus readers and the normalized document shard format.

Every shard of every stage is Parquet with the columns of :data:`SCHEMA`. Raw input lies in a
local folder or under an ``s3://`` prefix (read through :mod:`corpuslab.ingest.storage`) in one
of these formats (``SourceDecl.format``):

- ``jsonl``: ``.jsonl``/``.json``, plain, ``.gz`` or ``.zst``; a shard is one file, a document
  one line holding an object with ``text`` (and optionally ``id``, ``url``, any metadata).
- ``parquet``: ``.parquet``; a shard is one file, a document one row.
- ``warc``: ``.warc``, ``.warc.gz``; a shard is one file, a document the main text of one HTML
  ``response`` record (:mod:`corpuslab.ingest.warc`), its URL, ``WARC-Date`` and record id kept.
- ``text``: ``.txt``, ``.md``, ``.rst``; a shard is one folder (the text files directly inside
  it, not in its subfolders), a document one file, its id ``<source>/<shard>/<file name>``.
- ``auto``: jsonl, parquet and warc told apart by suffix; text is never guessed (a README lying
  beside JSONL shards would become a document).

A shard's key is its path relative to the source root with folders joined by ``_`` and format
suffixes dropped (``sub/c.parquet`` -> ``sub_c``); a text shard's key is its folder's relative
path joined the same way, :data:`TEXT_ROOT_SHARD` for the files directly in the source root.

Whatever cannot become a document is set aside (quarantined) with its reason, file and position
instead of being lost. Reasons (the part before ``:``): ``invalid_json``, ``not_an_object``,
``invalid_utf8``, ``missing_text``, ``empty_text``, ``duplicate_id``, ``unreadable_stream`` (a
cut or corrupt compressed stream: what was read before stays), ``unreadable_parquet``,
``empty_file`` (a file with no records at all), and for WARC ``truncated_record``,
``broken_record``, ``undecodable_payload``, ``no_text_extracted`` (see
:mod:`corpuslab.ingest.warc`).
WARC records that are not HTML responses are skipped and counted in :attr:`ReadResult.skipped`.
A failing disk or network raises :class:`~corpuslab.storage.StorageError` instead: that is no
property of the data and a retry may succeed.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from corpuslab.ingest import storage
from corpuslab.ingest.storage import Location, StorageError

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
WARC_SUFFIXES = (".warc", ".warc.gz")
TEXT_SUFFIXES = (".txt", ".md", ".rst")
FORMATS = {
    "jsonl": JSONL_SUFFIXES,
    "parquet": PARQUET_SUFFIXES,
    "warc": WARC_SUFFIXES,
    "text": TEXT_SUFFIXES,
}
AUTO_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES + WARC_SUFFIXES
TEXT_ROOT_SHARD = "_root"  # the shard of a text source's files that lie directly in its root
_SHARD_KEY_OK = re.compile(r"[^A-Za-z0-9_.-]+")
_RAW_PREVIEW = 2000


class CorpusError(ValueError):
    """Input that cannot be read at all (as opposed to single malformed records)."""


@dataclass
class ReadResult:
    """Documents read from one raw shard, the records set aside, and the non-documents skipped.

    Each quarantine entry has ``file``, ``line`` (JSONL line, Parquet row, WARC record number;
    0 for a whole file), ``reason`` and ``raw``; WARC entries add the record's byte ``offset``.
    """

    table: pa.Table
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # WARC record kind -> count

    @property
    def n_read(self) -> int:
        """Records that were candidate documents: kept + quarantined (skips are not counted)."""
        return self.table.num_rows + len(self.quarantined)


def shard_key(path: Location) -> str:
    """The partition key of a raw file: its name without the format suffixes."""
    name = PurePosixPath(str(path)).name
    for suffix in sorted(AUTO_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _SHARD_KEY_OK.sub("_", name)


def _folder_key(rel: PurePosixPath) -> str:
    return TEXT_ROOT_SHARD if not rel.parts else _SHARD_KEY_OK.sub("_", "_".join(rel.parts))


def list_shards(
    folder: Location, fmt: str = "auto", *, fs: pafs.FileSystem | None = None
) -> dict[str, Location]:
    """Map shard key -> shard for a source folder or ``s3://`` prefix (sorted, recursive).

    A local ``folder`` gives ``Path`` values, a URL gives URLs; ``fs`` reuses a configured
    filesystem (see :func:`corpuslab.ingest.storage.open_fs`) instead of one from the environment.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise CorpusError(f"unknown format {fmt!r}; allowed: auto, {', '.join(FORMATS)}")
    try:
        fs, root = storage.resolve(folder, fs)
        is_dir = storage.path_type(fs, root) == "dir"
        if not is_dir:
            raise CorpusError(f"source folder {folder} does not exist or is not a directory")
        files = storage.list_files(fs, root, AUTO_SUFFIXES if fmt == "auto" else FORMATS[fmt])
    except StorageError as exc:
        raise CorpusError(f"source folder {folder}: {exc}") from exc
    shards: dict[str, Location] = {}
    if fmt == "text":
        for parent in sorted({PurePosixPath(f).parent.as_posix() for f in files}):
            key = _folder_key(storage.relative(parent, root))
            if key in shards:
                raise CorpusError(f"{parent} and {shards[key]} map to the same shard key {key!r}")
            shards[key] = storage.to_location(fs, parent)
        return shards
    for path in files:
        key = shard_key("_".join(storage.relative(path, root).parts))
        location = storage.to_location(fs, path)
        if key in shards:
            raise CorpusError(f"{location} and {shards[key]} map to the same shard key {key!r}")
        shards[key] = location
    return shards


def _decompressed(raw: BinaryIO, name: str, stack: contextlib.ExitStack) -> BinaryIO:
    if name.endswith(".gz"):
        return stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))  # type: ignore[return-value]
    if name.endswith(".zst"):
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return stack.enter_context(io.BufferedReader(reader))  # type: ignore[arg-type]
    return raw


def _iter_lines(fs: pafs.FileSystem, path: str) -> Iterator[tuple[int, bytes | None, str | None]]:
    """Yield (line number, raw bytes, stream error); a decompression failure ends the file."""
    lineno = 0
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(storage.open_input(fs, path))
        try:
            for lineno, line in enumerate(_decompressed(raw, path, stack), start=1):
                yield lineno, line, None
        except Exception as exc:  # gzip: OSError/EOFError/zlib.error; zstandard: ZstdError
            failure = storage.read_failure(raw)
            if failure is not None:  # the storage failed, not the data: no quarantine
                raise failure from exc
            if not isinstance(exc, OSError | EOFError | zlib.error) and (
                type(exc).__name__ != "ZstdError"
            ):
                raise
            yield lineno + 1, None, f"unreadable_stream: {type(exc).__name__}: {exc}"


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


class _Shard:
    """Collects one shard's rows, quarantine entries and skips; ids must be unique in it."""

    def __init__(self, source: str, shard: str) -> None:
        self.source = source
        self.shard = shard
        self.rows: list[dict[str, Any]] = []
        self.quarantined: list[dict[str, Any]] = []
        self.skipped: Counter[str] = Counter()
        self._ids: set[str] = set()

    def set_aside(self, file: str, line: int, reason: str, raw: str | None, **extra: Any) -> None:
        entry = {"file": file, "line": line, "reason": reason, "raw": (raw or "")[:_RAW_PREVIEW]}
        self.quarantined.append(entry | extra)

    def add(self, row: dict[str, Any], file: str, line: int, raw: str, **extra: Any) -> None:
        if row["id"] in self._ids:
            reason = f"duplicate_id: {row['id']!r} already seen in this shard"
            self.set_aside(file, line, reason, raw, **extra)
            return
        self._ids.add(row["id"])
        self.rows.append(row)

    def result(self, file: str) -> ReadResult:
        if not self.rows and not self.quarantined and not self.skipped:
            self.set_aside(file, 0, "empty_file: the file holds no records", None)
        return ReadResult(
            pa.Table.from_pylist(self.rows, schema=SCHEMA), self.quarantined, dict(self.skipped)
        )


def _read_jsonl(out: _Shard, fs: pafs.FileSystem, path: str, file: str) -> None:
    for lineno, raw, error in _iter_lines(fs, path):
        if error is not None:
            out.set_aside(file, lineno, error, None)
            break
        assert raw is not None
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            out.set_aside(file, lineno, f"invalid_utf8: {exc}", raw.decode("utf-8", "replace"))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            out.set_aside(file, lineno, f"invalid_json: {exc.msg} at column {exc.colno}", line)
            continue
        if not isinstance(record, dict):
            out.set_aside(file, lineno, f"not_an_object: got {type(record).__name__}", line)
            continue
        try:
            row = _record_to_row(record, out.source, out.shard, lineno)
        except ValueError as exc:
            out.set_aside(file, lineno, str(exc), line)
            continue
        out.add(row, file, lineno, line)


def _read_parquet_file(out: _Shard, fs: pafs.FileSystem, path: str, file: str) -> None:
    try:
        records = pq.read_table(path, filesystem=fs).to_pylist()
    except pa.ArrowException as exc:
        if isinstance(exc, OSError):  # storage, not data: let the step fail and be retried
            raise StorageError(f"reading {file} failed: {exc}") from exc
        out.set_aside(file, 0, f"unreadable_parquet: {type(exc).__name__}: {exc}", None)
        return
    for i, record in enumerate(records, start=1):
        raw = json.dumps(record, default=str)
        try:
            row = _record_to_row(record, out.source, out.shard, i)
        except ValueError as exc:
            out.set_aside(file, i, str(exc), raw)
            continue
        out.add(row, file, i, raw)


def _read_text_files(out: _Shard, fs: pafs.FileSystem, paths: list[str]) -> None:
    """Each file is one document, its id ``<source>/<shard>/<file name>``."""
    for path in paths:
        file = str(storage.to_location(fs, path))
        data = storage.read_bytes(fs, path)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            out.set_aside(file, 0, f"invalid_utf8: {exc}", data.decode("utf-8", "replace"))
            continue
        if not text.strip():
            out.set_aside(file, 0, "empty_text: the file is blank", text)
            continue
        name = PurePosixPath(path).name
        row = {
            "id": f"{out.source}/{out.shard}/{name}",
            "text": text,
            "source": out.source,
            "url": None,
            "metadata": json.dumps({"file_name": name}),
        }
        out.add(row, file, 0, "")


def _read_warc(out: _Shard, fs: pafs.FileSystem, path: str, file: str) -> None:
    from corpuslab.ingest.warc import iter_warc

    with storage.open_input(fs, path) as stream:
        for rec in iter_warc(stream):
            failure = storage.read_failure(stream)
            if failure is not None:  # FastWARC reports a failing read as a bad stream
                raise failure
            if rec.skipped is not None:
                out.skipped[rec.skipped] += 1
            elif rec.text is None:
                out.set_aside(file, rec.number, rec.reason or "", rec.raw, offset=rec.offset)
            else:
                row = {
                    "id": rec.record_id or f"{out.source}/{out.shard}/{rec.number}",
                    "text": rec.text,
                    "source": out.source,
                    "url": rec.url,
                    "metadata": json.dumps(rec.metadata, ensure_ascii=False, sort_keys=True),
                }
                out.add(row, file, rec.number, rec.raw, offset=rec.offset)
        failure = storage.read_failure(stream)
        if failure is not None:
            raise failure


def read_raw_shard(
    path: Location,
    source: str,
    *,
    fs: pafs.FileSystem | None = None,
    shard: str | None = None,
) -> ReadResult:
    """Read one raw shard (a file, or a text folder) into normalized rows, quarantining bad ones.

    ``path`` is a local path or a URL from :func:`list_shards`; ``fs`` reuses a configured
    filesystem; ``shard`` (the key from :func:`list_shards`) names documents that carry no id of
    their own, and defaults to the file or folder name.
    """
    try:
        fs, p = storage.resolve(path, fs)
        kind = storage.path_type(fs, p)
    except StorageError as exc:
        raise CorpusError(str(exc)) from exc
    file = str(storage.to_location(fs, p))
    if kind is None:
        raise CorpusError(f"raw shard {file} does not exist")
    if kind == "dir":
        out = _Shard(source, shard or _folder_key(PurePosixPath(PurePosixPath(p).name)))
        _read_text_files(out, fs, storage.list_files(fs, p, TEXT_SUFFIXES, recursive=False))
        return out.result(file)
    out = _Shard(source, shard or shard_key(p))
    if storage.file_size(fs, p) == 0:
        return out.result(file)
    if p.endswith(PARQUET_SUFFIXES):
        _read_parquet_file(out, fs, p, file)
    elif p.endswith(WARC_SUFFIXES):
        _read_warc(out, fs, p, file)
    elif p.endswith(TEXT_SUFFIXES):
        _read_text_files(out, fs, [p])
    else:  # JSONL, also under suffixes it does not declare
        _read_jsonl(out, fs, p, file)
    return out.result(file)


def read_parquet_dir(folder: Path, columns: list[str] | None = None) -> pa.Table:
    """Concatenate every shard of a stage folder (ignores temp and sidecar files)."""
    files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in files])
