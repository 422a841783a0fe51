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
instead of being lost, and the shard always completes. Reasons (the part before ``:``):
``invalid_json`` (also an integer literal over Python's 4,300-digit limit and nesting deeper
than the recursion limit), ``not_an_object``, ``invalid_utf8`` (bytes), ``invalid_unicode``
(an unpaired surrogate such as ``"\\ud800"`` in ``text``, ``id``, ``url`` or ``metadata``: every
kept field is valid UTF-8), ``missing_text``, ``empty_text``, ``invalid_id`` (not a string or
integer), ``invalid_url`` (not a string), ``duplicate_id``, ``record_too_large`` (a JSONL line
over :data:`~corpuslab.ingest.streams.MAX_LINE_BYTES`), ``invalid_record`` (any other error
while normalizing one record), ``truncated_stream`` (the stream ends inside this record, or
for the whole file: a compressed stream cut where no record was), ``unreadable_stream`` (a
corrupt compressed stream: what was read before stays, the rest of the file is skipped),
``unreadable_parquet`` (a Parquet file whose footer is damaged, or each row of a row group that
cannot be decoded: the other row groups are kept), ``empty_file`` (a file with no records at
all), and for WARC ``broken_record``, ``undecodable_payload``, ``no_text_extracted`` (see
:mod:`corpuslab.ingest.warc`). Each entry's ``scope`` is ``record`` (it stands for one record
of the raw file) or ``file`` (it flags the file and stands for none).
WARC records that are not HTML responses are skipped and counted in :attr:`ReadResult.skipped`.
A failing disk or network raises :class:`~corpuslab.storage.StorageError` instead: that is no
property of the data and a retry may succeed.

How JSONL is cut into lines (``\\n``, ``\\r\\n`` or a lone ``\\r``; a leading BOM dropped) is
defined in :mod:`corpuslab.ingest.streams`; :mod:`corpuslab.ingest.census` counts the same
units independently for the corpus stage's conservation check.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from corpuslab.ingest import storage
from corpuslab.ingest.storage import Location, StorageError
from corpuslab.ingest.streams import MAX_LINE_BYTES, Decompressed, codec_for, iter_lines

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
    0 for a whole file), ``reason``, ``raw`` and ``scope`` (``record``, or ``file`` for an entry
    that flags the file and stands for no record); WARC entries add the record's byte
    ``offset`` in the decompressed stream.
    """

    table: pa.Table
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # WARC record kind -> count

    @property
    def n_read(self) -> int:
        """Records that were candidate documents: kept + quarantined (skips are not counted)."""
        return self.table.num_rows + sum(1 for q in self.quarantined if q["scope"] == "record")

    @property
    def accounted(self) -> int:
        """Every record of the raw file the reader accounts for: read, or skipped as no document."""
        return self.n_read + sum(self.skipped.values())

    @property
    def file_flags(self) -> list[str]:
        """Reasons of the entries that flag the whole file (``empty_file``, a cut stream...)."""
        return [q["reason"] for q in self.quarantined if q["scope"] == "file"]


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
    folder: Location,
    fmt: str = "auto",
    *,
    fs: pafs.FileSystem | None = None,
    skipped: list[str] | None = None,
) -> dict[str, Location]:
    """Map shard key -> shard for a source folder or ``s3://`` prefix (sorted, recursive).

    A local ``folder`` gives ``Path`` values, a URL gives URLs; ``fs`` reuses a configured
    filesystem (see :func:`corpuslab.ingest.storage.open_fs`) instead of one from the environment.
    Files whose names are not valid UTF-8 are left out and, when ``skipped`` is given,
    appended to it (see :func:`corpuslab.ingest.storage.list_files`).
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise CorpusError(f"unknown format {fmt!r}; allowed: auto, {', '.join(FORMATS)}")
    try:
        fs, root = storage.resolve(folder, fs)
        is_dir = storage.path_type(fs, root) == "dir"
        if not is_dir:
            raise CorpusError(f"source folder {folder} does not exist or is not a directory")
        suffixes = AUTO_SUFFIXES if fmt == "auto" else FORMATS[fmt]
        files = storage.list_files(fs, root, suffixes, skipped=skipped)
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


def _metadata_value(value: Any) -> Any:
    """A JSON-safe stand-in for what ``json`` cannot write: bytes as text, the rest as ``str``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _finite(node: Any) -> Any:
    """``node`` with NaN and infinities replaced by None (JSON has no such numbers)."""
    if isinstance(node, float):
        return node if math.isfinite(node) else None
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_finite(v) for v in node]
    return node


def _metadata_json(metadata: dict[str, Any]) -> str:
    """Metadata as a JSON object (sorted keys; non-finite numbers become null)."""
    try:
        return json.dumps(
            metadata, ensure_ascii=False, sort_keys=True, default=_metadata_value, allow_nan=False
        )
    except ValueError:  # NaN or infinity somewhere
        return json.dumps(
            _finite(metadata), ensure_ascii=False, sort_keys=True, default=_metadata_value
        )


def _unicode_error(row: dict[str, Any]) -> str | None:
    """Why a row's strings are not valid UTF-8 (an unpaired surrogate), or None."""
    for name in ("id", "text", "url", "metadata"):
        value = row.get(name)
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start : exc.end]
            return (
                f"invalid_unicode: field {name!r} holds the unpaired surrogate "
                f"{bad.encode('utf-8', 'backslashreplace').decode()} at character {exc.start}"
            )
    return None


class _Rejected(ValueError):
    """A record that cannot be a document; the message is its quarantine reason."""


def _record_to_row(
    record: dict[str, Any], source: str, shard: str, position: int
) -> dict[str, Any]:
    """A raw record as a normalized row; :class:`_Rejected` gives the reason it is not one."""
    text = record.get("text")
    if not isinstance(text, str):
        raise _Rejected(f"missing_text: field 'text' is {type(text).__name__}, not a string")
    if not text.strip():
        raise _Rejected("empty_text: field 'text' is blank")
    doc_id = record.get("id")
    if doc_id in (None, ""):
        doc_id = f"{source}/{shard}/{position}"
    elif isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
        raise _Rejected(f"invalid_id: field 'id' is {type(doc_id).__name__}, not a string")
    url = record.get("url")
    if url is not None and not isinstance(url, str):
        raise _Rejected(f"invalid_url: field 'url' is {type(url).__name__}, not a string")
    metadata = {k: v for k, v in record.items() if k not in ("id", "text", "url", "source")}
    row = {
        "id": str(doc_id),
        "text": text,
        "source": source,
        "url": url,
        "metadata": _metadata_json(metadata),
    }
    problem = _unicode_error(row)
    if problem is not None:
        raise _Rejected(problem)
    return row


def _printable(text: str | None) -> str:
    """Text that is valid UTF-8 whatever it held (surrogates escaped): quarantine is JSONL."""
    return (text or "").encode("utf-8", "backslashreplace").decode("utf-8")


class _Shard:
    """Collects one shard's rows, quarantine entries and skips; ids must be unique in it."""

    def __init__(self, source: str, shard: str) -> None:
        self.source = source
        self.shard = shard
        self.rows: list[dict[str, Any]] = []
        self.quarantined: list[dict[str, Any]] = []
        self.skipped: Counter[str] = Counter()
        self._ids: set[str] = set()

    def set_aside(
        self,
        file: str,
        line: int,
        reason: str,
        raw: str | None,
        scope: Literal["record", "file"] = "record",
        **extra: Any,
    ) -> None:
        entry = {
            "file": _printable(file),
            "line": line,
            "reason": _printable(reason),
            "raw": _printable((raw or "")[:_RAW_PREVIEW]),
            "scope": scope,
        }
        self.quarantined.append(entry | extra)

    def add(self, row: dict[str, Any], file: str, line: int, raw: str, **extra: Any) -> None:
        if row["id"] in self._ids:
            reason = f"duplicate_id: {row['id']!r} already seen in this shard"
            self.set_aside(file, line, reason, raw, **extra)
            return
        self._ids.add(row["id"])
        self.rows.append(row)

    def take(self, record: Any, file: str, line: int, raw: str, **extra: Any) -> None:
        """Normalize one parsed record and keep it, or set it aside with the reason."""
        if not isinstance(record, dict):
            self.set_aside(file, line, f"not_an_object: got {type(record).__name__}", raw, **extra)
            return
        try:
            row = _record_to_row(record, self.source, self.shard, line)
        except _Rejected as exc:
            self.set_aside(file, line, str(exc), raw, **extra)
            return
        except Exception as exc:  # one odd record must not fail the shard
            self.set_aside(file, line, f"invalid_record: {type(exc).__name__}: {exc}", raw, **extra)
            return
        self.add(row, file, line, raw, **extra)

    def result(self, file: str) -> ReadResult:
        if not self.rows and not self.quarantined and not self.skipped:
            self.set_aside(file, 0, "empty_file: the file holds no records", None, scope="file")
        return ReadResult(
            pa.Table.from_pylist(self.rows, schema=SCHEMA), self.quarantined, dict(self.skipped)
        )


def _parse_json(line: str) -> tuple[Any, str | None]:
    """(value, None) or (None, the ``invalid_json`` reason): every way ``json`` can refuse."""
    try:
        return json.loads(line), None
    except json.JSONDecodeError as exc:
        return None, f"invalid_json: {exc.msg} at column {exc.colno}"
    except RecursionError:
        return None, "invalid_json: nested deeper than the recursion limit"
    except ValueError as exc:  # an integer literal over the 4,300-digit limit
        return None, f"invalid_json: {exc}"


def _read_jsonl(out: _Shard, fs: pafs.FileSystem, path: str, file: str) -> None:
    with storage.open_input(fs, path) as raw_stream:
        stream = Decompressed(raw_stream, codec_for(path))
        cut_flagged = False
        for line in iter_lines(iter(stream)):
            if line.oversize:
                reason = (
                    f"record_too_large: line of {line.oversize} bytes (at most {MAX_LINE_BYTES})"
                )
                out.set_aside(file, line.number, reason, line.data.decode("utf-8", "replace"))
                continue
            if not line.data.strip():
                continue
            cut = not line.terminated and stream.end is not None and not stream.end.complete
            try:
                raw = line.data.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem: str | None = f"invalid_utf8: {exc}"
                raw = line.data.decode("utf-8", "replace")
            else:
                record, problem = _parse_json(raw)
            if problem is not None:
                if cut:  # the stream ends inside this line: that, not its syntax, is the news
                    assert stream.end is not None
                    kind = stream.end.reason().split(":", 1)[0]
                    problem = f"{kind}: the stream ends inside this line ({problem})"
                    cut_flagged = True
                out.set_aside(file, line.number, problem, raw)
                continue
            out.take(record, file, line.number, raw)
    if stream.end is not None and not stream.end.complete and not cut_flagged:
        out.set_aside(file, 0, stream.end.reason(), None, scope="file")


def _parquet_file(fs: pafs.FileSystem, path: str) -> pq.ParquetFile:
    """Open a Parquet file so that any later OSError is the data's: mapped locally, else read.

    pyarrow reports corrupt pages as ``OSError``, as it does a failing network; reading a
    remote file whole first (a failure there is a :class:`StorageError`) tells them apart.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            source: Any = pa.memory_map(path)
        except OSError as exc:
            raise StorageError(f"cannot open {path}: {exc}") from exc
    else:
        source = pa.BufferReader(storage.read_bytes(fs, path))
    return pq.ParquetFile(source)


def _read_parquet_file(out: _Shard, fs: pafs.FileSystem, path: str, file: str) -> None:
    """Row group by row group: rows of an undecodable group are set aside, the rest kept."""
    try:
        pf = _parquet_file(fs, path)
        groups = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
    except StorageError:
        raise
    except Exception as exc:  # ArrowInvalid, OSError...: a damaged footer
        out.set_aside(
            file, 0, f"unreadable_parquet: {type(exc).__name__}: {exc}", None, scope="file"
        )
        return

    def footer_disagrees(detail: str) -> None:
        if not any(q["scope"] == "file" for q in out.quarantined):
            out.set_aside(
                file, 0, f"unreadable_parquet: the footer's row counts are wrong: {detail}",
                None, scope="file",
            )  # fmt: skip

    if any(n < 0 for n in groups) or sum(groups) != pf.metadata.num_rows:
        footer_disagrees(f"row groups {groups}, {pf.metadata.num_rows} rows in all")
    first = 1
    for g, n in enumerate(groups):
        try:
            table = pf.read_row_group(g)
        except Exception as exc:  # pyarrow raises OSError for corrupt pages
            reason = f"unreadable_parquet: row group {g} ({n} rows): {type(exc).__name__}: {exc}"
            for i in range(first, first + max(n, 0)):
                out.set_aside(file, i, reason, None)
            first += max(n, 0)
            continue
        if table.num_rows != n:
            footer_disagrees(f"row group {g} holds {table.num_rows} rows, not {n}")
        try:
            records = table.to_pylist()
        except Exception:  # a value Python cannot hold: find the row(s)
            records = None
        for j in range(table.num_rows):
            i = first + j
            try:
                record = records[j] if records is not None else table.slice(j, 1).to_pylist()[0]
                raw = json.dumps(record, default=_metadata_value)
            except Exception as exc:
                out.set_aside(file, i, f"invalid_record: {type(exc).__name__}: {exc}", None)
                continue
            out.take(record, file, i, raw)
        first += table.num_rows


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
            "metadata": json.dumps({"file_name": name}, ensure_ascii=False),
        }
        out.add(row, file, 0, "")


def _read_warc(out: _Shard, fs: pafs.FileSystem, path: str, file: str) -> None:
    from corpuslab.ingest.warc import iter_warc

    with storage.open_input(fs, path) as stream:
        for rec in iter_warc(stream):
            if rec.skipped is not None:
                out.skipped[rec.skipped] += 1
                continue
            if rec.text is None:
                reason = rec.reason or ""
                out.set_aside(file, rec.number, reason, rec.raw, rec.scope, offset=rec.offset)
                continue
            row = {
                "id": rec.record_id or f"{out.source}/{out.shard}/{rec.number}",
                "text": rec.text,
                "source": out.source,
                "url": rec.url,
                "metadata": _metadata_json(rec.metadata),
            }
            problem = _unicode_error(row)
            if problem is not None:
                out.set_aside(file, rec.number, problem, rec.raw, offset=rec.offset)
                continue
            out.add(row, file, rec.number, rec.raw, offset=rec.offset)


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
