"""The demo corpus never writes into a folder it did not create nor deletes what it did not write.

A ``CORPUSLAB_HOME`` may hold the user's own data in a folder named like a demo source
(``raw/code``); the builder and ``make demo``'s entry point must stop with the folder named and
leave every byte of it, and of anything beside it, as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main as corpuslab
from corpuslab.ingest.democorpus import MANIFEST, DemoCorpusError, build_demo_corpus
from corpuslab.layout import Layout

TOPICS = __import__("pydoc_data.topics", fromlist=["topics"]).topics


def _user_files(raw: Path) -> dict[Path, bytes]:
    """The user's own shards in ``raw/code`` and notes beside the demo folders."""
    files = {
        raw / "code" / "part-00000.jsonl.zst": b"user shard 0",
        raw / "code" / "mine.jsonl": json.dumps({"text": TOPICS["assert"]}).encode() + b"\n",
        raw / "notes.txt": b"my notes",
        raw / "mine" / "part-0.jsonl": json.dumps({"text": TOPICS["async"]}).encode() + b"\n",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_users_folder_named_like_a_demo_source_stops_the_build_untouched(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "raw"
    _user_files(raw)
    before = _snapshot(raw)
    with pytest.raises(DemoCorpusError, match=rf"{raw / 'code'} holds files the demo corpus"):
        build_demo_corpus(raw, max_docs_per_source=4, docs_per_shard=2)
    assert _snapshot(raw) == before  # nothing written, nothing deleted, not even reference/


def test_files_beside_the_demo_folders_survive_builds_and_rebuilds(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    mine = {p: d for p, d in _user_files(raw).items() if p.parent.name != "code"}
    (raw / "code").rename(tmp_path / "moved-code")  # the user moved their folder away
    for _ in range(2):
        build_demo_corpus(raw, max_docs_per_source=4, docs_per_shard=2)
        assert all(p.read_bytes() == d for p, d in mine.items())
    assert sorted(p.name for p in raw.iterdir()) == [
        "code", "docstrings", "mine", "notes.txt", "packages", "reference"
    ]  # fmt: skip


def test_a_demo_folder_the_user_changed_is_not_replaced(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shards = build_demo_corpus(raw, max_docs_per_source=4, docs_per_shard=2, sources=["code"])
    shards["code"][0].write_bytes(b"edited by the user")
    (raw / "code" / "extra.jsonl").write_bytes(b"{}\n")
    with pytest.raises(DemoCorpusError, match="changed since the demo wrote it"):
        build_demo_corpus(raw, max_docs_per_source=4, docs_per_shard=2, sources=["code"])
    assert shards["code"][0].read_bytes() == b"edited by the user"
    assert (raw / "code" / "extra.jsonl").exists()
    (raw / "code" / MANIFEST).unlink()
    with pytest.raises(DemoCorpusError, match="extra.jsonl"):  # no manifest: all foreign
        build_demo_corpus(raw, max_docs_per_source=4, sources=["code"])


def test_make_demo_exits_with_the_folder_named_and_the_users_data_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``corpuslab demo`` (what ``make demo`` runs) on a home whose ``raw/code`` is the user's:
    exit 2 before anything is materialized, no harm."""
    home = tmp_path / "home"
    _user_files(home / "raw")
    before = _snapshot(home / "raw")
    monkeypatch.setenv("CORPUSLAB_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    assert corpuslab(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"corpuslab demo: {home / 'raw' / 'code'} holds files the demo corpus")
    assert _snapshot(home / "raw") == before
    assert not (Layout(home).raw / ".complete").exists()
