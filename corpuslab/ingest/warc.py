"""WARC input: HTML ``response`` records become documents through main-text extraction.

Records are framed here (WARC header, ``Content-Length`` bytes of content, blank lines) from the
decompressed stream (:class:`~corpuslab.ingest.streams.Decompressed`: gzip told apart by its
magic bytes), each response is parsed with FastWARC and the page's main text extracted with
Resiliparse (``main_content=True`` drops navigation, sidebars, footers and cookie banners), the
extractor DCLM used for its Common Crawl pool (Li et al. 2024, "DataComp-LM", section 3.4 and
table 4). Framing the records here rather than in FastWARC is what lets a cut file say where
it was cut: FastWARC ends quietly on a record whose header or gzip member is incomplete.

Only ``response`` records with a 2xx HTTP status and an HTML content type are documents; every
other record (warcinfo, request, metadata, revisit, non-HTML or non-2xx responses) is skipped and
counted by kind. A damaged record is set aside with one of these reasons:

- ``truncated_stream``: the stream ends inside the record (its header or its content; a
  ``Content-Length`` larger than the rest of the file reads the same), whatever its type; a
  gzip stream cut after the last complete record is flagged for the whole file,
- ``broken_record``: the record's header has no usable ``Content-Length``, or its
  ``Content-Length`` does not end where the next record starts and its payload digest does not
  verify, or FastWARC cannot parse it,
- ``undecodable_payload``: its HTTP ``Content-Encoding``/``Transfer-Encoding`` cannot be undone,
- ``no_text_extracted``: the HTML holds no main text,
- ``record_too_large``: a response over :data:`MAX_RECORD_BYTES`,
- ``unreadable_stream``: the file stops parsing (no WARC header where a record should start,
  bad compression); the records before it are kept and the rest of the file is skipped.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from corpuslab.ingest.streams import ByteReader, Decompressed

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Resiliparse settings: main content only, no link targets or image alt texts in the text
EXTRACT_OPTIONS: dict[str, Any] = {"main_content": True, "alt_texts": False, "links": False}
RAW_PREVIEW = 2000  # characters of a quarantined record kept for inspection
MAX_HEADER_BYTES = 1 << 20  # a WARC header longer than this is no header
MAX_RECORD_BYTES = 1 << 28  # 256 MiB: a larger response is set aside unread
_LENGTH_OK = re.compile(r"\s*[0-9]+\s*")


@dataclass
class WarcOutcome:
    """What became of one record: a document (``text``), a quarantine ``reason`` or a skip."""

    number: int  # 1-based position of the record in the file
    offset: int | None  # byte offset of the record in the decompressed stream, where known
    text: str | None = None
    reason: str | None = None
    skipped: str | None = None
    scope: Literal["record", "file"] = "record"  # "file": flags the stream, stands for no record
    url: str | None = None
    record_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    raw: str = field(default="", repr=False)
    # kept only while the next record is being read: checks a suspect Content-Length
    _payload: bytes | None = field(default=None, repr=False)
    _digest: str | None = None


def _decode_payload(body: bytes, http_headers: Any) -> bytes:
    """Undo HTTP transfer and content encodings (FastWARC's auto-decoding hides truncation)."""
    if "chunked" in (http_headers.get("Transfer-Encoding") or "").lower():
        from fastwarc.stream_io import ChunkedReader

        body = ChunkedReader(io.BytesIO(body)).read()
    encodings = [e.strip().lower() for e in (http_headers.get("Content-Encoding") or "").split(",")]
    for enc in reversed([e for e in encodings if e and e != "identity"]):
        if enc in ("gzip", "x-gzip"):
            body = gzip.decompress(body)
        elif enc == "deflate":
            try:
                body = zlib.decompress(body)
            except zlib.error:
                body = zlib.decompress(body, -zlib.MAX_WBITS)  # raw deflate, as some servers send
        elif enc == "br":
            import brotli  # installed with FastWARC

            body = brotli.decompress(body)
        elif enc == "zstd":
            import zstandard

            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        else:
            raise ValueError(f"unsupported Content-Encoding {enc!r}")
    return body


def decode_html(body: bytes, charset: str | None = None) -> str:
    """HTML bytes to text: the declared charset, else UTF-8, else Resiliparse's detection."""
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    if charset:
        return bytes_to_str(body, charset)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return bytes_to_str(body, detect_encoding(body, from_html_meta=True) or "cp1252")


def extract_main_text(html: str) -> str:
    """The page's main text without boilerplate (Resiliparse, DCLM's extractor settings)."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    return extract_plain_text(HTMLTree.parse(html), **EXTRACT_OPTIONS).strip()


def _digest_matches(digest: str | None, payload: bytes) -> bool:
    """Whether a ``WARC-Payload-Digest`` (``algo:base32`` or ``algo:hex``) matches a payload."""
    if not digest or ":" not in digest:
        return False
    algo, _, value = digest.partition(":")
    value = value.strip().upper()
    try:
        h = hashlib.new(algo.strip().lower().replace("-", ""), payload).digest()
    except ValueError:  # an algorithm hashlib does not know
        return False
    return value in (base64.b32encode(h).decode(), h.hex().upper())


def _response_outcome(record: Any, out: WarcOutcome) -> WarcOutcome:
    """Turn one HTTP response record into a document, a skip or a quarantine entry."""
    if not record.is_http:
        out.skipped = "not_http"
        return out
    status = record.http_headers.status_code
    if status is None or not 200 <= status < 300:
        out.skipped = f"http_status_{status}"
        return out
    mime = (record.http_content_type or "").lower()
    if mime not in HTML_TYPES:
        out.skipped = "non_html"
        return out
    body = record.reader.read()
    out._payload = body
    if len(body) < record.content_length:
        out.reason = f"truncated_record: payload has {len(body)} of {record.content_length} bytes"
        out.raw = body[:RAW_PREVIEW].decode("utf-8", "replace")
        return out
    try:
        decoded = _decode_payload(body, record.http_headers)
    except Exception as exc:  # gzip, zlib, brotli and zstandard each raise their own errors
        out.reason = f"undecodable_payload: {type(exc).__name__}: {exc}"
        return out
    html = decode_html(decoded, record.http_charset)
    out.raw = html[:RAW_PREVIEW]
    text = extract_main_text(html)
    if not text:
        out.reason = "no_text_extracted: the HTML has no main text"
        return out
    out.text = text
    out.metadata.update(
        {"content_type": mime, "http_status": status, "charset": record.http_charset}
    )
    return out


def _outcome(record: Any, number: int, offset: int) -> WarcOutcome:
    headers = record.headers
    out = WarcOutcome(number=number, offset=offset)
    rtype = str(record.record_type)
    if rtype != "response":
        out.skipped = rtype
        return out
    out.url = headers.get("WARC-Target-URI")
    out.record_id = (headers.get("WARC-Record-ID") or "").strip("<>") or None
    out._digest = headers.get("WARC-Payload-Digest")
    out.metadata = {"warc_record_id": out.record_id, "warc_date": headers.get("WARC-Date")}
    if headers.get("WARC-Truncated"):
        out.metadata["warc_truncated"] = headers.get("WARC-Truncated")
    return _response_outcome(record, out)


def _suspect(pending: WarcOutcome, error: str) -> WarcOutcome:
    """A response followed by no record header: kept only as a document whose digest verifies."""
    if pending.skipped is not None:
        return pending
    if pending.text is not None and _digest_matches(pending._digest, pending._payload or b""):
        return pending
    pending.text = None
    pending.reason = (
        f"broken_record: the next record does not start where its Content-Length ends ({error})"
    )
    return pending


def _parse_record(block: bytes, number: int, offset: int) -> WarcOutcome:
    """One framed response record (header, content, separator) parsed by FastWARC."""
    from fastwarc.warc import ArchiveIterator

    try:
        record = next(iter(ArchiveIterator(io.BytesIO(block), parse_http=True, auto_decode="none")))
        return _outcome(record, number, offset)
    except StopIteration:
        reason = "broken_record: FastWARC finds no record in it"
    except BaseException as exc:  # FastWARC raises its own errors; a Rust panic is no Exception
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        reason = f"broken_record: {type(exc).__name__}: {exc}"
    return WarcOutcome(number=number, offset=offset, reason=reason)


def _headers(lines: list[bytes]) -> dict[str, str]:
    """WARC header fields by lower-case name (the first of repeated names wins)."""
    out: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.decode("utf-8", "replace").partition(":")
        if sep:
            out.setdefault(name.strip().lower(), value.strip())
    return out


def _skip_blank(src: ByteReader) -> None:
    while src.peek(1) in (b"\r", b"\n"):
        src.read(1)


def _cut(dec: Decompressed, detail: str) -> str:
    """The reason of a record the stream ends inside: cut, or the codec gave up there."""
    if dec.end is not None and dec.end.state == "corrupt":
        return f"unreadable_stream: {detail}; {dec.end.detail}"
    return f"truncated_stream: {detail}"


def iter_warc(stream: BinaryIO) -> Iterator[WarcOutcome]:
    """Every record of a WARC stream (plain or gzip) as a document, skip or quarantine entry.

    A record the stream ends inside is set aside as ``truncated_stream``; a stream that stops
    parsing ends with a ``scope="file"`` outcome (``unreadable_stream``) standing for the rest
    of the file; a gzip stream cut after the last complete record ends with a ``scope="file"``
    ``truncated_stream``. A failing read raises :class:`~corpuslab.ingest.storage.StorageError`.
    """
    dec = Decompressed(stream, "sniff")
    src = ByteReader(iter(dec))
    number = 0
    flagged = False
    while True:
        _skip_blank(src)
        if not src.peek(1):
            break
        number += 1
        start = src.pos
        first = src.readline(MAX_HEADER_BYTES)
        if not first.startswith(b"WARC/"):
            if not src.peek(1) and b"WARC/".startswith(first):
                reason = _cut(dec, "the stream ends inside a record's first line")
                yield WarcOutcome(number=number, offset=start, reason=reason)
            else:
                detail = f"no WARC record starts at byte {start} (after record {number - 1})"
                reason = f"unreadable_stream: {detail}; rest of file skipped"
                yield WarcOutcome(number=number, offset=start, reason=reason, scope="file")
            flagged = True
            break
        lines, size, complete = [first], len(first), False
        while size < MAX_HEADER_BYTES:
            line = src.readline(MAX_HEADER_BYTES - size)
            if not line:
                break
            lines.append(line)
            size += len(line)
            if line in (b"\r\n", b"\n"):
                complete = True
                break
        if not complete:
            if src.peek(1):
                reason = f"unreadable_stream: record {number}'s WARC header at byte {start} is "
                reason += f"longer than {MAX_HEADER_BYTES} bytes; rest of file skipped"
                yield WarcOutcome(number=number, offset=start, reason=reason, scope="file")
            else:
                reason = _cut(dec, "the stream ends inside this record's WARC header")
                raw = b"".join(lines)[:RAW_PREVIEW].decode("utf-8", "replace")
                yield WarcOutcome(number=number, offset=start, reason=reason, raw=raw)
            flagged = True
            break
        headers = _headers(lines[1:-1])
        length_text = headers.get("content-length")
        if length_text is None or not _LENGTH_OK.fullmatch(length_text):
            what = "no Content-Length" if length_text is None else f"{length_text!r}"
            yield WarcOutcome(
                number=number,
                offset=start,
                reason=f"broken_record: WARC header with {what} for Content-Length",
            )
            reason = (
                f"unreadable_stream: the record after record {number} cannot be found without "
                "its Content-Length; rest of file skipped"
            )
            yield WarcOutcome(number=number + 1, offset=None, reason=reason, scope="file")
            flagged = True
            break
        length = int(length_text)
        rtype = headers.get("warc-type", "")
        if rtype == "response" and length <= MAX_RECORD_BYTES:
            content = src.read(length)
            got = len(content)
        else:
            content, got = b"", src.skip(length)
        if got < length:
            reason = _cut(
                dec, f"the stream ends inside this record's content ({got} of {length} bytes)"
            )
            raw = content[:RAW_PREVIEW].decode("utf-8", "replace")
            yield WarcOutcome(number=number, offset=start, reason=reason, raw=raw)
            flagged = True
            break
        if rtype != "response":
            outcome = WarcOutcome(number=number, offset=start, skipped=rtype or "untyped")
        elif length > MAX_RECORD_BYTES:
            reason = f"record_too_large: {length} bytes of content (at most {MAX_RECORD_BYTES})"
            outcome = WarcOutcome(number=number, offset=start, reason=reason)
        else:
            outcome = _parse_record(b"".join(lines) + content + b"\r\n\r\n", number, start)
        _skip_blank(src)
        following = src.peek(5)  # shorter only at the end: a next record cut in its first line
        if following and not b"WARC/".startswith(following):
            yield _suspect(outcome, f"byte {src.pos} holds {following!r}")
            reason = (
                f"unreadable_stream: no WARC record starts at byte {src.pos} (after record "
                f"{number}); rest of file skipped"
            )
            yield WarcOutcome(number=number + 1, offset=src.pos, reason=reason, scope="file")
            flagged = True
            break
        outcome._payload = None
        yield outcome
    if not flagged and dec.end is not None and not dec.end.complete:
        yield WarcOutcome(number=number + 1, offset=None, reason=dec.end.reason(), scope="file")
