"""The default demo corpus: real text found on every machine with Python, no download needed.

Four sources, each a folder of JSONL shards in a different format so every reader path runs:

- ``reference`` (``.jsonl.gz``): the language reference topics of ``pydoc_data.topics``, the
  quality classifier's positive examples;
- ``docstrings`` (``.jsonl.gz``): the docstrings of each standard-library module, read with
  :mod:`ast` (nothing is imported);
- ``code`` (``.jsonl.zst``): standard-library source files;
- ``packages`` (``.jsonl``): long descriptions of the distributions installed in the running
  environment, which hold real near-duplicates (license texts, boilerplate READMEs).

Inputs are sorted and capped samples are chosen by a hash of each document's id, so the same
machine always yields byte-identical shards (gzip with mtime 0 and no file name; zstd has no
timestamps).

The builder never writes into a folder it did not create nor deletes what it did not write:
each source folder it builds holds a manifest (:data:`MANIFEST`) naming every file it wrote
with its digest, and a rebuild replaces a folder only when it holds exactly those files,
unchanged. A ``CORPUSLAB_HOME`` whose ``raw/code`` is the user's own data therefore stops the
build with a :class:`DemoCorpusError` naming the folder, before anything is written.
"""

from __future__ import annotations

import argparse
import ast
import email.message
import gzip
import hashlib
import importlib.metadata
import json
import logging
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import zstandard

from corpuslab.fileio import atomic_dir, atomic_path, digest

log = logging.getLogger(__name__)

SOURCES = ("reference", "docstrings", "code", "packages")
MANIFEST = ".corpuslab-demo.json"  # in each source folder: the files the builder wrote there
MANIFEST_WRITER = "corpuslab.ingest.democorpus"
SHARD_SUFFIX = {
    "reference": ".jsonl.gz",
    "docstrings": ".jsonl.gz",
    "code": ".jsonl.zst",
    "packages": ".jsonl",
}
# Default documents per source: about 10 MB of text in all (code dominates).
DEFAULT_MAX_DOCS: dict[str, int | None] = {
    "reference": None,
    "docstrings": None,
    "code": 400,
    "packages": None,
}
DEFAULT_SHARDS = 3  # shards per source when docs_per_shard is not given
MAX_CODE_BYTES = 200_000  # larger files are generated tables (pydoc topics, _pydecimal)
MIN_DOCSTRING_CHARS = 500  # a module whose docstrings are shorter is too thin to be prose
MIN_PACKAGE_CHARS = 200  # a description shorter than this is a one-liner, not a document
# Top-level stdlib names left out: GUI and demo code, the test suite, the dead 2to3 grammar.
SKIP_TOP = frozenset({"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "__phello__"})

Record = dict[str, Any]


def stdlib_dir() -> Path:
    """The folder holding the pure-Python standard library of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Sorted ``.py`` files of the standard library, without tests and the skipped packages."""
    root = root or stdlib_dir()
    files = []
    for entry in sorted(root.iterdir()):
        top = entry.name.removesuffix(".py")
        if top not in sys.stdlib_module_names or top in SKIP_TOP:
            continue  # also skips site-packages, which is not a module name
        candidates = sorted(entry.rglob("*.py")) if entry.is_dir() else [entry]
        for path in candidates:
            rel = path.relative_to(root)
            if path.suffix != ".py" or any(p in ("test", "tests") for p in rel.parts[:-1]):
                continue
            if rel.name.startswith("test_") or rel.name == "__main__.py":
                continue
            files.append(path)
    return files


def module_name(rel: Path) -> str:
    """Dotted module name of a file path relative to the stdlib folder."""
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sample_key(doc_id: str) -> bytes:
    return hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()


def take(records: Iterable[Record], n: int | None) -> list[Record]:
    """The first ``n`` records (all when ``n`` is None), returned sorted by id.

    Producers yield in an order fixed by a hash of the id (:func:`_hash_ordered`), so the first
    ``n`` are a deterministic spread over the stdlib, and only those are ever built.
    """
    kept: list[Record] = []
    for record in records:
        if n is not None and len(kept) >= n:
            break
        kept.append(record)
    return sorted(kept, key=lambda r: r["id"])


def _hash_ordered(items: Iterable[Any], key: Callable[[Any], str]) -> list[Any]:
    return sorted(items, key=lambda item: (_sample_key(key(item)), key(item)))


REFERENCE_CHUNK_WORDS = 200


def _chunks(text: str, min_words: int) -> list[str]:
    """Consecutive paragraphs grouped until each chunk has at least ``min_words`` words."""
    chunks: list[str] = []
    current: list[str] = []
    n = 0
    for para in (p.strip() for p in text.split("\n\n")):
        if not para:
            continue
        current.append(para)
        n += len(para.split())
        if n >= min_words:
            chunks.append("\n\n".join(current))
            current, n = [], 0
    if current:
        if chunks and n < min_words // 2:
            chunks[-1] += "\n\n" + "\n\n".join(current)
        else:
            chunks.append("\n\n".join(current))
    return chunks


def reference_records() -> Iterator[Record]:
    """Sections of the language-reference topics shipped in ``pydoc_data``.

    A topic is split at paragraph boundaries into chunks of about 200 words, so the quality
    classifier gets hundreds of positive examples from Python's ~80 topics rather than 80.
    """
    from pydoc_data.topics import topics

    for key in _hash_ordered(topics, key=lambda k: f"reference/{k}"):
        for i, chunk in enumerate(_chunks(topics[key].strip(), REFERENCE_CHUNK_WORDS)):
            yield {
                "id": f"reference/{key}/{i}",
                "text": chunk,
                "url": f"pydoc://topics/{key}#{i}",
                "topic": key,
                "kind": "reference_topic",
            }


def _docstrings_of(tree: ast.Module) -> list[tuple[str, str]]:
    """(qualified name, docstring) of the module, its classes and functions, in source order."""
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    found.append((name, doc))
                visit(child, f"{name}.")

    module_doc = ast.get_docstring(tree)
    if module_doc:
        found.append(("", module_doc))
    visit(tree, "")
    return found


def docstring_records(root: Path | None = None) -> Iterator[Record]:
    """One document per stdlib module: its docstrings, each under the name it documents."""
    root = root or stdlib_dir()
    for path in _hash_ordered(stdlib_files(root), key=lambda p: str(p.relative_to(root))):
        rel = path.relative_to(root)
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):
            continue
        name = module_name(rel)
        parts = [
            doc if not qual else f"{name}.{qual}\n\n{doc}" for qual, doc in _docstrings_of(tree)
        ]
        text = "\n\n".join(parts).strip()
        if len(text) < MIN_DOCSTRING_CHARS:
            continue
        yield {
            "id": f"docstrings/{name}",
            "text": text,
            "url": f"{path.as_uri()}#docstrings",
            "module": name,
            "package": name.split(".")[0],
            "kind": "docstrings",
            "n_docstrings": len(parts),
        }


def code_records(root: Path | None = None) -> Iterator[Record]:
    """One document per stdlib source file up to :data:`MAX_CODE_BYTES`."""
    root = root or stdlib_dir()
    for path in _hash_ordered(stdlib_files(root), key=lambda p: str(p.relative_to(root))):
        if path.stat().st_size > MAX_CODE_BYTES:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if not text.strip():
            continue
        rel = path.relative_to(root)
        name = module_name(rel)
        yield {
            "id": f"code/{rel.as_posix()}",
            "text": text,
            "url": path.as_uri(),
            "module": name,
            "package": name.split(".")[0],
            "kind": "python_source",
        }


def _description(meta: Any) -> str:
    payload = meta.get_payload()
    text = payload if isinstance(payload, str) and payload.strip() else meta.get("Description")
    return (text or "").strip()


# corpuslab's own description is its README: edited with every docs change, it would change the
# demo corpus (and every result downstream) without any change to code or declarations
OWN_DISTRIBUTION = "corpuslab"


def package_records() -> Iterator[Record]:
    """One document per installed distribution (but corpuslab itself): its long description."""
    by_name: dict[str, Record] = {}
    dists = sorted(
        importlib.metadata.distributions(),
        key=lambda d: (str(d.metadata["Name"] or "").lower(), str(d.version or "")),
    )
    for dist in dists:
        # an email Message at run time; typeshed's PackageMetadata has its .get from 3.12 on
        meta = cast(email.message.Message, dist.metadata)
        name = re.sub(r"[-_.]+", "-", str(meta["Name"] or "")).lower()
        text = _description(meta)
        if not name or name == OWN_DISTRIBUTION or name in by_name or len(text) < MIN_PACKAGE_CHARS:
            continue
        by_name[name] = {
            "id": f"packages/{name}",
            "text": text,
            "url": f"https://pypi.org/project/{name}/{dist.version}/",
            "package": name,
            "version": dist.version,
            "kind": "package_description",
            "content_type": meta.get("Description-Content-Type") or "text/plain",
        }
    yield from _hash_ordered(by_name.values(), key=lambda r: r["id"])


def _encode(records: list[Record]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def write_shard(records: list[Record], path: Path) -> None:
    """Write JSONL compressed by the suffix of ``path`` (byte-identical for the same records)."""
    data = _encode(records)
    with atomic_path(path) as tmp:
        if path.name.endswith(".gz"):
            with (
                open(tmp, "wb") as raw,
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh,
            ):
                fh.write(data)
        elif path.name.endswith(".zst"):
            tmp.write_bytes(zstandard.ZstdCompressor(level=6).compress(data))
        else:
            tmp.write_bytes(data)


def _split(records: list[Record], docs_per_shard: int | None) -> list[list[Record]]:
    if not records:
        return []
    if docs_per_shard is None:
        n_shards = min(DEFAULT_SHARDS, len(records))
        size = -(-len(records) // n_shards)
    else:
        size = docs_per_shard
    return [records[i : i + size] for i in range(0, len(records), size)]


_PRODUCERS: dict[str, Callable[[], Iterator[Record]]] = {
    "reference": reference_records,
    "docstrings": docstring_records,
    "code": code_records,
    "packages": package_records,
}


class DemoCorpusError(RuntimeError):
    """A folder the demo corpus builder would write into holds something it did not write."""


def _foreign(folder: Path) -> list[str]:
    """What in ``folder`` the builder did not write (empty: a folder it may replace).

    Its manifest must name exactly the files present, each with the digest it was written with.
    """
    manifest = folder / MANIFEST
    present = sorted(p.name for p in folder.iterdir())
    try:
        written = json.loads(manifest.read_text(encoding="utf-8"))
        files = dict(written["files"]) if written.get("writer") == MANIFEST_WRITER else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        files = None
    if files is None:
        return present or ["(an empty folder it did not create)"]
    foreign = [name for name in present if name != MANIFEST and name not in files]
    for name, expected in sorted(files.items()):
        path = folder / name
        if name in present and (not path.is_file() or digest(path) != expected):
            foreign.append(f"{name} (changed since the demo wrote it)")
    return foreign


def check_demo_folders(out_dir: Path, sources: Iterable[str] = SOURCES) -> None:
    """Raise :class:`DemoCorpusError` if any source folder holds what the builder did not write."""
    for source in sources:
        folder = Path(out_dir) / source
        if not folder.exists():
            continue
        if not folder.is_dir():
            raise DemoCorpusError(
                f"{folder} is a file the demo corpus builder did not write; it will not touch "
                "it. Set CORPUSLAB_HOME to another folder, or move it away."
            )
        foreign = _foreign(folder)
        if foreign:
            shown = ", ".join(foreign[:5]) + (
                f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            )
            raise DemoCorpusError(
                f"{folder} holds files the demo corpus builder did not write ({shown}); it "
                "will neither write into it nor delete them. Set CORPUSLAB_HOME to another "
                "folder, or move the folder away."
            )


def build_demo_corpus(
    out_dir: Path,
    *,
    max_docs_per_source: int | None = None,
    docs_per_shard: int | None = None,
    sources: Iterable[str] = SOURCES,
) -> dict[str, list[Path]]:
    """Write every source as ``out_dir/<source>/part-NNNNN<suffix>``; return the shard paths.

    ``max_docs_per_source`` caps each source (default: :data:`DEFAULT_MAX_DOCS`);
    ``docs_per_shard`` defaults to splitting each source into :data:`DEFAULT_SHARDS` shards.
    Each source folder is swapped in whole with its manifest, so a rebuild leaves no stale
    shards behind; every folder is checked first (:func:`check_demo_folders`), so a foreign
    one stops the build before anything is written. Files beside the source folders are
    never touched.
    """
    if docs_per_shard is not None and docs_per_shard < 1:
        raise ValueError("docs_per_shard must be >= 1")
    sources = list(sources)
    for source in sources:
        if source not in _PRODUCERS:
            raise ValueError(f"unknown demo source {source!r}; choose from {SOURCES}")
    out_dir = Path(out_dir)
    check_demo_folders(out_dir, sources)
    written: dict[str, list[Path]] = {}
    for source in sources:
        cap = max_docs_per_source if max_docs_per_source is not None else DEFAULT_MAX_DOCS[source]
        records = take(_PRODUCERS[source](), cap)
        final = out_dir / source
        names = []
        with atomic_dir(final) as tmp:
            for i, chunk in enumerate(_split(records, docs_per_shard)):
                name = f"part-{i:05d}{SHARD_SUFFIX[source]}"
                write_shard(chunk, tmp / name)
                names.append(name)
            manifest = {"writer": MANIFEST_WRITER, "files": {n: digest(tmp / n) for n in names}}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            check_demo_folders(out_dir, [source])  # nobody wrote into it meanwhile
        written[source] = [final / name for name in names]
        log.info(
            "demo source %s: %d docs, %.2f MB text, %d shards",
            source,
            len(records),
            sum(len(r["text"].encode("utf-8")) for r in records) / 1e6,
            len(names),
        )
    return written


# Word edits of the scaled-up copies: about Jaccard 0.9, 0.75 and 0.45 on 5-word shingles, plus
# a copy whose words are all kept but whose punctuation differs (the same shingles).
VARIANT_EDIT_RATES = (0.01, 0.03, 0.12)
_WORD = re.compile(r"\w+")


def _edit_words(text: str, rate: float, seed: str) -> str:
    """Replace about ``rate`` of the words with another word of the same text (seeded)."""
    words = _WORD.findall(text)
    if not words:
        return text
    pos = [0]

    def swap(m: re.Match[str]) -> str:
        pos[0] += 1
        h = int.from_bytes(hashlib.blake2b(f"{seed}:{pos[0]}".encode(), digest_size=8).digest())
        if (h % 10_000) / 10_000 >= rate:
            return m.group(0)
        return words[(h >> 16) % len(words)]

    return _WORD.sub(swap, text)


def scaled_records(records: Iterable[Record], copies: int) -> Iterator[Record]:
    """Each record, then ``copies - 1`` variants of it: word edits at the
    :data:`VARIANT_EDIT_RATES` in turn and every fourth copy re-punctuated.

    Builds corpora N times the demo's from the same real text, with near-duplicates above and
    below the usual 0.8 threshold (the scale on which dedup's memory is measured). Seeded by
    the record id, so the output is the same on every run.
    """
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    for r in records:
        yield r
        for c in range(1, copies):
            if c % 4 == 0:
                text = r["text"].replace(",", " ,").replace(".", ";")
            else:
                rate = VARIANT_EDIT_RATES[(c - 1) % len(VARIANT_EDIT_RATES)]
                text = _edit_words(r["text"], rate, f"{r['id']}:{c}")
            yield {**r, "id": f"{r['id']}~{c}", "text": text}


def summarize(shards: dict[str, list[Path]]) -> dict[str, dict[str, int]]:
    """Docs, UTF-8 text bytes, file bytes and shard count per source, read back from disk."""
    from corpuslab.ingest.readers import read_raw_shard

    summary = {}
    for source, paths in shards.items():
        docs = text_bytes = 0
        for path in paths:
            table = read_raw_shard(path, source).table
            docs += table.num_rows
            text_bytes += sum(len(t.encode("utf-8")) for t in table.column("text").to_pylist())
        summary[source] = {
            "docs": docs,
            "text_bytes": text_bytes,
            "file_bytes": sum(p.stat().st_size for p in paths),
            "shards": len(paths),
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m corpuslab.ingest.democorpus --out DIR``: build the corpus, print a summary."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write sources into")
    parser.add_argument("--max-docs", type=int, default=None, help="cap per source")
    parser.add_argument("--docs-per-shard", type=int, default=None)
    parser.add_argument("--source", action="append", choices=SOURCES, help="repeatable")
    args = parser.parse_args(argv)
    shards = build_demo_corpus(
        args.out,
        max_docs_per_source=args.max_docs,
        docs_per_shard=args.docs_per_shard,
        sources=args.source or SOURCES,
    )
    for source, row in summarize(shards).items():
        print(
            f"{source:<11} {row['docs']:>6} docs {row['text_bytes'] / 1e6:>7.2f} MB text "
            f"{row['file_bytes'] / 1e6:>7.2f} MB on disk {row['shards']:>3} shards"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
