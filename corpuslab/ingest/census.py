"""An independent count of the records in a raw shard, and the check that none went missing.

The corpus stage's ``documents_conserved`` check used to compare the reader's output with
itself, so a record the reader never saw could not be missed. :func:`count_records` counts a
shard's record units in a separate pass over the raw bytes, with other code than the readers
at every layer:

- JSONL: non-blank physical lines (as :mod:`corpuslab.ingest.streams` defines a line), split
  with ``bytes.splitlines``; gzip through Python's ``gzip`` module and zstd through zstandard's
  stream reader (the readers drive zlib and zstandard decompression objects), with the zstd
  frames walked block by block to see whether the last one is complete;
- Parquet: the row count in the file's footer (the reader reads the row groups);
- WARC: records found by walking ``Content-Length`` with a regular expression over the headers
  (the reader frames records line by line and parses them with FastWARC);
- text folders: the text files directly inside the folder.

:func:`reconcile` then holds the reader's account (kept + quarantined + skipped) against the
count: a shortfall, or a cut or corrupt stream, that no quarantine reason explains fails it.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import pyarrow.fs as pafs

from corpuslab.ingest import storage
from corpuslab.ingest.storage import Location

CHUNK = 1 << 16
# quarantine reasons that explain records the reader could not reach after a damaged point
STREAM_REASONS = frozenset({"truncated_stream", "unreadable_stream", "unreadable_parquet"})
_WARC_HEAD = re.compile(rb"WARC/")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LENGTH = re.compile(rb"(?im)^[ \t]*content-length[ \t]*:(.*)$")
_MAX_WARC_HEADER = 1 << 20
Ended = Literal["complete", "truncated", "corrupt"]


@dataclass(frozen=True)
class Census:
    """Record units found in a raw shard and whether its bytes ended where they should.

    ``records`` is None when the file's structure cannot be read at all (a Parquet footer);
    ``ended`` is ``complete``, ``truncated`` (cut inside a member, frame or WARC record) or
    ``corrupt`` (undecodable from some point on: only the records before it are counted).
    """

    unit: Literal["line", "row", "record", "file"]
    records: int | None
    ended: Ended = "complete"
    detail: str = ""


@dataclass
class _Ending:
    """How a stream ended, set by the reader that stops early (untouched: complete)."""

    ended: Ended = "complete"
    detail: str = ""

    def set(self, ended: Ended, detail: str) -> None:
        self.ended, self.detail = ended, detail


@dataclass(frozen=True)
class Reconciliation:
    """The reader's account held against the census: conserved or not, and why."""

    conserved: bool
    census: int | None
    accounted: int
    shortfall: int | None
    explanation: str


class _ZstdFrames:
    """Walks zstd frame and block headers (RFC 8878) as bytes go by: is the last frame whole?"""

    def __init__(self) -> None:
        self._buf = b""
        self._need: int | None = None  # bytes still to skip in the current block/frame part
        self._state = "magic"
        self._checksum = False
        self.frames = 0
        self.error: str | None = None

    @property
    def between_frames(self) -> bool:
        return self._state == "magic" and not self._buf and not self._need

    def feed(self, data: bytes) -> None:
        if self.error:
            return
        self._buf += data
        while True:
            if self._need:
                take = min(self._need, len(self._buf))
                self._buf, self._need = self._buf[take:], self._need - take
                if self._need:
                    return
            if not self._step():
                return

    def _step(self) -> bool:
        b = self._buf
        if self._state == "magic":
            if len(b) < 4:
                return False
            magic = int.from_bytes(b[:4], "little")
            if 0x184D2A50 <= magic <= 0x184D2A5F:  # skippable frame
                if len(b) < 8:
                    return False
                self._buf, self._need = b[8:], int.from_bytes(b[4:8], "little")
                self.frames += 1
                return True
            if magic != 0xFD2FB528:
                self.error = f"no zstd frame magic at frame {self.frames + 1}"
                return False
            if len(b) < 5:
                return False
            fhd = b[4]
            single = (fhd >> 5) & 1
            fcs = {0: single, 1: 2, 2: 4, 3: 8}[fhd >> 6]
            did = {0: 0, 1: 1, 2: 2, 3: 4}[fhd & 3]
            size = 5 + (0 if single else 1) + did + fcs
            if len(b) < size:
                return False
            self._checksum = bool((fhd >> 2) & 1)
            self._buf, self._state = b[size:], "block"
            return True
        if self._state == "block":
            if len(b) < 3:
                return False
            header = int.from_bytes(b[:3], "little")
            last, kind, size = header & 1, (header >> 1) & 3, header >> 3
            self._buf, self._need = b[3:], (1 if kind == 1 else size)
            if last:
                self._state = "checksum" if self._checksum else "done"
            return True
        if self._state == "checksum":
            self._need, self._state = 4, "done"
            return True
        self.frames += 1  # done
        self._state = "magic"
        return True


def _count_lines(chunks: Iterator[bytes]) -> int:
    """Non-blank lines of a byte stream: ``bytes.splitlines`` (\\n, \\r\\n, \\r), BOM excluded."""
    count = 0
    carry = b""
    first = True
    for chunk in chunks:
        data = carry + chunk
        if first:
            if len(data) < 3:
                carry = data
                continue
            data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
            first = False
        lines = data.splitlines(keepends=True)
        carry = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        count += sum(1 for line in lines if line.strip())
        if len(carry) > 64:  # a long unfinished line: only whether it is blank matters
            carry = (b"x" if carry.strip() else b"") + (b"\r" if carry.endswith(b"\r") else b"")
    if first and carry.startswith(b"\xef\xbb\xbf"):
        carry = carry[3:]
    return count + (1 if carry.strip() else 0)


class _Tee(io.RawIOBase):
    """A raw stream that hands every byte it reads to a zstd frame walker too."""

    def __init__(self, raw: BinaryIO, frames: _ZstdFrames) -> None:
        self._raw, self._frames = raw, frames

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        self._frames.feed(data)
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)


def _gzip_chunks(raw: BinaryIO, state: _Ending) -> Iterator[bytes]:
    with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
        try:
            while chunk := fh.read1(CHUNK):  # read() drops what it buffered if EOFError hits
                yield chunk
        except EOFError as exc:
            state.set("truncated", f"gzip: {exc}")
        except (OSError, zlib.error) as exc:  # BadGzipFile is an OSError
            state.set("corrupt", f"gzip: {type(exc).__name__}: {exc}")


def _zstd_chunks(raw: BinaryIO, state: _Ending) -> Iterator[bytes]:
    import zstandard

    frames = _ZstdFrames()
    tee = io.BufferedReader(_Tee(raw, frames))
    reader = zstandard.ZstdDecompressor().stream_reader(tee, read_across_frames=True)
    try:
        while chunk := reader.read(CHUNK):
            yield chunk
    except zstandard.ZstdError as exc:
        state.set("corrupt", f"zstd: {exc}")
        return
    while tee.read(CHUNK):  # the frame walker sees every byte, even those zstd left unread
        pass
    if frames.error:
        state.set("corrupt", f"zstd: {frames.error}")
    elif not frames.between_frames:
        state.set("truncated", f"zstd: frame {frames.frames + 1} is incomplete")


def _decompressed(raw: BinaryIO, name: str, state: _Ending) -> Iterator[bytes]:
    if name.endswith(".gz"):
        return _gzip_chunks(raw, state)
    if name.endswith(".zst"):
        return _zstd_chunks(raw, state)
    return iter(lambda: raw.read(CHUNK), b"")


def _sniffed(raw: BinaryIO, state: _Ending) -> Iterator[bytes]:
    """WARC files: gzip by its magic bytes, whatever the suffix (as the reader does)."""
    head = raw.read(2)
    stream = io.BufferedReader(_Prefixed(head, raw))
    if head == b"\x1f\x8b":
        return _gzip_chunks(stream, state)
    return iter(lambda: stream.read(CHUNK), b"")


class _Prefixed(io.RawIOBase):
    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self._head, self._raw = head, raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._head[: len(buffer)]
        self._head = self._head[len(data) :]
        if not data:
            data = self._raw.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)


def _count_warc(chunks: Iterator[bytes], state: _Ending) -> int:
    """WARC records, walked by ``Content-Length`` over a growing buffer."""
    buf = b""
    records = 0
    more = True

    def fill() -> bool:
        nonlocal buf
        chunk = next(chunks, b"")
        buf += chunk
        return bool(chunk)

    while True:
        while more and len(buf) < 16:
            more = fill()
        buf = buf.lstrip(b"\r\n")
        if not buf:
            if more:
                more = fill()
                continue
            return records
        head = _WARC_HEAD.match(buf)
        if head is None:
            if more and len(buf) < 64:
                more = fill()
                continue
            if b"WARC/".startswith(buf):  # the file ends inside a record's first line
                state.set("truncated", f"record {records + 1}: header cut")
                return records + 1
            state.set("corrupt", f"no WARC record after record {records}")
            return records
        end = _HEADER_END.search(buf, head.start())
        while end is None and more and len(buf) < _MAX_WARC_HEADER:
            more = fill()
            end = _HEADER_END.search(buf, head.start())
        records += 1
        if end is None:
            if more:
                state.set("corrupt", f"record {records}: header too long")
            else:
                state.set("truncated", f"record {records}: header cut")
            return records
        length = _LENGTH.search(buf, 0, end.end())
        value = length.group(1).strip() if length else b""
        if not value.isdigit():
            state.set("corrupt", f"record {records}: no usable Content-Length")
            return records
        need = end.end() + int(value)
        while len(buf) < need and more:
            more = fill()
        if len(buf) < need:
            state.set("truncated", f"record {records}: content cut")
            return records
        buf = buf[need:]
        while more and len(buf) < 64:
            more = fill()
        rest = buf.lstrip(b"\r\n")
        if rest and not (rest.startswith(b"WARC/") or b"WARC/".startswith(rest)):
            state.set("corrupt", f"record {records}: Content-Length is wrong")
            return records


def count_records(path: Location, *, fs: pafs.FileSystem | None = None) -> Census:
    """Count the record units of one raw shard (file or text folder) in a pass of its own."""
    from corpuslab.ingest.readers import PARQUET_SUFFIXES, TEXT_SUFFIXES, WARC_SUFFIXES

    filesystem, p = storage.resolve(path, fs)
    if storage.path_type(filesystem, p) == "dir":
        n = len(storage.list_files(filesystem, p, TEXT_SUFFIXES, recursive=False))
        return Census("file", n)
    if p.endswith(TEXT_SUFFIXES):
        return Census("file", 1)
    if p.endswith(PARQUET_SUFFIXES):
        if storage.file_size(filesystem, p) == 0:
            return Census("row", 0)
        import pyarrow.parquet as pq

        try:
            with filesystem.open_input_file(p) as fh:
                meta = pq.read_metadata(fh)
        except Exception as exc:  # any footer damage: uncountable
            return Census("row", None, "corrupt", f"{type(exc).__name__}: {exc}")
        groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        if any(n < 0 for n in groups) or sum(groups) != meta.num_rows:
            detail = f"footer says {meta.num_rows} rows, its row groups {groups}"
            return Census("row", meta.num_rows, "corrupt", detail)
        return Census("row", meta.num_rows)
    state = _Ending()
    with storage.open_input(filesystem, p) as raw:
        if p.endswith(WARC_SUFFIXES):
            n = _count_warc(_sniffed(raw, state), state)
            unit: Literal["line", "record"] = "record"
        else:
            n = _count_lines(_decompressed(raw, p, state))
            unit = "line"
    return Census(unit, n, state.ended, state.detail)


def _stream_flags(quarantined: list[dict[str, Any]]) -> list[str]:
    return [q["reason"] for q in quarantined if q["reason"].split(":", 1)[0] in STREAM_REASONS]


def reconcile(
    census: Census, kept: int, quarantined: list[dict[str, Any]], skipped: int
) -> Reconciliation:
    """Whether every record unit the census found is kept, quarantined or skipped.

    ``quarantined`` are the reader's entries; those with ``scope == "file"`` flag the file and
    stand for no record. A shortfall, a surplus, or a cut or corrupt stream fails the check
    unless a stream-level reason (:data:`STREAM_REASONS`) explains it: records the reader
    could not reach after a damaged point, or (corrupt streams only) records it salvaged
    before the point where the census's decompressor gave up.
    """
    records = sum(1 for q in quarantined if q.get("scope", "record") == "record")
    accounted = kept + records + skipped
    flags = _stream_flags(quarantined)
    flagged = f" ({flags[0]})" if flags else ""
    if census.records is None:
        ok = bool(flags)
        why = (
            f"the file's structure is unreadable ({census.detail}); flagged{flagged}"
            if ok
            else f"the file's structure is unreadable ({census.detail}) and nothing says so"
        )
        return Reconciliation(ok, None, accounted, None, why)
    shortfall = census.records - accounted
    if census.ended != "complete" and not flags:
        return Reconciliation(
            False,
            census.records,
            accounted,
            shortfall,
            f"the raw stream is {census.ended} ({census.detail}) but no quarantine entry says so",
        )
    if shortfall > 0 and not flags:
        return Reconciliation(
            False,
            census.records,
            accounted,
            shortfall,
            f"{shortfall} of {census.records} {census.unit}s are neither kept, quarantined "
            "nor skipped",
        )
    if shortfall < 0 and not (census.ended == "corrupt" and flags):
        # a corrupt stream: the census's codec drops what it buffered when it fails, the
        # reader salvages every byte before the failure, so the census is a lower bound there
        return Reconciliation(
            False,
            census.records,
            accounted,
            shortfall,
            f"the reader accounts for {accounted} records but the raw bytes hold "
            f"{census.records} {census.unit}s",
        )
    if shortfall > 0:
        why = f"{shortfall} {census.unit}s after the damaged point not read{flagged}"
    elif shortfall < 0:
        why = f"{-shortfall} more records salvaged than the census decoded{flagged}"
    elif census.ended != "complete":
        why = f"all {census.records} {census.unit}s accounted for; stream {census.ended}{flagged}"
    else:
        why = f"all {census.records} {census.unit}s accounted for"
    return Reconciliation(True, census.records, accounted, shortfall, why)
