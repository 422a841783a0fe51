"""Document ids survive the caches byte for byte: ids differing only in trailing NULs stay apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from corpuslab.dedup.cache import load_signatures, save_signatures
from corpuslab.dedup.params import DedupParams
from corpuslab.fileio import pack_strings, unpack_strings, write_parquet
from corpuslab.ingest.readers import SCHEMA
from corpuslab.lmdata import encoded as enc
from corpuslab.lmdata import tokenize as tk

TOPICS = __import__("pydoc_data.topics", fromlist=["topics"]).topics
TEXTS = [TOPICS[k] for k in sorted(TOPICS)[:6]]
IDS = ["a", "a\x00", "a\x00\x00", "\x00", "é\x00", "b"]  # numpy's str dtype folds the first 3


def test_pack_strings_round_trips_trailing_nuls() -> None:
    data, offsets = pack_strings(IDS)
    assert unpack_strings(data, offsets).tolist() == IDS
    assert np.asarray(IDS, dtype=str).tolist() != IDS  # why: numpy strips trailing NULs


def test_encoded_cache_keeps_ids_that_differ_by_trailing_nuls(tmp_path: Path) -> None:
    tok_path = tmp_path / "tokenizer.json"
    tk.train_tokenizer(TEXTS, vocab_size=300, min_frequency=2, out_path=tok_path)
    rows = [
        {"id": i, "text": t, "source": "s", "url": None, "metadata": "{}"}
        for i, t in zip(IDS, TEXTS, strict=True)
    ]
    write_parquet(pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path / "pool" / "s0.parquet")
    cache = enc.encode_pools(tok_path, {"d": tmp_path / "pool"}, tmp_path / "cache")
    (shard,) = cache.load("d")
    assert shard.ids.tolist() == IDS
    keys = enc.concat_shards([shard])[2].to_pylist()
    assert len(set(keys)) == len(IDS)
    # selecting "a\0" by its key gets its own tokens, not those of "a"
    streams, selected = enc.domain_streams(cache, {"d": pa.array(["s0\x1fa\x00"])}, eos_id=0)
    tok = tk.load_tokenizer(tok_path)
    assert streams["d"].tolist() == [*tok.encode(TEXTS[1]).ids, 0]


def test_signature_cache_keeps_ids_that_differ_by_trailing_nuls(tmp_path: Path) -> None:
    params = DedupParams(num_perm=16, bands=4, rows=4)
    sigs = np.arange(len(IDS) * 16, dtype=np.uint64).reshape(len(IDS), 16)
    save_signatures(tmp_path / "s.npz", IDS, sigs, params, key="k")
    loaded = load_signatures(tmp_path / "s.npz", params, key="k")
    assert loaded is not None and loaded[0] == IDS
