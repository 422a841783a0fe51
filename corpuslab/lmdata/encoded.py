"""Token ids of filtered pools, encoded once per (tokenizer, shard) and cached on disk.

Each filtered Parquet shard is encoded into ``<cache>/source=<domain>/shard=<stem>/<key>.npz``
where ``key`` digests the tokenizer file and the shard file: a changed shard or tokenizer
re-encodes only what changed, every mixture using the same tokenizer reads the same files, and
older entries of a shard are removed. An entry holds the shard's document ``ids`` (in shard
order; stored as UTF-8 bytes and offsets, see :func:`corpuslab.fileio.pack_strings`), ``offsets``
(int64, ``n_docs + 1``) and the flat ``tokens`` (uint16 when the vocabulary fits, else uint32),
with no separator between documents. Mixture weights and plans read the
per-document counts from the offsets; the token file is packed from the ids (no second encode).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from corpuslab.arrow import pc
from corpuslab.compute import Compute, LocalCompute
from corpuslab.fileio import atomic_path, digest, pack_strings, unpack_strings
from corpuslab.lmdata.tokenfile import dtype_for_vocab
from corpuslab.lmdata.tokenize import load_tokenizer, pack_rows, vocab_size
from corpuslab.progress import Progress

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the entry format changes: old entries then count as stale
# 2: ids stored as UTF-8 bytes + offsets (numpy string arrays dropped trailing NULs)
ENCODE_BATCH = 4096  # documents per encode call: bounds the Encoding objects alive at once
KEY_SEP = "\x1f"  # joins shard and id into a key unique across a domain's shards


def pool_shards(folder: Path) -> dict[str, Path]:
    """Shard stem -> Parquet file of a filtered pool folder (temp and hidden files skipped)."""
    return {p.stem: p for p in sorted(folder.glob("*.parquet")) if not p.name.startswith(".")}


@dataclass(frozen=True)
class EncodedShard:
    """One cache entry: document ids, their token offsets and (if loaded) the flat tokens."""

    shard: str
    ids: np.ndarray  # str objects, shard order
    offsets: np.ndarray  # int64, n_docs + 1
    tokens: np.ndarray | None = None

    @property
    def doc_tokens(self) -> np.ndarray:
        """Tokens per document (no separator counted)."""
        return np.diff(self.offsets)

    def keys(self) -> pa.Array:
        """``shard + KEY_SEP + id`` per document: unique across a domain's shards."""
        return pc.binary_join_element_wise(self.shard, pa.array(self.ids, pa.string()), KEY_SEP)


def load_shard(path: Path, shard: str, tokens: bool = True) -> EncodedShard:
    """Read a cache entry; ``tokens=False`` skips the (large) token array."""
    with np.load(path, allow_pickle=False) as z:
        return EncodedShard(
            shard=shard,
            ids=unpack_strings(z["id_bytes"], z["id_offsets"]),
            offsets=z["offsets"],
            tokens=z["tokens"] if tokens else None,
        )


def encode_texts(tok: Tokenizer, texts: Sequence[str], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, flat tokens) of documents, no special tokens added, no separator.

    ``encode_batch_fast`` (no character offsets) runs in Rust on every core without the GIL;
    the ids are then flattened into one numpy array without an intermediate list per batch.
    """
    lens: list[np.ndarray] = []
    flats: list[np.ndarray] = []
    for i in range(0, len(texts), ENCODE_BATCH):
        encs = tok.encode_batch_fast(list(texts[i : i + ENCODE_BATCH]), add_special_tokens=False)
        n = np.fromiter((len(e) for e in encs), dtype=np.int64, count=len(encs))
        lens.append(n)
        flats.append(
            np.fromiter(
                itertools.chain.from_iterable(e.ids for e in encs), dtype=dtype, count=int(n.sum())
            )
        )
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    if lens:
        np.cumsum(np.concatenate(lens), out=offsets[1:])
    flat = np.concatenate(flats) if flats else np.zeros(0, dtype=dtype)
    return offsets, flat


def encode_shard(tok: Tokenizer, shard_path: Path, out_path: Path, dtype: str) -> int:
    """Encode one Parquet shard (``id``, ``text``) into a cache entry, atomically; docs encoded."""
    table = pq.read_table(shard_path, columns=["id", "text"])
    ids = table.column("id").to_pylist()
    offsets, flat = encode_texts(tok, table.column("text").to_pylist(), dtype)
    id_bytes, id_offsets = pack_strings(ids)
    with atomic_path(out_path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, id_bytes=id_bytes, id_offsets=id_offsets, offsets=offsets, tokens=flat)
    return len(ids)


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(path: str, stamp: str) -> Tokenizer:
    """One loaded tokenizer per file content and process (``stamp``: its digest)."""
    return load_tokenizer(Path(path))


def encode_shard_file(job: tuple[str, str, str, str, str]) -> int:
    """``encode_shard`` of ``(tokenizer path, its digest, shard path, entry path, dtype)``.

    One picklable argument, so a Ray task or a thread runs it alike; the tokenizer is loaded
    once per process and reused for every shard it encodes.
    """
    tok_path, tok_digest, src, out, dtype = job
    return encode_shard(_cached_tokenizer(tok_path, tok_digest), Path(src), Path(out), dtype)


@dataclass
class EncodedPools:
    """The cache entries of a recipe's domains under one tokenizer, and what it took."""

    files: dict[str, dict[str, Path]]  # domain -> shard stem -> cache entry
    dtype: str
    encoded: list[str] = field(default_factory=list)  # "domain/shard" encoded by this call
    reused: int = 0
    removed: int = 0  # stale entries deleted

    def load(self, domain: str, tokens: bool = True) -> list[EncodedShard]:
        """Every shard of a domain, in shard order."""
        return [load_shard(p, s, tokens) for s, p in self.files[domain].items()]


def _entry_key(tok_digest: str, shard_digest: str) -> str:
    raw = f"{CACHE_VERSION}:{tok_digest}:{shard_digest}".encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def _remove_stale(folder: Path, keep: set[str]) -> int:
    """Delete entries in ``folder`` other than ``keep`` (temp files of live writers spared)."""
    removed = 0
    if not folder.is_dir():
        return 0
    for p in folder.iterdir():
        if p.name in keep or p.name.startswith("."):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed += 1
    return removed


def encode_pools(
    tokenizer_path: Path,
    pools: Mapping[str, Path],
    cache_dir: Path,
    workers: int | None = None,
    compute: Compute | None = None,
) -> EncodedPools:
    """Make sure every shard of every pool folder has a current cache entry; encode the rest.

    ``pools`` maps domain -> filtered folder; ``cache_dir`` is the recipe's folder under the
    tokenizer's encoded cache. Missing entries are encoded shard by shard through ``compute``
    (default: a thread pool of ``workers``, one per core; or Ray tasks), each shard in batches
    whose encoding runs on all cores too. Entries of other keys and of shards no longer in the
    pool are removed.
    """
    tok = load_tokenizer(tokenizer_path)
    dtype = dtype_for_vocab(vocab_size(tok))
    tok_digest = digest(tokenizer_path)
    result = EncodedPools(files={}, dtype=dtype)
    todo: list[tuple[str, str, Path, Path]] = []
    for domain, folder in pools.items():
        ddir = cache_dir / f"source={domain}"
        shards = pool_shards(folder)
        result.removed += _remove_stale(ddir, {f"shard={s}" for s in shards})
        result.files[domain] = {}
        for shard, path in shards.items():
            name = f"{_entry_key(tok_digest, digest(path))}.npz"
            entry = ddir / f"shard={shard}" / name
            result.removed += _remove_stale(entry.parent, {name})
            result.files[domain][shard] = entry
            if entry.is_file():
                result.reused += 1
            else:
                todo.append((domain, shard, path, entry))
    if todo:
        runner = compute or LocalCompute(workers)
        tok_file = str(tokenizer_path)
        jobs = [(tok_file, tok_digest, str(src), str(out), dtype) for *_, src, out in todo]
        progress = Progress(f"encoding with {tokenizer_path.parent.name}", len(jobs), "shards")
        chunk = max(1, 2 * (workers or os.cpu_count() or 1))  # a progress line between chunks
        for lo in range(0, len(jobs), chunk):
            runner.map(encode_shard_file, jobs[lo : lo + chunk])
            progress.advance(len(jobs[lo : lo + chunk]))
        result.encoded += [f"{domain}/{shard}" for domain, shard, _, _ in todo]
        log.info("encoded %d shards, reused %d", len(todo), result.reused)
    return result


def gather_documents(
    tokens: np.ndarray, offsets: np.ndarray, docs: np.ndarray, sep: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The tokens of documents ``docs`` (indices, repeats allowed) in that order, one stream.

    With ``sep`` each document is followed by that token. Returns (stream, offsets of the
    documents in it). Vectorized: one index array and one gather, no loop over documents.
    """
    docs = np.asarray(docs, dtype=np.int64)
    starts = offsets[docs]
    lens = offsets[docs + 1] - starts
    extra = 0 if sep is None else 1
    span = lens + extra
    out_offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(span, out=out_offsets[1:])
    total = int(out_offsets[-1])
    # index into tokens: position within the output minus the doc's output start plus its start
    idx = np.arange(total, dtype=np.int64) + np.repeat(starts - out_offsets[:-1], span)
    if sep is None:
        return tokens[idx], out_offsets
    source = np.append(tokens, np.asarray([sep], dtype=tokens.dtype))
    idx[out_offsets[1:] - 1] = len(tokens)  # the last slot of each doc: the separator
    return source[idx], out_offsets


def concat_shards(shards: Sequence[EncodedShard]) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """One domain's (tokens, offsets, keys) over its shards, documents in shard order."""
    toks = [s.tokens for s in shards if s.tokens is not None]
    if len(toks) != len(shards):
        raise ValueError("concat_shards needs shards loaded with their tokens")
    dtype = toks[0].dtype if toks else np.dtype(np.uint16)
    tokens = np.concatenate(toks) if toks else np.zeros(0, dtype=dtype)
    offsets = [np.zeros(1, dtype=np.int64)]
    base = 0
    for s in shards:
        offsets.append(s.offsets[1:] + base)
        base += int(s.offsets[-1])
    keys = pa.concat_arrays([s.keys() for s in shards]) if shards else pa.array([], pa.string())
    return tokens, np.concatenate(offsets), keys


def domain_streams(
    cache: EncodedPools, selection: Mapping[str, pa.Array], eos_id: int
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Per domain, the selected documents' tokens in selection order, each followed by EOS.

    ``selection`` maps domain -> keys (``shard + KEY_SEP + id``) in sampling order, repeats
    included. Returns (streams, selected tokens per domain without separators).
    """
    streams: dict[str, np.ndarray] = {}
    selected: dict[str, int] = {}
    for domain, keys in selection.items():
        tokens, offsets, cache_keys = concat_shards(cache.load(domain))
        idx = pc.index_in(keys, value_set=cache_keys)
        if idx.null_count:
            missing = pc.filter(keys, pc.is_null(idx))[0].as_py()
            raise ValueError(
                f"selected document {missing!r} of domain {domain!r} is not in its filtered "
                "pool any more: re-materialize the mixture"
            )
        docs = idx.to_numpy(zero_copy_only=False).astype(np.int64)
        stream, doc_offsets = gather_documents(tokens, offsets, docs, sep=eos_id)
        streams[domain] = stream
        selected[domain] = int(doc_offsets[-1]) - len(docs)
    return streams, selected


def pack_selection(
    cache: EncodedPools,
    selection: Mapping[str, pa.Array],
    eos_id: int,
    seq_len: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, int], dict[str, int]]:
    """Rows of the selected documents from the cache: (rows, domain per row, packed, selected).

    Rows never mix domains (see :func:`corpuslab.lmdata.tokenize.pack_rows`); domain indices follow
    the sorted domain names.
    """
    streams, selected = domain_streams(cache, selection, eos_id)
    rows, dom, packed = pack_rows(streams, seq_len, seed)
    return rows, dom, packed, selected
