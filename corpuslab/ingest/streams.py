"""Raw bytes as the readers see them: decompressed chunk by chunk, cut into lines or records.

Python's ``gzip`` module and zstandard's stream reader hide damage: a zstd stream cut anywhere
simply ends (its tail lost without a word) and a gzip stream cut inside a member loses the bytes
buffered before the error. :class:`Decompressed` drives zlib and zstandard's decompression
objects directly, hands out every byte that decompressed, and records in :attr:`Decompressed.end`
how the stream ended: ``complete``, ``truncated`` (it stops inside a gzip member or zstd frame)
or ``corrupt`` (the codec rejected the bytes; nothing after that point can be read). A failing
disk or network is not data damage: its :class:`~corpuslab.ingest.storage.StorageError`
propagates unchanged.

What a JSONL line is (:func:`iter_lines`): a line ends at ``\\n``, ``\\r\\n`` or a lone ``\\r``
(Python's universal newlines, so a file written with old Mac line endings is not one record);
a UTF-8 byte order mark at the very start of the stream is not part of the first line; a line
whose bytes are all ASCII whitespace (``bytes.strip``) is blank and holds no record.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

READ_CHUNK = 1 << 16  # raw bytes read at a time (storage buffers 4 MiB ahead)
MAX_OUT = 1 << 20  # gzip: decompressed bytes handed out per call (bounds a decompression bomb)
ZSTD_FEED = 1 << 13  # zstd: compressed bytes fed per call (zstd expands at most ~32,000x)
MAX_LINE_BYTES = 1 << 28  # 256 MiB: a longer line is set aside without being held in memory
BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"
_EOL = re.compile(rb"\r\n|\r|\n")

Codec = Literal["gzip", "zstd"] | None


@dataclass(frozen=True)
class StreamEnd:
    """How a stream ended: ``complete``, ``truncated`` or ``corrupt``, and where."""

    state: Literal["complete", "truncated", "corrupt"]
    detail: str = ""

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    def reason(self) -> str:
        """The quarantine reason of this ending: ``truncated_stream`` or ``unreadable_stream``."""
        kind = "truncated_stream" if self.state == "truncated" else "unreadable_stream"
        return f"{kind}: {self.detail}"


def codec_for(name: str) -> Codec:
    """The compression a file name declares: ``.gz`` gzip, ``.zst`` zstd, else none."""
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith(".zst"):
        return "zstd"
    return None


class Decompressed:
    """The decompressed chunks of a raw stream; :attr:`end` says how it ended once iterated.

    ``codec`` is ``"gzip"``, ``"zstd"``, ``None`` (plain bytes) or ``"sniff"`` (gzip when the
    stream starts with its magic bytes, else plain: how WARC files are read). Several gzip
    members or zstd frames are read one after the other; NUL padding after a gzip member is
    skipped, as ``gzip`` does.
    """

    def __init__(self, raw: BinaryIO, codec: Codec | Literal["sniff"]) -> None:
        self._raw = raw
        self._codec = codec
        self.end: StreamEnd | None = None
        self.compressed_bytes = 0
        self.decompressed_bytes = 0

    def _read(self) -> bytes:
        data = self._raw.read(READ_CHUNK)
        self.compressed_bytes += len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        first = self._read()
        codec = self._codec
        if codec == "sniff":
            codec = "gzip" if first.startswith(GZIP_MAGIC) else None
        gen = {"gzip": self._gunzip, "zstd": self._unzstd}.get(codec or "", self._plain)
        for out in gen(first):
            self.decompressed_bytes += len(out)
            yield out

    def _plain(self, first: bytes) -> Iterator[bytes]:
        data = first
        while data:
            yield data
            data = self._read()
        self.end = StreamEnd("complete")

    def _gunzip(self, first: bytes) -> Iterator[bytes]:
        member: zlib._Decompress | None = None
        members = 0
        data = first
        try:
            while data:
                buf = data
                while buf:
                    if member is None:
                        if members:
                            buf = buf.lstrip(b"\x00")  # padding after a member
                            if not buf:
                                break
                        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    before = member.copy()
                    try:
                        out = member.decompress(buf, MAX_OUT)
                    except zlib.error:  # the failing call's output is lost: salvage it
                        yield from _salvage(before, buf)
                        raise
                    if out:
                        yield out
                    if member.eof:
                        buf, member = member.unused_data, None
                        members += 1
                    else:
                        buf = member.unconsumed_tail
                data = self._read()
            if member is not None:
                tail = member.flush()
                if tail:
                    yield tail
                self.end = StreamEnd(
                    "truncated",
                    f"the gzip stream ends inside member {members + 1}, after "
                    f"{self.compressed_bytes} compressed bytes",
                )
                return
        except zlib.error as exc:
            self.end = StreamEnd(
                "corrupt",
                f"zlib.error: {exc} in gzip member {members + 1} (compressed byte "
                f"{self.compressed_bytes} read); rest of file skipped",
            )
            return
        self.end = StreamEnd("complete")

    def _unzstd(self, first: bytes) -> Iterator[bytes]:
        import zstandard

        dctx = zstandard.ZstdDecompressor()
        frame = None
        frames = 0
        data = first
        try:
            while data:
                buf = data
                while buf:
                    if frame is None:
                        frame = dctx.decompressobj()
                    piece, buf = buf[:ZSTD_FEED], buf[ZSTD_FEED:]
                    out = frame.decompress(piece)
                    if out:
                        yield out
                    if frame.eof:
                        buf, frame = frame.unused_data + buf, None
                        frames += 1
                data = self._read()
        except zstandard.ZstdError as exc:
            self.end = StreamEnd(
                "corrupt",
                f"ZstdError: {exc} in zstd frame {frames + 1} (compressed byte "
                f"{self.compressed_bytes} read); rest of file skipped",
            )
            return
        if frame is not None:
            self.end = StreamEnd(
                "truncated",
                f"the zstd stream ends inside frame {frames + 1}, after "
                f"{self.compressed_bytes} compressed bytes",
            )
            return
        self.end = StreamEnd("complete")


def _salvage(member: zlib._Decompress, buf: bytes) -> Iterator[bytes]:
    """What ``member`` decompresses from ``buf`` before the byte that makes zlib fail.

    A failing ``decompress`` call hands out nothing, so a stream whose checksum fails at the
    end would lose everything fed with it; fed a byte at a time (only on this error path),
    every byte before the failure comes out.
    """
    for i in range(len(buf)):
        try:
            out = member.decompress(buf[i : i + 1])
        except zlib.error:
            return
        if out:
            yield out
        if member.eof:
            return


def _without_bom(chunks: Iterator[bytes]) -> Iterator[bytes]:
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= len(BOM):
            break
    yield head.removeprefix(BOM)
    yield from chunks


@dataclass(frozen=True)
class Line:
    """One physical line: its 1-based number, its bytes (without the line ending).

    ``terminated`` is False only for a last line that the stream ends inside; ``oversize`` is
    the length of a line longer than the limit, whose ``data`` then holds only its start.
    """

    number: int
    data: bytes
    terminated: bool = True
    oversize: int = 0


def iter_lines(chunks: Iterator[bytes], max_bytes: int = MAX_LINE_BYTES) -> Iterator[Line]:
    """The lines of a byte stream (see the module docstring for what a line is)."""
    pending: list[bytes] = []
    size = 0
    oversize = 0
    number = 0
    carry_cr = False
    for chunk in _without_bom(iter(chunks)):
        if carry_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the \r that ended the last line was half of a \r\n
        # split in C: on LF alone unless the chunk holds a CR (then CRLF, CR and LF)
        pieces = _EOL.split(chunk) if b"\r" in chunk else chunk.split(b"\n")
        carry_cr = chunk.endswith(b"\r")
        for piece in pieces[:-1]:
            number += 1
            if oversize or size + len(piece) > max_bytes:
                head = b"".join([*pending, piece[:4096]])[:4096]
                yield Line(number, head, oversize=(oversize or size) + len(piece))
            else:
                yield Line(number, b"".join([*pending, piece]) if pending else piece)
            pending, size, oversize = [], 0, 0
        rest = pieces[-1]
        if not rest:
            continue
        if oversize:
            oversize += len(rest)
        elif size + len(rest) > max_bytes:
            oversize = size + len(rest)
            pending = [b"".join([*pending, rest])[:4096]]
        else:
            pending.append(rest)
            size += len(rest)
    if pending or oversize:
        number += 1
        yield Line(number, b"".join(pending), terminated=False, oversize=oversize)


class ByteReader:
    """Sequential reads over decompressed chunks, with the offset of the next unread byte."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = bytearray()
        self._at = 0  # index of the next unread byte in _buf
        self.pos = 0  # offset of the next unread byte in the stream

    def _fill(self, n: int) -> bool:
        """Make ``n`` unread bytes available if the stream has them."""
        while len(self._buf) - self._at < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            if self._at > (1 << 20) and self._at > len(self._buf) // 2:
                del self._buf[: self._at]
                self._at = 0
            self._buf += chunk
        return True

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return bytes(self._buf[self._at : self._at + n])

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the stream)."""
        self._fill(n)
        out = bytes(self._buf[self._at : self._at + n])
        self._at += len(out)
        self.pos += len(out)
        return out

    def skip(self, n: int) -> int:
        """Discard up to ``n`` bytes without holding them; returns how many were skipped."""
        done = 0
        while done < n:
            if len(self._buf) == self._at and not self._fill(1):
                break
            take = min(n - done, len(self._buf) - self._at)
            self._at += take
            done += take
            if self._at == len(self._buf):
                self._buf.clear()
                self._at = 0
        self.pos += done
        return done

    def readline(self, limit: int) -> bytes:
        """Bytes up to and including the next ``\\n`` (at most ``limit``; fewer at the end)."""
        scanned = 0  # unread bytes already searched for a newline
        while True:
            avail = len(self._buf) - self._at
            i = self._buf.find(b"\n", self._at + scanned, self._at + min(avail, limit))
            if i >= 0:
                return self.read(i + 1 - self._at)
            if avail >= limit:
                return self.read(limit)
            scanned = avail
            if not self._fill(avail + 1):
                return self.read(avail)
