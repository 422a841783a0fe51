"""WARC input: HTML ``response`` records become documents through main-text extraction.

Records are parsed with FastWARC and the page's main text is extracted with Resiliparse
(``main_content=True`` drops navigation, sidebars, footers and cookie banners), the extractor
DCLM used for its Common Crawl pool (Li et al. 2024, "DataComp-LM", section 3.4 and table 4).

Only ``response`` records with a 2xx HTTP status and an HTML content type are documents; every
other record (warcinfo, request, metadata, revisit, non-HTML or non-2xx responses) is skipped and
counted by kind. A damaged record is set aside with one of these reasons:

- ``truncated_record``: the payload ends before its ``Content-Length`` (a cut file, or a
  ``Content-Length`` larger than the record),
- ``broken_record``: the record's header is incomplete, or its ``Content-Length`` does not end
  where the next record starts and its payload digest does not verify,
- ``undecodable_payload``: its HTTP ``Content-Encoding``/``Transfer-Encoding`` cannot be undone,
- ``no_text_extracted``: the HTML holds no main text,
- ``unreadable_stream``: the file stops parsing (bad header, bad compression); the records before
  it are kept and the rest of the file is skipped.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Resiliparse settings: main content only, no link targets or image alt texts in the text
EXTRACT_OPTIONS: dict[str, Any] = {"main_content": True, "alt_texts": False, "links": False}
RAW_PREVIEW = 2000  # characters of a quarantined record kept for inspection


@dataclass
class WarcOutcome:
    """What became of one record: a document (``text``), a quarantine ``reason`` or a skip."""

    number: int  # 1-based position of the record in the file
    offset: int | None  # byte offset of the record in the (compressed) file, where known
    text: str | None = None
    reason: str | None = None
    skipped: str | None = None
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


def _outcome(record: Any, number: int) -> WarcOutcome:
    headers = record.headers
    out = WarcOutcome(number=number, offset=record.stream_pos)
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
    length = headers.get("Content-Length")
    if length is None:
        out.reason = "broken_record: incomplete WARC header (no Content-Length)"
        return out
    if not length.strip().isdigit():
        out.reason = f"broken_record: Content-Length {length!r} is not a number"
        return out
    return _response_outcome(record, out)


def _suspect(pending: WarcOutcome, error: str) -> WarcOutcome:
    """A document followed by an unparseable header: keep it only if its digest verifies."""
    if pending._payload is None or (pending.reason or "").startswith("truncated_record"):
        return pending
    if pending.text is not None and _digest_matches(pending._digest, pending._payload):
        return pending
    pending.text = None
    pending.reason = (
        f"broken_record: the next record does not start where its Content-Length ends ({error})"
    )
    return pending


def iter_warc(stream: BinaryIO) -> Iterator[WarcOutcome]:
    """Every record of a WARC stream (plain or gzip) as a document, skip or quarantine entry.

    A record is handed out only once the next one parsed (or the file ended), so that a wrong
    ``Content-Length`` is blamed on the record it belongs to rather than on its successor.
    """
    from fastwarc.warc import ArchiveIterator

    records = iter(ArchiveIterator(stream, parse_http=True, auto_decode="none"))
    pending: WarcOutcome | None = None
    number = 0
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except BaseException as exc:  # FastWARC raises OSError; a Rust panic is a BaseException
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            error = f"{type(exc).__name__}: {exc}"
            if pending is not None:
                yield _suspect(pending, error)
                pending = None
            yield WarcOutcome(
                number=number + 1,
                offset=None,
                reason=f"unreadable_stream: {error} after record {number}; rest of file skipped",
            )
            return
        number += 1
        if pending is not None:
            yield pending
        try:
            pending = _outcome(record, number)
        except Exception as exc:  # a payload FastWARC cannot read: this record only
            pending = WarcOutcome(
                number=number,
                offset=record.stream_pos,
                reason=f"broken_record: {type(exc).__name__}: {exc}",
            )
        if pending._payload is None:  # only records whose payload was read wait for the next
            yield pending
            pending = None
    if pending is not None:
        yield pending
