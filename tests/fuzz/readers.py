"""A seeded fuzzer for the raw readers: odd, damaged and cut inputs, each with its own oracle.

Every case is one raw file built here from Python's documentation topics (real text) in one
category: JSONL with odd records (lone surrogates, 5,000-digit integers, nesting far past the
recursion limit, wrong types, NaN, BOM, CR-only and mixed line endings, trailing NULs in ids...),
JSONL cut or corrupted inside gzip members and zstd frames, Parquet with odd columns, undecodable
strings, corrupted pages and cut footers, and WARC files (written here byte by byte, not with the
reader's library) cut anywhere, corrupted, with a wrong ``Content-Length`` or garbage between
records. Each case is read with :func:`read_raw_shard` and checked three ways:

- ``crash``: reading raised (the shard must always complete);
- ``unflagged``: :func:`~corpuslab.ingest.census.reconcile` against the independent census
  fails, or a file cut away from a member/frame boundary carries no ``truncated_stream`` /
  ``unreadable_stream`` flag;
- ``lost``: a record the generator knows to be intact (valid, and wholly inside what a one-shot
  decompression of the damaged file recovers, or before the damage) is not kept; for undamaged
  files, the kept set and the number quarantined must match the generator's labels exactly.

``python tests/fuzz/readers.py --cases 2500 --seed 0`` runs the long campaign and prints the
figures by category; ``tests/fuzz/test_readers_fuzz.py`` runs a few hundred cases in the suite.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import random
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from corpuslab.ingest.census import count_records, reconcile
from corpuslab.ingest.readers import read_raw_shard

TOPICS = __import__("pydoc_data.topics", fromlist=["topics"]).topics
KEYS = sorted(TOPICS)
KNOWN_REASONS = {
    "invalid_json",
    "not_an_object",
    "invalid_utf8",
    "invalid_unicode",
    "missing_text",
    "empty_text",
    "invalid_id",
    "invalid_url",
    "duplicate_id",
    "record_too_large",
    "invalid_record",
    "truncated_stream",
    "unreadable_stream",
    "unreadable_parquet",
    "empty_file",
    "broken_record",
    "undecodable_payload",
    "no_text_extracted",
}
STREAM_FLAGS = ("truncated_stream", "unreadable_stream", "unreadable_parquet")
OBJ_OPEN = '{"a":'  # one level of object nesting


@dataclass
class Case:
    """One raw file and what the generator knows about it."""

    category: str
    name: str
    data: bytes
    exact_keep: set[str] | None = None  # undamaged: exactly these keys are kept
    exact_quarantined: int | None = None  # ... and this many records quarantined
    must_keep: set[str] = field(default_factory=set)  # damaged: at least these are kept
    must_flag: bool = False  # cut away from a boundary: a stream flag is required
    key: str = "id"  # what identifies a kept document: "id" or "url"


@dataclass
class Outcome:
    category: str
    crash: str | None = None
    unflagged: str | None = None
    lost: str | None = None


def _text(rng: random.Random) -> str:
    topic = TOPICS[rng.choice(KEYS)]
    paras = [p for p in topic.split("\n\n") if p.strip()]
    start = rng.randrange(len(paras))
    return "\n\n".join(paras[start : start + rng.randint(1, 4)])


# --- JSONL -----------------------------------------------------------------------------------


# (label, factory) -> (line bytes, expected: "keep" or "quarantine", id kept or None)
def _valid_record(rng: random.Random, i: int) -> tuple[bytes, str, str | None]:
    doc = {"id": f"doc-{i}", "text": _text(rng), "url": f"pydoc://{i}"}
    extra = rng.choice(
        [
            {},
            {"lang": "en", "score": rng.random()},
            {"score": float("nan")},
            {"score": float("inf"), "tags": ["a", "b"]},
            {"nested": {"a": [1, {"b": None}]}},
        ]
    )
    return json.dumps(doc | extra).encode(), "keep", doc["id"]


def _odd_keep(rng: random.Random, i: int) -> tuple[bytes, str, str | None]:
    """Records that look odd but are fine and must be kept."""
    text = json.dumps(_text(rng))[1:-1]
    kind = rng.randrange(8)
    if kind == 0:  # a surrogate pair escape is one valid code point
        return (
            f'{{"id": "pair-{i}", "text": "{text} \\ud83d\\ude00"}}'.encode(),
            "keep",
            f"pair-{i}",
        )
    if kind == 1:  # NULs in the text and a trailing NUL in the id: distinct from doc-{i}
        return (
            f'{{"id": "nul-{i}\\u0000", "text": "a\\u0000{text}"}}'.encode(),
            "keep",
            f"nul-{i}\x00",
        )
    if kind == 2:  # an integer id
        return f'{{"id": {10**6 + i}, "text": "{text}"}}'.encode(), "keep", str(10**6 + i)
    if kind == 3:  # 4,000 digits: under Python's limit
        return (
            f'{{"id": "big-{i}", "text": "{text}", "n": {"7" * 4000}}}'.encode(),
            "keep",
            f"big-{i}",
        )
    if kind == 4:  # nesting well under the recursion limit
        deep = "[" * 200 + "]" * 200
        return f'{{"id": "deep-{i}", "text": "{text}", "m": {deep}}}'.encode(), "keep", f"deep-{i}"
    if kind == 5:
        return (
            f'{{"id": "nan-{i}", "text": "{text}", "x": NaN, "y": -Infinity}}'.encode(),
            "keep",
            f"nan-{i}",
        )
    if kind == 6:
        return (
            f'{{"id": "null-url-{i}", "text": "{text}", "url": null}}'.encode(),
            "keep",
            f"null-url-{i}",
        )
    return (
        json.dumps(
            {"id": f"uni-{i}", "text": "Ünïcødé ⟨x⟩ " + _text(rng)}, ensure_ascii=False
        ).encode(),
        "keep",
        f"uni-{i}",
    )


def _bad(rng: random.Random, i: int) -> tuple[bytes, str, str | None]:
    """Records that must be quarantined (never crash the shard)."""
    text = json.dumps(_text(rng)[:200])[1:-1]
    options: list[bytes] = [
        f'{{"id": "s-{i}", "text": "bad \\ud800 surrogate {text}"}}'.encode(),
        f'{{"id": "s-{i}\\udfff", "text": "{text}"}}'.encode(),
        f'{{"id": "s-{i}", "text": "{text}", "url": "http://x/\\udc80"}}'.encode(),
        f'{{"id": "s-{i}", "text": "{text}", "meta": {{"k": "\\ud801"}}}}'.encode(),
        f'{{"id": "s-{i}", "text": "{text}", "\\ud802": 1}}'.encode(),
        f'{{"id": "h-{i}", "text": "{text}", "n": {"9" * 5000}}}'.encode(),
        f'{{"id": "d-{i}", "text": "{text}", "m": {"[" * 5000}{"]" * 5000}}}'.encode(),
        f'{{"id": "d-{i}", "text": "{text}", "m": {OBJ_OPEN * 3000}1{"}" * 3000}}}'.encode(),
        b"[" * 100_000,
        f'{{"id": "t-{i}", "text": 5}}'.encode(),
        f'{{"id": "t-{i}", "text": null}}'.encode(),
        f'{{"id": "t-{i}", "text": ["{text}"]}}'.encode(),
        f'{{"id": "t-{i}", "text": {{"a": "{text}"}}}}'.encode(),
        f'{{"id": ["t-{i}"], "text": "{text}"}}'.encode(),
        f'{{"id": true, "text": "{text}"}}'.encode(),
        f'{{"id": 1.5, "text": "{text}"}}'.encode(),
        f'{{"id": "u-{i}", "text": "{text}", "url": 7}}'.encode(),
        f'{{"id": "e-{i}", "text": "   \\n\\t "}}'.encode(),
        b'{"id": "x", "text": "caf\xe9 latin-1"}',
        b'{"id": "x", "text": "raw \x01 control"}',
        b'{"text": ',
        b"{bad json}",
        b"[1, 2, 3]",
        b'"just a string"',
        b"42",
        b"null",
        b"\x00\x00\x00",
        b"\xef\xbb\xbf" + json.dumps({"id": f"bom-{i}", "text": "mid-file BOM"}).encode(),
    ]
    return rng.choice(options), "quarantine", None


_EOLS = [b"\n", b"\r\n", b"\r"]


def _jsonl_body(
    rng: random.Random, n: int, odd: bool
) -> tuple[bytes, list[tuple[int, int, str]], set[str], int]:
    """(bytes, [(start, end, id) of kept records], kept ids, quarantined count)."""
    eol_mode = rng.choice(["lf", "crlf", "cr", "mixed"])
    parts: list[bytes] = []
    spans: list[tuple[int, int, str]] = []
    keep: set[str] = set()
    quarantined = 0
    pos = 0
    if odd and rng.random() < 0.3:
        parts.append(b"\xef\xbb\xbf")
        pos += 3
    used: set[str] = set()
    for i in range(n):
        roll = rng.random() if odd else 0.0
        if roll < 0.55:
            line, label, doc_id = _valid_record(rng, i)
        elif roll < 0.7:
            line, label, doc_id = _odd_keep(rng, i)
        elif roll < 0.75:
            line, label, doc_id = rng.choice([b" ", b"\t", b"  \t "]), "blank", None
        elif roll < 0.8 and used:  # a duplicate id
            dup = rng.choice(sorted(used))
            line, label, doc_id = (
                json.dumps({"id": dup, "text": "again"}).encode(),
                "quarantine",
                None,
            )
        else:
            line, label, doc_id = _bad(rng, i)
            if pos == 0 and line.startswith(b"\xef\xbb\xbf"):  # the file's own BOM: fine
                label, doc_id = "keep", json.loads(line[3:])["id"]
        if label == "keep":
            assert doc_id is not None and doc_id not in used
            used.add(doc_id)
            keep.add(doc_id)
            spans.append((pos, pos + len(line), doc_id))
        elif label == "quarantine":
            quarantined += 1
        eol = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}.get(eol_mode) or rng.choice(_EOLS)
        last = i == n - 1
        if last and rng.random() < 0.3:
            eol = b""  # no newline at the end of the file
        parts.append(line + eol)
        pos += len(line) + len(eol)
    return b"".join(parts), spans, keep, quarantined


def _gzip(data: bytes, pieces: int) -> tuple[bytes, list[int]]:
    """gzip members over ``pieces`` slices of ``data``; member boundaries (compressed)."""
    step = max(1, -(-len(data) // pieces))
    out, bounds = b"", []
    for i in range(0, max(1, len(data)), step):
        out += gzip.compress(data[i : i + step], mtime=0)
        bounds.append(len(out))
    return out, bounds


def _zstd(data: bytes, pieces: int) -> tuple[bytes, list[int]]:
    step = max(1, -(-len(data) // pieces))
    out, bounds = b"", []
    for i in range(0, max(1, len(data)), step):
        out += zstandard.ZstdCompressor(level=3).compress(data[i : i + step])
        bounds.append(len(out))
    return out, bounds


def _salvage(codec: str, data: bytes) -> bytes:
    """What a one-shot decompression recovers from a damaged stream (a third implementation)."""
    out = b""
    rest = data
    while rest:
        if codec == "gzip":
            d = zlib.decompressobj(31)
        else:
            d = zstandard.ZstdDecompressor().decompressobj()
        try:
            out += d.decompress(rest)
        except (zlib.error, zstandard.ZstdError):
            break
        if not d.eof:
            break
        rest = d.unused_data
        if codec == "gzip":
            rest = rest.lstrip(b"\x00")
    return out


def jsonl_odd(rng: random.Random, i: int) -> Case:
    body, _, keep, quarantined = _jsonl_body(rng, rng.randint(1, 30), odd=True)
    codec = rng.choice(["", ".gz", ".zst"])
    data = body
    if codec == ".gz":
        data = _gzip(body, rng.randint(1, 3))[0]
    elif codec == ".zst":
        data = _zstd(body, rng.randint(1, 3))[0]
    return Case("jsonl_odd_records", f"c{i}.jsonl{codec}", data, keep, quarantined)


def jsonl_cut(rng: random.Random, i: int) -> Case:
    body, spans, _, _ = _jsonl_body(rng, rng.randint(2, 40), odd=False)
    codec = rng.choice(["gzip", "zstd"])
    data, bounds = (_gzip if codec == "gzip" else _zstd)(body, rng.randint(1, 4))
    cut = rng.randint(1, len(data) - 1)
    recovered = len(_salvage(codec, data[:cut]))
    must = {doc_id for _, end, doc_id in spans if end <= recovered}
    suffix = ".jsonl.gz" if codec == "gzip" else ".jsonl.zst"
    return Case(
        f"jsonl_cut_{codec}",
        f"c{i}{suffix}",
        data[:cut],
        must_keep=must,
        must_flag=cut not in bounds,
    )


def jsonl_corrupt(rng: random.Random, i: int) -> Case:
    body, spans, _, _ = _jsonl_body(rng, rng.randint(2, 40), odd=False)
    codec = rng.choice(["gzip", "zstd", "plain"])
    if codec == "plain":
        data = bytearray(body)
    else:
        data = bytearray((_gzip if codec == "gzip" else _zstd)(body, rng.randint(1, 3))[0])
    first = len(data)
    for _ in range(rng.randint(1, 6)):
        at = rng.randrange(len(data))
        first = min(first, at)
        data[at] = rng.randrange(256)
    must: set[str] = set()
    if codec == "plain":
        must = {doc_id for _, end, doc_id in spans if end < first}
    suffix = {"gzip": ".jsonl.gz", "zstd": ".jsonl.zst", "plain": ".jsonl"}[codec]
    return Case(f"jsonl_corrupt_{codec}", f"c{i}{suffix}", bytes(data), must_keep=must)


# --- Parquet ---------------------------------------------------------------------------------


def _invalid_utf8_strings(values: list[bytes | None]) -> pa.Array:
    """A string array holding bytes that are not UTF-8, as a foreign writer may produce."""
    binary = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(binary), binary.buffers(), binary.null_count)


def _parquet_table(rng: random.Random) -> tuple[pa.Table, set[str], int]:
    n = rng.randint(1, 40)
    ids = [f"p-{j}" for j in range(n)]
    texts: list[str | None] = [_text(rng) for _ in range(n)]
    keep = set(ids)
    bad = 0
    for j in range(n):
        if rng.random() < 0.15:
            texts[j] = rng.choice([None, "", "  \n "])
            keep.discard(ids[j])
            bad += 1
    cols: dict[str, pa.Array] = {"id": pa.array(ids), "text": pa.array(texts, pa.string())}
    variant = rng.randrange(7)
    if variant == 0:
        cols["score"] = pa.array([rng.choice([0.5, float("nan"), float("inf"), None]) for _ in ids])
    elif variant == 1:
        cols["when"] = pa.array([1_700_000_000_000_000 + j for j in range(n)], pa.timestamp("us"))
        cols["raw"] = pa.array([bytes([j % 256, 0xFF]) for j in range(n)], pa.binary())
    elif variant == 2:
        cols["nested"] = pa.array([{"a": j, "b": [str(j)]} for j in range(n)])
    elif variant == 3:  # text that is not UTF-8 in some rows
        raw = [t.encode() if t is not None else None for t in texts]
        for j in range(n):
            if rng.random() < 0.2 and ids[j] in keep:
                raw[j] = b"caf\xe9 \xff"
                keep.discard(ids[j])
                bad += 1
        cols["text"] = _invalid_utf8_strings(raw)
    elif variant == 4:  # an integer text column: nothing is a document
        cols["text"] = pa.array(list(range(n)), pa.int64())
        bad, keep = n, set()
    elif variant == 5:  # integer ids
        cols["id"] = pa.array(list(range(n)), pa.int64())
        keep = {str(j) for j, t in enumerate(texts) if t and t.strip()}
    else:
        cols["url"] = pa.array([f"https://x/{j}" for j in range(n)])
    return pa.table(cols), keep, bad


def _parquet_bytes(table: pa.Table, rng: random.Random) -> bytes:
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        row_group_size=rng.randint(1, 10),
        compression=rng.choice(["zstd", "snappy", "none"]),
    )
    return sink.getvalue()


def parquet_odd(rng: random.Random, i: int) -> Case:
    table, keep, bad = _parquet_table(rng)
    return Case("parquet_odd", f"c{i}.parquet", _parquet_bytes(table, rng), keep, bad)


def parquet_damaged(rng: random.Random, i: int) -> Case:
    table, _, _ = _parquet_table(rng)
    data = bytearray(_parquet_bytes(table, rng))
    if rng.random() < 0.5:
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(4, max(5, len(data) - 8))
            data[at] = rng.randrange(256)
        return Case("parquet_corrupt", f"c{i}.parquet", bytes(data))
    cut = rng.randint(1, len(data) - 1)
    return Case("parquet_cut", f"c{i}.parquet", bytes(data[:cut]))


# --- WARC ------------------------------------------------------------------------------------


def _warc_record(
    rng: random.Random, rtype: str, url: str, payload: bytes, digest: bytes | None = None
) -> bytes:
    rid = f"urn:uuid:{rng.getrandbits(128):032x}"
    head = (
        f"WARC/1.0\r\nWARC-Type: {rtype}\r\nWARC-Target-URI: {url}\r\n"
        f"WARC-Date: 2024-05-01T12:00:00Z\r\nWARC-Record-ID: <{rid}>\r\n"
        f"Content-Type: application/http; msgtype={rtype}\r\n"
    ).encode()
    if digest is not None:  # as crawlers write it: sha1 of the HTTP body, base32
        head += b"WARC-Payload-Digest: sha1:" + base64.b32encode(hashlib.sha1(digest).digest())
        head += b"\r\n"
    return head + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload + b"\r\n\r\n"


def _page(rng: random.Random) -> tuple[bytes, bytes]:
    """(HTTP response, its body)."""
    paras = "".join(f"<p>{p}</p>" for p in _text(rng).split("\n\n"))
    html = (
        "<html><head><title>t</title></head>"
        f"<body><main><article>{paras}</article></main></body></html>"
    )
    body = html.encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
    return head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body, body


def _warc(rng: random.Random) -> tuple[list[bytes], list[tuple[int, int, str, bool]]]:
    """Records (bytes) and the responses' (start, content end, url, has a digest), uncompressed."""
    records = [_warc_record(rng, "warcinfo", "", b"software: corpuslab-fuzz\r\n")]
    spans = []
    pos = len(records[0])
    for j in range(rng.randint(1, 8)):
        url = f"https://docs.example.org/{j}"
        request = _warc_record(rng, "request", url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        records.append(request)
        pos += len(request)
        page, body = _page(rng)
        digest = body if rng.random() < 0.8 else None
        response = _warc_record(rng, "response", url, page, digest)
        records.append(response)
        spans.append((pos, pos + len(response) - 4, url, digest is not None))
        pos += len(response)
    return records, spans


def warc_damaged(rng: random.Random, i: int) -> Case:
    records, spans = _warc(rng)
    plain = b"".join(records)
    gz = rng.random() < 0.5
    mode = rng.choice(["cut", "cut", "corrupt", "length", "garbage"])
    suffix = ".warc.gz" if gz else ".warc"
    if mode in ("length", "garbage"):
        k = rng.randrange(1, len(records))
        start = sum(len(r) for r in records[:k])
        rec = records[k]
        if mode == "length":
            head, sep, rest = rec.partition(b"Content-Length: ")
            number, _, tail = rest.partition(b"\r\n")
            new = rng.choice(
                [
                    b"5",
                    b"x7",
                    str(int(number) + rng.randint(1, 500)).encode(),
                    str(max(0, int(number) - rng.randint(1, 50))).encode(),
                    b"",
                ]
            )
            records[k] = head + sep + new + b"\r\n" + tail
        else:
            records[k] = rng.choice([b"stray bytes\r\n", b"\x00\xff garbage", b"HTTP/1.1"]) + rec
        # a record followed by no WARC header is kept only if its payload digest verifies
        must = {url for _, e, url, signed in spans if e + 4 < start or (e + 4 == start and signed)}
        data = b"".join(gzip.compress(r, mtime=0) for r in records) if gz else b"".join(records)
        return Case(f"warc_{mode}", f"c{i}{suffix}", data, must_keep=must, key="url")
    if gz:
        members = [gzip.compress(r, mtime=0) for r in records]
        if rng.random() < 0.3:  # one member for the whole file
            members = [gzip.compress(plain, mtime=0)]
        data = b"".join(members)
        bounds = [sum(len(m) for m in members[: j + 1]) for j in range(len(members))]
    else:
        data = plain
        bounds = [sum(len(r) for r in records[: j + 1]) for j in range(len(records))]
    if mode == "corrupt":
        buf = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        return Case("warc_corrupt", f"c{i}{suffix}", bytes(buf), key="url")
    cut = rng.randint(1, len(data) - 1)
    recovered = len(_salvage("gzip", data[:cut])) if gz else cut
    must = {url for _, end, url, _ in spans if end <= recovered}
    # a plain WARC cut at a record boundary (or inside the trailing CRLFs) is indistinguishable
    # from a complete file
    boundary = cut in bounds or (not gz and any(b - 4 <= cut <= b for b in bounds))
    return Case(
        f"warc_cut_{'gz' if gz else 'plain'}",
        f"c{i}{suffix}",
        data[:cut],
        must_keep=must,
        must_flag=not boundary,
        key="url",
    )


GENERATORS: dict[str, tuple[float, Callable[[random.Random, int], Case]]] = {
    "jsonl_odd": (0.25, jsonl_odd),
    "jsonl_cut": (0.15, jsonl_cut),
    "jsonl_corrupt": (0.1, jsonl_corrupt),
    "parquet_odd": (0.1, parquet_odd),
    "parquet_damaged": (0.1, parquet_damaged),
    "warc": (0.3, warc_damaged),
}


def make_case(seed: int, i: int) -> Case:
    rng = random.Random(f"{seed}:{i}")
    names = list(GENERATORS)
    pick = rng.choices(names, weights=[GENERATORS[n][0] for n in names])[0]
    return GENERATORS[pick][1](rng, i)


def check(case: Case, folder: Path) -> Outcome:
    """Read one case and judge it (see the module docstring)."""
    out = Outcome(case.category)
    path = folder / case.name
    path.write_bytes(case.data)
    try:
        res = read_raw_shard(path, "fuzz")
        census = count_records(path)
    except Exception:  # the one thing that must never happen
        out.crash = traceback.format_exc(limit=3).strip().splitlines()[-1]
        return out
    finally:
        path.unlink(missing_ok=True)
    kept = set(res.table.column(case.key).to_pylist())
    check = reconcile(census, res.table.num_rows, res.quarantined, sum(res.skipped.values()))
    flags = [q["reason"] for q in res.quarantined if q["reason"].split(":")[0] in STREAM_FLAGS]
    unknown = {q["reason"].split(":")[0] for q in res.quarantined} - KNOWN_REASONS
    if not check.conserved:
        out.unflagged = check.explanation
    elif case.must_flag and not flags:
        out.unflagged = "a cut stream carries no truncated_stream/unreadable_stream flag"
    elif unknown:
        out.unflagged = f"undocumented reasons {sorted(unknown)}"
    if case.exact_keep is not None:
        n_q = sum(1 for q in res.quarantined if q.get("scope", "record") == "record")
        if kept != case.exact_keep or n_q != case.exact_quarantined:
            missing = sorted(case.exact_keep - kept)[:3]
            extra = sorted(kept - case.exact_keep)[:3]
            out.lost = (
                f"kept {len(kept)} (missing {missing!r}, extra {extra!r}), quarantined {n_q}; "
                f"expected {len(case.exact_keep)} and {case.exact_quarantined}"
            )
    elif not case.must_keep <= kept:
        out.lost = f"intact records not kept: {sorted(case.must_keep - kept)[:3]!r}"
    return out


def campaign(cases: int, seed: int) -> list[tuple[Case, Outcome]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="corpuslab-fuzz-") as tmp:
        for i in range(cases):
            case = make_case(seed, i)
            results.append((case, check(case, Path(tmp))))
    return results


def summarize(results: list[tuple[Case, Outcome]]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for case, outcome in results:
        row = table[case.category]
        row["cases"] += 1
        row["crashes"] += outcome.crash is not None
        row["unflagged"] += outcome.unflagged is not None
        row["lost"] += outcome.lost is not None
    return {k: dict(v) for k, v in sorted(table.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fuzz the raw readers (see module docstring).")
    parser.add_argument("--cases", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures and failures as JSON")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    results = campaign(args.cases, args.seed)
    wall = time.perf_counter() - t0
    summary = summarize(results)
    print("| category | cases | crashes | unflagged losses | intact records lost |")
    print("|---|---:|---:|---:|---:|")
    totals: Counter[str] = Counter()
    for cat, row in summary.items():
        totals.update(row)
        print(
            f"| {cat} | {row['cases']} | {row.get('crashes', 0)} | {row.get('unflagged', 0)} "
            f"| {row.get('lost', 0)} |"
        )
    print(
        f"| **all** | {totals['cases']} | {totals['crashes']} | {totals['unflagged']} "
        f"| {totals['lost']} |"
    )
    print(f"\nseed {args.seed}, {args.cases} cases in {wall:.1f}s")
    failures = [
        {
            "case": c.name,
            "category": c.category,
            "crash": o.crash,
            "unflagged": o.unflagged,
            "lost": o.lost,
        }
        for c, o in results
        if o.crash or o.unflagged or o.lost
    ]
    for f in failures[:20]:
        print(f)
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "seed": args.seed,
                    "cases": args.cases,
                    "wall_s": wall,
                    "summary": summary,
                    "failures": failures,
                },
                indent=2,
            )
        )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
