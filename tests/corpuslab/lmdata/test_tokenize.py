"""Tokenizer files, the encoded-token cache and packing from cached ids, on real text."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from corpuslab.fileio import write_parquet
from corpuslab.ingest.readers import SCHEMA
from corpuslab.lmdata import encoded as enc
from corpuslab.lmdata import tokenize as tk
from tests.corpuslab.lmdata import reference

MODULES = [json.decoder, json.encoder, inspect, pytest, np.lib.stride_tricks, tk, enc]


def _texts() -> list[str]:
    return [inspect.getsource(m) for m in MODULES] + [inspect.getdoc(m) or "" for m in MODULES]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tk.train_tokenizer(_texts(), vocab_size=500, min_frequency=2, out_path=path)
    return path


def _shard(path: Path, rows: list[tuple[str, str]]) -> None:
    write_parquet(
        pa.Table.from_pylist(
            [{"id": i, "text": t, "source": "s", "url": None, "metadata": "{}"} for i, t in rows],
            schema=SCHEMA,
        ),
        path,
    )


def _pools(root: Path) -> dict[str, Path]:
    """Two domains; domain ``code`` has two shards whose ids clash (ids are per shard)."""
    texts = _texts()
    code, prose = root / "code", root / "prose"
    _shard(code / "s0.parquet", [("1", texts[0]), ("2", texts[1]), ("3", texts[2])])
    _shard(code / "s1.parquet", [("1", texts[3]), ("2", "")])  # an empty document too
    _shard(prose / "s0.parquet", [(f"d{i}", t) for i, t in enumerate(texts[7:])])
    return {"code": code, "prose": prose}


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.rglob("*") if p.is_file())


def test_cache_round_trips_a_direct_encode(tmp_path: Path, tok_path: Path) -> None:
    pools = _pools(tmp_path / "pools")
    cache = enc.encode_pools(tok_path, pools, tmp_path / "cache")
    assert cache.dtype == "uint16" and sorted(cache.encoded) == ["code/s0", "code/s1", "prose/s0"]
    tok = tk.load_tokenizer(tok_path)
    for domain, folder in pools.items():
        for shard in cache.load(domain):
            table = pa.parquet.read_table(folder / f"{shard.shard}.parquet")
            assert shard.ids.tolist() == table.column("id").to_pylist()
            direct = [tok.encode(t).ids for t in table.column("text").to_pylist()]
            assert shard.doc_tokens.tolist() == [len(d) for d in direct]
            assert shard.offsets.dtype == np.int64 and shard.offsets[0] == 0
            assert shard.tokens is not None and shard.tokens.dtype == np.uint16
            assert shard.tokens.tolist() == [t for d in direct for t in d]
    assert cache.load("code", tokens=False)[0].tokens is None
    keys = enc.concat_shards(cache.load("code"))[2].to_pylist()
    assert keys == ["s0\x1f1", "s0\x1f2", "s0\x1f3", "s1\x1f1", "s1\x1f2"]  # unique across shards


def test_cache_reencodes_only_changed_shards(tmp_path: Path, tok_path: Path) -> None:
    pools = _pools(tmp_path / "pools")
    cache_dir = tmp_path / "cache"
    first = enc.encode_pools(tok_path, pools, cache_dir)
    before = _entries(cache_dir)
    assert len(before) == 3
    again = enc.encode_pools(tok_path, pools, cache_dir)
    assert again.encoded == [] and again.reused == 3 and _entries(cache_dir) == before

    _shard(pools["code"] / "s1.parquet", [("1", "a changed document")])
    changed = enc.encode_pools(tok_path, pools, cache_dir)
    assert changed.encoded == ["code/s1"] and changed.reused == 2 and changed.removed == 1
    after = _entries(cache_dir)
    assert len(after) == 3 and set(before) - set(after) == {first.files["code"]["s1"]}
    assert changed.load("code")[1].ids.tolist() == ["1"]

    (pools["prose"] / "s0.parquet").unlink()  # a shard gone from the pool: its entry too
    gone = enc.encode_pools(tok_path, pools, cache_dir)
    assert gone.files["prose"] == {} and len(_entries(cache_dir)) == 2 and gone.removed == 1

    other_tok = tmp_path / "other.json"
    tk.train_tokenizer(_texts()[:3], vocab_size=300, min_frequency=2, out_path=other_tok)
    retok = enc.encode_pools(other_tok, pools, cache_dir)  # new tokenizer: everything again
    assert sorted(retok.encoded) == ["code/s0", "code/s1"] and len(_entries(cache_dir)) == 2


def test_gather_documents_in_order_with_separator() -> None:
    tokens = np.array([10, 11, 12, 20, 30, 31], dtype=np.uint16)
    offsets = np.array([0, 3, 4, 4, 6])  # docs: [10 11 12] [20] [] [30 31]
    stream, offs = enc.gather_documents(tokens, offsets, np.array([3, 0, 2, 3]), sep=0)
    assert stream.tolist() == [30, 31, 0, 10, 11, 12, 0, 0, 30, 31, 0]
    assert offs.tolist() == [0, 3, 7, 8, 11] and stream.dtype == np.uint16
    bare, offs = enc.gather_documents(tokens, offsets, np.array([1, 0]))
    assert bare.tolist() == [20, 10, 11, 12] and offs.tolist() == [0, 1, 4]
    empty, offs = enc.gather_documents(tokens, offsets, np.zeros(0, np.int64), sep=0)
    assert empty.size == 0 and offs.tolist() == [0]


def test_pack_selection_equals_packing_the_texts(tmp_path: Path, tok_path: Path) -> None:
    pools = _pools(tmp_path / "pools")
    cache = enc.encode_pools(tok_path, pools, tmp_path / "cache")
    texts = _texts()
    sel = {
        "code": pa.array(["s1\x1f1", "s0\x1f3", "s0\x1f1", "s1\x1f1"]),  # a repeat included
        "prose": pa.array(["s0\x1fd2", "s0\x1fd0"]),
    }
    eos = tk.load_tokenizer(tok_path).token_to_id(tk.EOS)
    rows, dom, packed, selected = enc.pack_selection(cache, sel, eos, seq_len=16, seed=5)
    by_text = {"code": [texts[3], texts[2], texts[0], texts[3]], "prose": [texts[9], texts[7]]}
    want_rows, want_dom, want_packed = reference.pack_sequences(
        tk.load_tokenizer(tok_path), by_text, seq_len=16, seed=5
    )
    assert np.array_equal(rows, want_rows) and np.array_equal(dom, want_dom)
    assert packed == want_packed and rows.shape[1] == 17
    tok = tk.load_tokenizer(tok_path)
    assert selected["code"] == sum(len(tok.encode(t).ids) for t in by_text["code"])
    with pytest.raises(ValueError, match="'s9\\\\x1f1' of domain 'code' is not in its filtered"):
        enc.pack_selection(cache, {"code": pa.array(["s9\x1f1"])}, eos, 16, 0)


def test_pack_rows_keeps_domains_apart() -> None:
    streams = {"b": np.arange(100, 150, dtype=np.uint16), "a": np.arange(0, 23, dtype=np.uint16)}
    rows, dom, kept = tk.pack_rows(streams, seq_len=4, seed=1)
    assert kept == {"a": 20, "b": 50} and rows.shape == (14, 5)
    for row, d in zip(rows, dom, strict=True):
        assert (row < 100).all() if d == 0 else (row >= 100).all()
        assert (np.diff(row.astype(int)) == 1).all()  # contiguous slices of one stream
    assert sorted(rows[dom == 0, 0].tolist()) == [0, 5, 10, 15]  # tail of 3 dropped
    again, _, _ = tk.pack_rows(streams, seq_len=4, seed=1)
    other, _, _ = tk.pack_rows(streams, seq_len=4, seed=2)
    assert np.array_equal(rows, again) and not np.array_equal(rows, other)


def test_tokenizer_file_is_checked_and_copied(tmp_path: Path, tok_path: Path) -> None:
    dest = tmp_path / "asset" / "tokenizer.json"
    tok = tk.install_tokenizer_file(tok_path, dest, tk.EOS)
    assert dest.read_bytes() == tok_path.read_bytes() and tok.token_to_id(tk.EOS) == 0
    assert tk.vocab_size(tok) == 500

    no_eos = tmp_path / "no_eos.json"
    tk.train_tokenizer(_texts()[:2], 300, 2, no_eos, eos_token="</s>")
    with pytest.raises(ValueError, match=r"no_eos\.json has no token '<\|endoftext\|>'"):
        tk.install_tokenizer_file(no_eos, tmp_path / "x" / "tokenizer.json", tk.EOS)
    assert not (tmp_path / "x" / "tokenizer.json").exists()
    assert tk.install_tokenizer_file(no_eos, tmp_path / "y.json", "</s>").token_to_id("</s>") == 0

    broken = tmp_path / "broken.json"
    broken.write_text('{"model": 3}')
    with pytest.raises(ValueError, match=r"broken\.json does not load"):
        tk.install_tokenizer_file(broken, dest, tk.EOS)
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        tk.install_tokenizer_file(tmp_path / "missing.json", dest, tk.EOS)
    assert dest.read_bytes() == tok_path.read_bytes()  # a failed install left the good file
