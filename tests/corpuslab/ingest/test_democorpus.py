"""The demo corpus builder writes real stdlib/package text in every shard format, reproducibly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corpuslab.ingest.democorpus import SOURCES, build_demo_corpus, main, summarize
from corpuslab.ingest.readers import list_shards, read_raw_shard

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Path]]]:
    out = tmp_path_factory.mktemp("demo")
    return out, build_demo_corpus(out, max_docs_per_source=12, docs_per_shard=5)


def _records(paths: list[Path], source: str) -> list[dict]:
    rows: list[dict] = []
    for path in paths:
        result = read_raw_shard(path, source)
        assert result.quarantined == [], result.quarantined[:1]
        rows += result.table.to_pylist()
    return rows


def test_every_source_has_shards_in_its_format(small_corpus):
    out, shards = small_corpus
    assert set(shards) == set(SOURCES)
    expected = {
        "reference": ".jsonl.gz",
        "docstrings": ".jsonl.gz",
        "code": ".jsonl.zst",
        "packages": ".jsonl",
    }
    for source, paths in shards.items():
        assert [p.name for p in paths] == [f"part-0000{i}{expected[source]}" for i in range(3)]
        assert sorted(list_shards(out / source).values()) == paths
        head = paths[0].read_bytes()[:4]
        if expected[source] == ".jsonl.gz":
            assert head.startswith(GZIP_MAGIC)
        elif expected[source] == ".jsonl.zst":
            assert head == ZSTD_MAGIC
        else:
            assert json.loads(paths[0].read_text().splitlines()[0])["id"].startswith("packages/")
    hidden = sorted(p.relative_to(out).as_posix() for p in out.rglob(".*"))
    assert hidden == [f"{s}/.corpuslab-demo.json" for s in sorted(SOURCES)]  # no temp files


def test_records_are_valid_and_real_text(small_corpus):
    _, shards = small_corpus
    by_source = {source: _records(paths, source) for source, paths in shards.items()}
    for source, rows in by_source.items():
        assert len(rows) == 12
        ids = [r["id"] for r in rows]
        assert len(set(ids)) == len(ids) and all(i.startswith(f"{source}/") for i in ids)
        assert all(r["url"] and len(r["text"]) > 100 for r in rows)
        assert all("kind" in json.loads(r["metadata"]) for r in rows)
    code = by_source["code"]
    assert all(r["url"].startswith("file://") and r["id"].endswith(".py") for r in code)
    assert sum("def " in r["text"] or "import " in r["text"] for r in code) >= 10
    assert all(json.loads(r["metadata"])["module"] for r in by_source["docstrings"])
    prose = " ".join(r["text"] for r in by_source["reference"] + by_source["docstrings"])
    assert " the " in prose and " is " in prose
    packages = by_source["packages"]
    assert all(json.loads(r["metadata"])["version"] for r in packages)


def test_build_is_deterministic_and_rebuild_leaves_no_stale_shards(tmp_path, small_corpus):
    _, first = small_corpus
    second = build_demo_corpus(tmp_path, max_docs_per_source=12, docs_per_shard=5)
    for source in SOURCES:
        assert [p.read_bytes() for p in first[source]] == [p.read_bytes() for p in second[source]]
    rebuilt = build_demo_corpus(tmp_path, max_docs_per_source=12, sources=["code"])
    assert len(rebuilt["code"]) == 3
    shards = sorted(p for p in (tmp_path / "code").iterdir() if p.name != ".corpuslab-demo.json")
    assert shards == rebuilt["code"]


def test_default_build_is_demo_sized(tmp_path):
    summary = summarize(build_demo_corpus(tmp_path))
    assert all(row["shards"] == 3 for row in summary.values())
    assert summary["reference"]["docs"] >= 50
    assert summary["code"]["docs"] == 400
    assert summary["docstrings"]["docs"] >= 100
    assert summary["packages"]["docs"] >= 10
    total_mb = sum(row["text_bytes"] for row in summary.values()) / 1e6
    assert 5 <= total_mb <= 15


def test_cli_prints_summary(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--max-docs", "4", "--source", "reference"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("reference") and " 4 docs" in line
    assert [p.name for p in tmp_path.iterdir()] == ["reference"]
    assert sorted(p.name for p in (tmp_path / "reference").iterdir())[0] == ".corpuslab-demo.json"


def test_the_packages_source_leaves_out_corpuslab_itself() -> None:
    """corpuslab's own description is its README: a docs edit must not change the demo corpus."""
    import importlib.metadata

    from corpuslab.ingest.democorpus import package_records

    assert importlib.metadata.distribution("corpuslab").metadata["Name"] == "corpuslab"
    names = {r["package"] for r in package_records()}
    assert names and "corpuslab" not in names
