"""WARC input: HTML responses become main text with URL/date/id kept; damage is set aside, counted.

The WARC files are written here with warcio (a different implementation from the FastWARC
reader) from pages rendered out of Python's own documentation topics, each wrapped in the
navigation, sidebar, cookie banner and footer that main-text extraction has to remove.
"""

from __future__ import annotations

import gzip
import html
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from corpuslab.ingest.readers import ReadResult, list_shards, read_raw_shard
from corpuslab.ingest.warc import extract_main_text

TOPICS = __import__("pydoc_data.topics", fromlist=["topics"]).topics
KEYS = ["assert", "assignment", "async", "atom-identifiers", "atom-literals", "attribute-access"]
BOILERPLATE = [
    "We use cookies to improve your experience",
    "About this site",
    "Related pages",
    "Copyright 2024 Example Docs Foundation",
    "Privacy policy",
]


def prose(key: str) -> list[str]:
    """The topic's prose paragraphs (not its title, underline or indented code), one line each."""
    paras = [p for p in TOPICS[key].split("\n\n")[1:] if p.strip() and not p.startswith(" ")]
    return [" ".join(p.split()) for p in paras]


def topic_page(key: str, charset: str = "utf-8") -> bytes:
    """A documentation page: the topic as the article, site boilerplate around it."""
    title, _, body = TOPICS[key].partition("\n")
    blocks = []
    for para in body.split("\n\n"):
        if not para.strip() or set(para.strip()) <= set("*=-"):
            continue
        if para.startswith(" "):
            blocks.append(f"<pre>{html.escape(para)}</pre>")
        else:
            blocks.append(f"<p>{html.escape(para)}</p>")
    links = "".join(f'<li><a href="/{k}.html">{k}</a></li>' for k in KEYS)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="{charset}"><title>{html.escape(title)}</title>
<script>window.analytics = {{track: function() {{}}}};</script>
<style>body {{ font-family: sans-serif; }}</style></head>
<body>
<div class="cookie-banner">{BOILERPLATE[0]}. Accept all cookies.</div>
<nav><ul><li><a href="/">Home</a></li>
<li><a href="/about">{BOILERPLATE[1]}</a></li>{links}</ul></nav>
<aside class="sidebar"><h3>{BOILERPLATE[2]}</h3><ul>{links}</ul></aside>
<main><article><h1>{html.escape(title)}</h1>
{"".join(blocks)}
</article></main>
<footer><p>{BOILERPLATE[3]}. All rights reserved.</p>
<a href="/privacy">{BOILERPLATE[4]}</a></footer>
</body></html>"""
    return page.encode(charset, "xmlcharrefreplace")


@dataclass
class Response:
    """One HTTP response to archive."""

    url: str
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    status: str = "200 OK"
    date: str = "2024-05-01T12:00:00Z"
    extra_headers: tuple[tuple[str, str], ...] = ()
    record_id: str | None = None


def topic_responses(keys: list[str] = KEYS) -> list[Response]:
    return [
        Response(
            url=f"https://docs.example.org/reference/{key}.html",
            body=topic_page(key),
            date=f"2024-05-{i + 1:02d}T08:30:00Z",
        )
        for i, key in enumerate(keys)
    ]


def write_warc(path: Path, responses: list[Response], gzip_records: bool | None = None) -> Path:
    """A crawl as a crawler writes it: warcinfo, then a request and a response per URL."""
    compress = path.name.endswith(".gz") if gzip_records is None else gzip_records
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=compress)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "corpuslab"}))
        for r in responses:
            request = StatusAndHeaders(
                "GET / HTTP/1.1", [("Host", "docs.example.org")], is_http_request=True
            )
            writer.write_record(writer.create_warc_record(r.url, "request", http_headers=request))
            headers = StatusAndHeaders(
                r.status,
                [("Content-Type", r.content_type), *r.extra_headers],
                protocol="HTTP/1.1",
            )
            warc_headers = {"WARC-Date": r.date}
            if r.record_id:
                warc_headers["WARC-Record-ID"] = f"<{r.record_id}>"
            writer.write_record(
                writer.create_warc_record(
                    r.url,
                    "response",
                    payload=io.BytesIO(r.body),
                    http_headers=headers,
                    warc_headers_dict=warc_headers,
                )
            )
    return path


def _reasons(result: ReadResult) -> list[str]:
    return [q["reason"].split(":")[0] for q in result.quarantined]


def test_extraction_keeps_the_article_and_drops_the_boilerplate() -> None:
    text = extract_main_text(topic_page("assert").decode())
    flat = " ".join(text.split())
    assert all(p in flat for p in prose("assert"))
    assert 'assert_stmt ::= "assert" expression' in text  # the code block survives too
    assert not [b for b in BOILERPLATE if b in text]
    assert "window.analytics" not in text


@pytest.mark.parametrize("name", ["crawl.warc", "crawl.warc.gz"])
def test_html_responses_become_documents_with_url_date_and_id(tmp_path: Path, name: str) -> None:
    pages = topic_responses()
    others = [
        Response("https://docs.example.org/api.json", b'{"a": 1}', "application/json"),
        Response("https://docs.example.org/gone.html", topic_page("await"), status="404 Not Found"),
    ]
    path = write_warc(tmp_path / name, pages + others)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"WA")
    res = read_raw_shard(path, "web")
    assert res.quarantined == []
    assert res.skipped == {"warcinfo": 1, "request": 8, "non_html": 1, "http_status_404": 1}
    rows = res.table.to_pylist()
    assert [r["url"] for r in rows] == [p.url for p in pages]
    for key, page, row in zip(KEYS, pages, rows, strict=True):
        flat = " ".join(row["text"].split())
        assert all(p in flat for p in prose(key)), key
        assert not [b for b in BOILERPLATE if b in row["text"]]
        meta = json.loads(row["metadata"])
        assert meta["warc_date"] == page.date
        assert meta["content_type"] == "text/html" and meta["http_status"] == 200
        assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", row["id"])
        assert meta["warc_record_id"] == row["id"]
        assert row["source"] == "web"
    assert list(list_shards(tmp_path)) == ["crawl"]  # auto picks WARC files up
    assert list(list_shards(tmp_path, "warc")) == ["crawl"]


def test_encodings_and_charsets_are_undone(tmp_path: Path) -> None:
    page = topic_page("assert")
    chunks = [page[:700], page[700:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    latin = topic_page("atom-literals", charset="iso-8859-1").replace(
        b"Literals", "Littéraux".encode("latin-1")
    )
    responses = [
        Response(
            "https://a.example/gz",
            gzip.compress(page),
            extra_headers=(("Content-Encoding", "gzip"),),
        ),
        Response(
            "https://a.example/chunked", chunked, extra_headers=(("Transfer-Encoding", "chunked"),)
        ),
        Response("https://a.example/latin", latin, content_type="text/html"),
        Response("https://a.example/xhtml", page, content_type="application/xhtml+xml"),
    ]
    res = read_raw_shard(write_warc(tmp_path / "enc.warc.gz", responses), "web")
    assert res.quarantined == []
    texts = res.table.column("text").to_pylist()
    assert len(texts) == 4
    for text in [texts[0], texts[1], texts[3]]:
        assert prose("assert")[0] in " ".join(text.split())
    assert "Littéraux" in texts[2]


def test_pages_without_text_and_undecodable_payloads_are_quarantined(tmp_path: Path) -> None:
    empty = (
        b"<html><head><script>track()</script></head>"
        b"<body><nav><a href='/'>Home</a></nav></body></html>"
    )
    responses = [
        *topic_responses(KEYS[:1]),
        Response("https://a.example/empty", empty),
        Response(
            "https://a.example/bad-gzip",
            b"not gzip at all",
            extra_headers=(("Content-Encoding", "gzip"),),
        ),
        Response("https://a.example/dup", topic_page("async"), record_id="urn:uuid:dup"),
        Response("https://a.example/dup2", topic_page("await"), record_id="urn:uuid:dup"),
    ]
    res = read_raw_shard(write_warc(tmp_path / "mixed.warc", responses), "web")
    assert _reasons(res) == ["no_text_extracted", "undecodable_payload", "duplicate_id"]
    assert [q["line"] for q in res.quarantined] == [5, 7, 11]  # record numbers in the file
    assert all(
        q["offset"] > 0 and q["file"] == str(tmp_path / "mixed.warc") for q in res.quarantined
    )
    assert "<nav>" in res.quarantined[0]["raw"]
    assert res.table.column("id").to_pylist()[1] == "urn:uuid:dup"
    assert res.n_read == 5


def _content_lengths(data: bytes) -> list[re.Match[bytes]]:
    return list(re.finditer(rb"Content-Length: (\d+)", data))


def _gzip_members(data: bytes) -> list[int]:
    return [m.start() for m in re.finditer(rb"\x1f\x8b\x08", data)]


@pytest.mark.parametrize(
    ("name", "where", "reason"),
    [
        ("cut.warc", "payload", "truncated_stream"),
        ("cut.warc", "header", "truncated_stream"),
        ("cut.warc.gz", "payload", "truncated_stream"),
    ],
)
def test_truncated_file_keeps_the_records_before_the_cut(
    tmp_path: Path, name: str, where: str, reason: str
) -> None:
    path = write_warc(tmp_path / name, topic_responses())
    data = path.read_bytes()
    if name.endswith(".gz"):  # members: warcinfo, then a request and a response per page
        start, end = _gzip_members(data)[8:10]
        cut = (start + end) // 2
    else:
        fourth = [m.start() for m in re.finditer(rb"WARC-Type: response", data)][3]
        cut = fourth + 40 if where == "header" else data.index(b"<main>", fourth) + 200
    path.write_bytes(data[:cut])
    res = read_raw_shard(path, "web")
    assert res.table.column("url").to_pylist() == [p.url for p in topic_responses()[:3]]
    assert _reasons(res) == [reason]
    assert res.quarantined[0]["line"] == 9  # warcinfo + 3 pairs + the 4th request


@pytest.mark.parametrize(
    ("new_length", "expected"),
    [
        (100, ["broken_record", "unreadable_stream"]),  # ends inside the page: next header bad
        (10**6, ["truncated_stream"]),  # runs past the end of the file
        (None, ["broken_record", "unreadable_stream"]),  # not a number
    ],
)
def test_bad_content_length_in_the_middle(
    tmp_path: Path, new_length: int | None, expected: list[str]
) -> None:
    path = write_warc(tmp_path / "bad.warc", topic_responses())
    data = path.read_bytes()
    third_response = _content_lengths(data)[6]  # warcinfo, then request/response pairs
    replacement = b"Content-Length: " + (b"x7" if new_length is None else str(new_length).encode())
    path.write_bytes(data[: third_response.start()] + replacement + data[third_response.end() :])
    res = read_raw_shard(path, "web")
    assert res.table.column("url").to_pylist() == [p.url for p in topic_responses()[:2]]
    assert _reasons(res) == expected
    assert res.quarantined[0]["line"] == 7  # the record with the bad length


def test_garbage_between_records_keeps_a_record_whose_digest_verifies(tmp_path: Path) -> None:
    path = write_warc(tmp_path / "junk.warc", topic_responses())
    data = path.read_bytes()
    fourth_request = [m.start() for m in re.finditer(rb"WARC/1\.\d\r\n", data)][7]
    path.write_bytes(data[:fourth_request] + b"stray bytes\r\n" + data[fourth_request:])
    res = read_raw_shard(path, "web")
    assert res.table.column("url").to_pylist() == [p.url for p in topic_responses()[:3]]
    assert _reasons(res) == ["unreadable_stream"]


def test_corrupt_gzip_member_keeps_the_members_before_it(tmp_path: Path) -> None:
    path = write_warc(tmp_path / "flip.warc.gz", topic_responses())
    data = bytearray(path.read_bytes())
    middle = (
        _gzip_members(bytes(data))[8] + 40
    )  # inside the deflate data of the 4th response's member
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))
    res = read_raw_shard(path, "web")
    assert res.table.column("url").to_pylist() == [p.url for p in topic_responses()[:3]]
    assert _reasons(res)[-1] == "unreadable_stream" and len(res.quarantined) <= 2


def test_empty_and_foreign_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.warc.gz"
    empty.write_bytes(b"")
    res = read_raw_shard(empty, "web")
    assert res.table.num_rows == 0 and _reasons(res) == ["empty_file"]
    foreign = tmp_path / "page.warc"
    foreign.write_bytes(topic_page("assert"))
    res = read_raw_shard(foreign, "web")
    assert res.table.num_rows == 0 and _reasons(res) == ["unreadable_stream"]
    only_requests = write_warc(tmp_path / "requests.warc", [])
    res = read_raw_shard(only_requests, "web")
    assert res.quarantined == [] and res.skipped == {"warcinfo": 1}
