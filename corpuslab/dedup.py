"""Near-duplicate and exact-duplicate detection over documents.

MinHash over lowercased word n-gram shingles with banded LSH, as in DCLM-style fuzzy dedup.
LSH with ``b`` bands of ``r`` rows accepts a pair of Jaccard similarity ``s`` with probability
``1 - (1 - s^r)^b``; the S-curve's midpoint is about ``(1/b)^(1/r)``. Reference settings:
datatrove 14 x 8 (midpoint ~0.72), NeMo Curator 20 x 13 at 0.8. By default the bands and rows
are datasketch's optimum for ``threshold`` (equal false-positive/negative weights); at 0.8 with
128 permutations that is 9 x 13, which finds a pair of Jaccard 0.8 only with p = 0.40. With
verification on, declaring a lower midpoint (16 x 8: p = 0.95) buys recall for little work.

Signatures are bit-identical to datasketch's ``MinHash`` (>= 2.0) for the same ``num_perm``,
``seed`` and ``scheme``: each shingle's UTF-8 bytes are hashed with SHA-1 (first 4 digest bytes,
little-endian), then permuted either by datasketch's default ``"affine32"`` scheme (MurmurHash3
finalizer, then ``a*h + b mod 2^32``) or its ``"legacy"`` scheme (``a*h + b mod 2^61-1``,
truncated to 32 bits, the only scheme before datasketch 2.0). Word splitting, shingle
assembly, SHA-1 (32 shingles side by side, in SIMD lanes) and the permutation minimum are
compiled with numba and run over batches of documents; without numba the same values come from
a slower numpy/hashlib path (:func:`_signatures_reference`, datasketch's own algorithm).

The work splits in two so it can be cached per shard: :func:`compute_signatures` (per document,
saved with :func:`save_signatures`) and :func:`find_duplicates_from_signatures` (across all
shards). Candidate pairs are documents sharing a band bucket, optionally verified by estimated
Jaccard; clusters are connected components; each keeps the document with the smallest id, so
the result never depends on input order.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import sparse
from scipy.integrate import quad
from scipy.sparse.csgraph import connected_components

from corpuslab.layout import atomic_path

try:  # the compiled kernel; without numba the numpy/hashlib path gives the same values
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is not installed
    numba = None

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")

# Bump when shingling or hashing changes, so cached signatures of older code count as stale.
SIGNATURE_VERSION = 1
MAX_HASH = (1 << 32) - 1  # datasketch's initial (empty-set) hash value
MERSENNE_PRIME = (1 << 61) - 1
BATCH_DOCS = 4096  # documents per batch of the compiled path (bounds its buffers' memory)
BATCH_CHARS = 1 << 22  # characters per batch, the same
BLOCKS_PER_STEP = 1 << 12  # shingles hashed per kernel step (a multiple of the SIMD lanes)
_VERIFY_CHUNK = 1 << 16  # candidate pairs compared per numpy step


class DedupParams(BaseModel):
    """Settings of MinHash near-dedup; every threshold is an argument, none is hidden."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ngram: int = Field(5, ge=1, description="words per shingle")
    num_perm: int = Field(128, ge=2, description="MinHash permutations (signature length)")
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="Jaccard similarity of duplicates")
    bands: int | None = Field(None, ge=2, description="LSH bands; with rows, overrides optimum")
    rows: int | None = Field(None, ge=1, description="rows per LSH band")
    seed: int = Field(1, ge=0, description="seed of the MinHash permutations")
    verify: bool = Field(
        True, description="drop LSH candidates whose estimated Jaccard is below threshold"
    )
    scheme: Literal["affine32", "legacy"] = Field(
        "affine32",
        description="datasketch permutation scheme: affine32 (its default since 2.0) or legacy",
    )

    @model_validator(mode="after")
    def _check_bands(self) -> DedupParams:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        product = (self.bands or 0) * (self.rows or 0)
        if product > self.num_perm:
            raise ValueError(f"bands * rows = {product} exceeds num_perm = {self.num_perm}")
        return self

    def lsh_params(self) -> tuple[int, int]:
        """The (bands, rows) the LSH index uses: the given ones or datasketch's optimum."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return optimal_lsh_params(self.threshold, self.num_perm)

    def signature_fingerprint(self) -> str:
        """Digest of what shapes a signature (not the LSH settings), to detect stale caches."""
        shaping = {
            "version": SIGNATURE_VERSION,
            "ngram": self.ngram,
            "num_perm": self.num_perm,
            "seed": self.seed,
            "scheme": self.scheme,
        }
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=64)
def optimal_lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """datasketch's optimum (bands, rows): least false-positive + false-negative area at 0.5/0.5.

    The same search and integrals as ``datasketch.lsh._optimal_param``, without its private API.
    """

    def false_positive(b: int, r: int) -> float:
        return quad(lambda s: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)[0]

    def false_negative(b: int, r: int) -> float:
        return quad(lambda s: 1 - (1 - (1 - s ** float(r)) ** float(b)), threshold, 1.0)[0]

    best, best_error = (0, 0), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            error = 0.5 * false_positive(b, r) + 0.5 * false_negative(b, r)
            if error < best_error:
                best, best_error = (b, r), error
    return best


@dataclass
class DedupResult:
    """Clusters of duplicate documents and which members are dropped in favour of which.

    Only documents with at least one duplicate appear in ``clusters``; a cluster's id is the id
    of the document it keeps.
    """

    n_docs: int
    clusters: dict[str, str] = field(default_factory=dict)  # member id -> cluster id (kept id)
    drop: set[str] = field(default_factory=set)
    keep_of: dict[str, str] = field(default_factory=dict)  # dropped id -> kept id
    n_candidate_pairs: int = 0
    n_verified_pairs: int = 0

    @property
    def n_clusters(self) -> int:
        """Clusters with at least two members."""
        return len(set(self.clusters.values()))

    @property
    def n_dropped(self) -> int:
        return len(self.drop)

    @property
    def n_kept(self) -> int:
        return self.n_docs - len(self.drop)

    def counts(self) -> dict[str, int]:
        """The numbers a pipeline logs as metadata."""
        return {
            "n_docs": self.n_docs,
            "n_kept": self.n_kept,
            "n_dropped": self.n_dropped,
            "n_clusters": self.n_clusters,
            "n_candidate_pairs": self.n_candidate_pairs,
            "n_verified_pairs": self.n_verified_pairs,
        }


def normalize_words(text: str) -> list[str]:
    """Lowercased words with punctuation removed, so formatting changes do not break shingles."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def shingles(text: str, ngram: int) -> set[bytes]:
    """The set of word ``ngram``-grams of ``text``; a shorter text is one shingle of itself."""
    words = normalize_words(text)
    if len(words) < ngram:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + ngram]).encode("utf-8") for i in range(len(words) - ngram + 1)}


def _check_ids(ids: Sequence[str], n: int, what: str = "texts") -> None:
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} ids but {n} {what}")
    if len(set(ids)) != len(ids):
        dups = sorted(i for i, c in Counter(ids).items() if c > 1)
        raise ValueError(f"ids must be unique; repeated: {dups[:5]}")


# ---------------------------------------------------------------- signatures


@functools.lru_cache(maxsize=16)
def _permutations(num_perm: int, seed: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's permutation parameters (a, b) for this seed, drawn in its exact order."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        prime = np.uint64(MERSENNE_PRIME)
        pairs = [
            (gen.randint(1, prime, dtype=np.uint64), gen.randint(0, prime, dtype=np.uint64))
            for _ in range(num_perm)
        ]
        a, b = np.array(pairs, dtype=np.uint64).T
    else:
        a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    a, b = np.ascontiguousarray(a, dtype=np.uint64), np.ascontiguousarray(b, dtype=np.uint64)
    a.flags.writeable = b.flags.writeable = False
    return a, b


def _prepare(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Concatenated UTF-8 bytes of the texts as the kernel splits them, offsets, any non-ASCII.

    ASCII text goes as is: NFKC leaves it unchanged, and the kernel lowercases it and splits on
    ASCII ``\\w``, which is what Python's regex does on ASCII. Other text is NFKC'd and
    lowercased here; the kernel then decodes it and looks code points up in
    :func:`_unicode_word_table`. Lone surrogates pass through encoded (they are never words).
    """
    parts: list[bytes] = []
    unicode = False
    for text in texts:
        if text.isascii():
            parts.append(text.encode("ascii"))
        else:
            norm = unicodedata.normalize("NFKC", text).lower()
            parts.append(norm.encode("utf-8", "surrogatepass"))
            unicode = True
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)), out=offsets[1:])
    return np.frombuffer(b"".join(parts), dtype=np.uint8), offsets, unicode


def _ascii_word_table() -> np.ndarray:
    """ASCII byte -> its lowercase form if it is a ``\\w`` character, else 0."""
    table = np.zeros(128, dtype=np.uint8)
    for c in b"abcdefghijklmnopqrstuvwxyz0123456789_":
        table[c] = c
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        table[c] = c + 32
    return table


_ASCII_WORDS = _ascii_word_table()
_NO_UNICODE = np.zeros(1, dtype=np.uint8)  # stands in for the table when all text is ASCII


@functools.cache
def _unicode_word_table() -> np.ndarray:
    """Code point -> 1 if Python's regex counts it as ``\\w``, else 0 (built once, ~0.1 s).

    Taken from the regex engine itself, over a string of every code point, so it matches
    :func:`normalize_words` by construction.
    """
    points = np.arange(0x110000, dtype=np.uint32)
    points[0xD800:0xE000] = ord(" ")  # surrogates cannot be decoded; they are not words either
    everything = points.tobytes().decode("utf-32-le")
    table = np.zeros(0x110000, dtype=np.uint8)
    for run in _WORD.finditer(everything):
        table[run.start() : run.end()] = 1
    return table


def _sha1_hash32_reference(data: bytes) -> int:
    return int.from_bytes(hashlib.sha1(data).digest()[:4], "little")


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer on uint64 values below 2^32 (datasketch's pre-mix)."""
    mask = np.uint64(MAX_HASH)
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(0x85EBCA6B)) & mask
    h = h ^ (h >> np.uint64(13))
    h = (h * np.uint64(0xC2B2AE35)) & mask
    return h ^ (h >> np.uint64(16))


def _signatures_reference(texts: Sequence[str], params: DedupParams) -> np.ndarray:
    """Signatures shingle by shingle with hashlib and numpy: datasketch's own algorithm."""
    a, b = _permutations(params.num_perm, params.seed, params.scheme)
    out = np.empty((len(texts), params.num_perm), dtype=np.uint64)
    for i, text in enumerate(texts):
        hv = np.array(
            [_sha1_hash32_reference(s) for s in shingles(text, params.ngram)], dtype=np.uint64
        )[:, None]
        if params.scheme == "legacy":
            phv = ((hv * a + b) % np.uint64(MERSENNE_PRIME)) & np.uint64(MAX_HASH)
        else:
            phv = (_fmix32(hv) * a + b) & np.uint64(MAX_HASH)
        out[i] = phv.min(axis=0)
    return out


if numba is not None:
    from corpuslab._utf8 import decode_utf8

    _u32, _u64 = np.uint32, np.uint64
    _M32 = _u64(MAX_HASH)
    _P61 = _u64(MERSENNE_PRIME)
    _S61 = _u64(61)
    _FM1, _FM2 = _u32(0x85EBCA6B), _u32(0xC2B2AE35)
    _K0, _K1, _K2, _K3 = (_u32(k) for k in (0x5A827999, 0x6ED9EBA1, 0x8F1BBCDC, 0xCA62C1D6))
    _H0, _H1, _H2, _H3, _H4 = (
        _u32(h) for h in (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0)
    )
    _LANES = 32  # SHA-1s computed side by side (the compiler turns lane loops into SIMD)
    _jit = numba.njit(cache=True, nogil=True, boundscheck=False)

    # Values are uint32; numba widens arithmetic to 64 bits, so every result is cast back
    # (the compiler then emits 32-bit instructions, rotations included).

    @_jit
    def _split_words(
        buf: np.ndarray, offsets: np.ndarray, ascii_words: np.ndarray, unicode_words: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each document's ``\\w+`` words, lowercased, joined by single spaces into ``norm``.

        Returns ``norm``, the words' ``starts`` and ``ends`` in it, and ``doc_words``: the words
        of document ``d`` are ``doc_words[d]`` up to ``doc_words[d + 1]``.
        """
        n_docs = offsets.shape[0] - 1
        norm = np.empty(buf.shape[0] + 1, dtype=np.uint8)
        cap = buf.shape[0] // 2 + n_docs + 1
        starts = np.empty(cap, dtype=np.int64)
        ends = np.empty(cap, dtype=np.int64)
        doc_words = np.empty(n_docs + 1, dtype=np.int64)
        n_words = 0
        q = 0
        for d in range(n_docs):
            doc_words[d] = n_words
            first_word = n_words
            in_word = False
            p = offsets[d]
            while p < offsets[d + 1]:
                c = buf[p]
                lower, width = _u32(0), 1
                if c < 0x80:
                    lower = ascii_words[c]
                    is_word = lower != 0
                else:  # a UTF-8 sequence: decode the code point to look it up
                    cp, width = decode_utf8(buf, p, c)
                    is_word = unicode_words[cp] != 0
                if is_word:
                    if not in_word:
                        if n_words > first_word:
                            norm[q] = 32
                            q += 1
                        starts[n_words] = q
                        in_word = True
                    if width == 1:
                        norm[q] = lower
                        q += 1
                    else:
                        for k in range(width):
                            norm[q] = buf[p + k]
                            q += 1
                elif in_word:
                    ends[n_words] = q
                    n_words += 1
                    in_word = False
                p += width
            if in_word:
                ends[n_words] = q
                n_words += 1
        doc_words[n_docs] = n_words
        return norm[:q], starts[:n_words], ends[:n_words], doc_words

    @_jit
    def _fill_blocks(
        norm: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        doc_words: np.ndarray,
        doc_shingles: np.ndarray,
        ngram: int,
        first: int,
        blocks: np.ndarray,
        owner: np.ndarray,
        long_spans: np.ndarray,
    ) -> tuple[int, int]:
        """Padded one-block SHA-1 messages of shingles ``first, first + 1, ...`` into ``blocks``.

        Stops when ``blocks`` is full or the shingles end. A shingle longer than 55 bytes (more
        than one block; rare) goes to ``long_spans`` as (document, start, end) in ``norm``.
        Returns how many blocks and long spans were written.
        """
        n_docs = doc_words.shape[0] - 1
        d = np.searchsorted(doc_shingles, first, side="right") - 1
        shingle = first
        n_blocks = 0
        n_long = 0
        while d < n_docs:
            w0, n_words = doc_words[d], doc_words[d + 1] - doc_words[d]
            span = ngram if n_words >= ngram else n_words  # short text: one shingle of it all
            for i in range(shingle - doc_shingles[d], doc_shingles[d + 1] - doc_shingles[d]):
                if n_blocks == blocks.shape[0] or n_long == long_spans.shape[0]:
                    return n_blocks, n_long
                start = starts[w0 + i] if span > 0 else 0
                length = ends[w0 + i + span - 1] - start if span > 0 else 0
                shingle += 1
                if length > 55:
                    long_spans[n_long, 0] = d
                    long_spans[n_long, 1] = start
                    long_spans[n_long, 2] = start + length
                    n_long += 1
                    continue
                for k in range(length):  # indexing, not slicing: views cost reference counts
                    blocks[n_blocks, k] = norm[start + k]
                blocks[n_blocks, length] = 0x80
                for k in range(length + 1, 62):
                    blocks[n_blocks, k] = 0
                blocks[n_blocks, 62] = (length * 8) >> 8
                blocks[n_blocks, 63] = (length * 8) & 0xFF
                owner[n_blocks] = d
                n_blocks += 1
            d += 1
        return n_blocks, n_long

    @_jit
    def _sha1_step(a, b, c, d, e, wt, phase):  # noqa: ANN001, ANN202
        """One SHA-1 round: the new ``e`` and the rotated ``b`` (callers rotate the roles)."""
        if phase == 0:
            f, k = _u32((b & c) | (~b & d)), _K0
        elif phase == 1:
            f, k = _u32(b ^ c ^ d), _K1
        elif phase == 2:
            f, k = _u32((b & c) | (b & d) | (c & d)), _K2
        else:
            f, k = _u32(b ^ c ^ d), _K3
        return _u32(e + _u32((a << 5) | (a >> 27)) + f + k + wt), _u32((b << 30) | (b >> 2))

    @_jit
    def _lane_phase(s, w, first, phase):  # noqa: ANN001, ANN202
        """Twenty SHA-1 rounds in every lane; five per pass, after which the roles are back."""
        for t in range(first, first + 20, 5):
            for lane in range(_LANES):
                a, b, c, d, e = s[0, lane], s[1, lane], s[2, lane], s[3, lane], s[4, lane]
                e, b = _sha1_step(a, b, c, d, e, w[t, lane], phase)
                d, a = _sha1_step(e, a, b, c, d, w[t + 1, lane], phase)
                c, e = _sha1_step(d, e, a, b, c, w[t + 2, lane], phase)
                b, d = _sha1_step(c, d, e, a, b, w[t + 3, lane], phase)
                a, c = _sha1_step(b, c, d, e, a, w[t + 4, lane], phase)
                s[0, lane], s[1, lane], s[2, lane], s[3, lane], s[4, lane] = a, b, c, d, e

    @_jit
    def _sha1_blocks(blocks: np.ndarray, count: int, out: np.ndarray) -> None:
        """``sha1_hash32`` of ``blocks[:count]``, each one padded 64-byte block, in lanes.

        ``blocks`` has a multiple of :data:`_LANES` rows; rows past ``count`` are hashed too
        (stale or zero bytes) and their results ignored.
        """
        w = np.empty((80, _LANES), dtype=np.uint32)
        s = np.empty((5, _LANES), dtype=np.uint32)
        for g in range(0, count, _LANES):
            for t in range(16):
                for lane in range(_LANES):
                    r = g + lane
                    w[t, lane] = _u32(
                        (_u32(blocks[r, 4 * t]) << 24)
                        | (_u32(blocks[r, 4 * t + 1]) << 16)
                        | (_u32(blocks[r, 4 * t + 2]) << 8)
                        | _u32(blocks[r, 4 * t + 3])
                    )
            for t in range(16, 80):
                for lane in range(_LANES):
                    x = w[t - 3, lane] ^ w[t - 8, lane] ^ w[t - 14, lane] ^ w[t - 16, lane]
                    w[t, lane] = _u32((x << 1) | (x >> 31))
            for lane in range(_LANES):
                s[0, lane], s[1, lane], s[2, lane] = _H0, _H1, _H2
                s[3, lane], s[4, lane] = _H3, _H4
            _lane_phase(s, w, 0, 0)
            _lane_phase(s, w, 20, 1)
            _lane_phase(s, w, 40, 2)
            _lane_phase(s, w, 60, 3)
            for lane in range(_LANES):
                h0 = _u32(_H0 + s[0, lane])  # first 4 digest bytes (big-endian), read LE
                out[g + lane] = _u32(
                    (h0 << 24) | ((h0 >> 8) & 0xFF) << 16 | ((h0 >> 16) & 0xFF) << 8 | (h0 >> 24)
                )

    @_jit
    def _permute_min(
        sig: np.ndarray,
        owner: np.ndarray,
        hashes: np.ndarray,
        count: int,
        a: np.ndarray,
        b: np.ndarray,
        legacy: bool,
    ) -> None:
        """Lower ``sig[owner[q]]`` to the permuted values of ``hashes[q]`` (datasketch's update)."""
        num_perm = sig.shape[1]
        if legacy:  # (a*h + b) mod 2^64 (numpy's wraparound), mod 2^61-1, low 32 bits
            for q in range(count):
                d, h = owner[q], _u64(hashes[q])
                for k in range(num_perm):
                    x = a[k] * h + b[k]
                    r = (x & _P61) + (x >> _S61)
                    r = r - _P61 if r >= _P61 else r
                    v = _u32(r & _M32)
                    sig[d, k] = v if v < sig[d, k] else sig[d, k]
        else:  # MurmurHash3's finalizer, then a*h + b mod 2^32 (a, b below 2^32)
            a32, b32 = a.astype(np.uint32), b.astype(np.uint32)
            for q in range(count):
                d, h = owner[q], hashes[q]
                h = _u32(h ^ (h >> 16))
                h = _u32(h * _FM1)
                h = _u32(h ^ (h >> 13))
                h = _u32(h * _FM2)
                h = _u32(h ^ (h >> 16))
                for k in range(num_perm):
                    v = _u32(a32[k] * h + b32[k])
                    sig[d, k] = v if v < sig[d, k] else sig[d, k]


def _signatures_compiled(texts: Sequence[str], params: DedupParams) -> np.ndarray:
    """Signatures through the numba kernels, batch by batch of documents."""
    a, b = _permutations(params.num_perm, params.seed, params.scheme)
    legacy = params.scheme == "legacy"
    out = np.empty((len(texts), params.num_perm), dtype=np.uint64)
    blocks = np.zeros((BLOCKS_PER_STEP, 64), dtype=np.uint8)
    owner = np.empty(BLOCKS_PER_STEP, dtype=np.int64)
    long_spans = np.empty((BLOCKS_PER_STEP, 3), dtype=np.int64)
    hashes = np.empty(BLOCKS_PER_STEP, dtype=np.uint32)
    for lo, hi in _batches(texts):
        buf, offsets, unicode = _prepare(texts[lo:hi])
        table = _unicode_word_table() if unicode else _NO_UNICODE
        norm, starts, ends, doc_words = _split_words(buf, offsets, _ASCII_WORDS, table)
        n_words = np.diff(doc_words)
        doc_shingles = np.zeros(hi - lo + 1, dtype=np.int64)
        np.cumsum(np.maximum(n_words - params.ngram + 1, 1), out=doc_shingles[1:])
        sig = np.full((hi - lo, params.num_perm), MAX_HASH, dtype=np.uint32)
        norm_bytes = b""
        done = 0
        while done < doc_shingles[-1]:
            n_blocks, n_long = _fill_blocks(
                norm,
                starts,
                ends,
                doc_words,
                doc_shingles,
                params.ngram,
                done,
                blocks,
                owner,
                long_spans,
            )
            done += n_blocks + n_long
            _sha1_blocks(blocks, n_blocks, hashes)
            _permute_min(sig, owner, hashes, n_blocks, a, b, legacy)
            if n_long:  # more than one SHA-1 block (rare): hashlib does these
                norm_bytes = norm_bytes or norm.tobytes()
                spans = long_spans[:n_long]
                hashes[:n_long] = [
                    _sha1_hash32_reference(norm_bytes[s:e]) for s, e in spans[:, 1:].tolist()
                ]
                _permute_min(sig, spans[:, 0].copy(), hashes, n_long, a, b, legacy)
        out[lo:hi] = sig
    return out


def _batches(texts: Sequence[str]) -> Iterable[tuple[int, int]]:
    """Consecutive ``(lo, hi)`` ranges of at most :data:`BATCH_DOCS` docs / BATCH_CHARS chars."""
    lo, chars = 0, 0
    for i, text in enumerate(texts):
        chars += len(text)
        if i + 1 - lo >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield lo, i + 1
            lo, chars = i + 1, 0
    if lo < len(texts):
        yield lo, len(texts)


def compute_signatures(ids: Sequence[str], texts: Sequence[str], params: DedupParams) -> np.ndarray:
    """MinHash signatures, shape ``(len(texts), num_perm)``, uint64 values below 2^32.

    Row ``i`` equals ``datasketch.MinHash(num_perm, seed, scheme=params.scheme)`` updated with
    ``shingles(texts[i], params.ngram)``. ``ids`` are only checked (same length, unique).
    """
    _check_ids(ids, len(texts))
    if numba is None:
        return _signatures_reference(texts, params)
    return _signatures_compiled(texts, params)


def signatures(ids: Sequence[str], texts: Sequence[str], params: DedupParams) -> dict:
    """Signatures as ``datasketch.LeanMinHash`` objects keyed by id, for datasketch users."""
    from datasketch import LeanMinHash

    sigs = compute_signatures(ids, texts, params)
    return {
        doc_id: LeanMinHash(seed=params.seed, hashvalues=row, scheme=params.scheme)
        for doc_id, row in zip(ids, sigs, strict=True)
    }


# ---------------------------------------------------------------- signature cache


def save_signatures(
    path: Path, ids: Sequence[str], sigs: np.ndarray, params: DedupParams, key: str = ""
) -> None:
    """Write one shard's signatures atomically as ``.npz``, stamped with what makes them valid.

    The stamp is the params' :meth:`DedupParams.signature_fingerprint` plus ``key``, a string
    that identifies the shard's content (e.g. its file digest), so either change is detected.
    """
    sigs = np.asarray(sigs)
    if sigs.shape != (len(ids), params.num_perm):
        raise ValueError(f"signatures of shape {sigs.shape} for {len(ids)} ids")
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            ids=np.array(list(ids), dtype=np.str_),
            sigs=sigs.astype(np.uint32),  # every value is below 2^32: half the bytes
            fingerprint=np.array(params.signature_fingerprint()),
            key=np.array(key),
        )


def load_signatures(
    path: Path, params: DedupParams, key: str | None = None
) -> tuple[list[str], np.ndarray] | None:
    """A shard's cached ``(ids, signatures)``, or None if missing, unreadable or stale.

    Stale means written for other signature-shaping params, or (when ``key`` is given) for
    other shard content.
    """
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            if str(data["fingerprint"]) != params.signature_fingerprint():
                return None
            if key is not None and str(data["key"]) != key:
                return None
            ids = data["ids"].tolist()
            sigs = data["sigs"].astype(np.uint64)
    except (FileNotFoundError, KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None
    if sigs.shape != (len(ids), params.num_perm):
        return None
    return ids, sigs


def shard_signatures(
    path: Path,
    params: DedupParams,
    read: Callable[[], tuple[Sequence[str], Sequence[str]]],
    key: str = "",
) -> tuple[list[str], np.ndarray, bool]:
    """``(ids, signatures, computed)`` of one shard: from its cache when fresh, else computed.

    ``read`` returns the shard's ``(ids, texts)`` and is called only on a cache miss; the new
    signatures are then saved to ``path``.
    """
    cached = load_signatures(path, params, key)
    if cached is not None:
        return cached[0], cached[1], False
    ids, texts = read()
    sigs = compute_signatures(ids, texts, params)
    save_signatures(path, ids, sigs, params, key)
    return list(ids), sigs, True


# ---------------------------------------------------------------- LSH and clusters


def _row_keys(rows: np.ndarray) -> np.ndarray:
    """A 64-bit mix of each row's values (equal rows, equal keys; collisions checked later)."""
    key = np.full(rows.shape[0], 0x9E3779B97F4A7C15, dtype=np.uint64)
    for col in range(rows.shape[1]):
        key = (key ^ rows[:, col]) * np.uint64(0xBF58476D1CE4E5B9)
        key ^= key >> np.uint64(31)
    return key


def _equal_row_groups(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, starts)``: row indices grouped by identical content, and where groups begin.

    Groups come from sorting 64-bit keys; a key collision between different rows (which would
    merge them) is detected and resolved exactly with ``np.unique``.
    """
    keys = _row_keys(rows)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    firsts = np.repeat(order[starts], np.diff(np.r_[starts, len(order)]))
    if not np.array_equal(rows[order], rows[firsts]):  # a collision: exact grouping instead
        _, inverse = np.unique(rows, axis=0, return_inverse=True)
        order = np.argsort(inverse.ravel(), kind="stable")
        grouped = inverse.ravel()[order]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    return order, starts


def _pairs_within_groups(order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, of indices that share a group, as an ``(m, 2)`` array."""
    sizes = np.diff(np.r_[starts, len(order)])
    multi = sizes >= 2
    if not multi.any():
        return np.empty((0, 2), dtype=np.int64)
    g_start, g_size = starts[multi], sizes[multi]
    pos = np.repeat(g_start, g_size) + _ranges(g_size)  # positions of members in `order`
    later = np.repeat(g_start + g_size, g_size) - pos - 1  # members after each position
    first = np.repeat(pos, later)
    second = first + 1 + _ranges(later)
    a, b = order[first], order[second]
    return np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(k)`` for each ``k`` in ``lengths``."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    block_starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - block_starts


def _band_candidates(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Unique pairs ``(i, j)``, ``i < j``, that fall in the same bucket of at least one band."""
    n = sigs.shape[0]
    found = []
    for band in range(bands):
        order, starts = _equal_row_groups(sigs[:, band * rows : (band + 1) * rows])
        pairs = _pairs_within_groups(order, starts)
        if len(pairs):
            found.append(pairs[:, 0] * n + pairs[:, 1])
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // n, codes % n], axis=1)


def _agreement(sigs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Number of equal signature values of each pair (estimated Jaccard times num_perm)."""
    agree = np.empty(len(pairs), dtype=np.int64)
    for s in range(0, len(pairs), _VERIFY_CHUNK):
        chunk = pairs[s : s + _VERIFY_CHUNK]
        agree[s : s + len(chunk)] = (sigs[chunk[:, 0]] == sigs[chunk[:, 1]]).sum(axis=1)
    return agree


def find_duplicates_from_signatures(
    ids: Sequence[str], signatures: np.ndarray, params: DedupParams
) -> DedupResult:
    """Cluster near-duplicates from precomputed signatures; keep the smallest id of each cluster.

    Documents with identical signatures are merged first (they share every bucket and estimate
    Jaccard 1.0); the LSH runs on one representative of each. Pair counts still count
    document pairs, as a datasketch index queried with every document would.
    """
    sigs = np.asarray(signatures)
    n = len(ids)
    _check_ids(ids, sigs.shape[0], "signatures")
    if sigs.ndim != 2 or sigs.shape[1] != params.num_perm:
        raise ValueError(f"signatures of shape {sigs.shape}, expected (n, {params.num_perm})")
    if n == 0:
        return DedupResult(n_docs=0)
    bands, rows = params.lsh_params()

    order, starts = _equal_row_groups(sigs)
    sizes = np.diff(np.r_[starts, n])
    reps = order[starts]  # one document per distinct signature
    group = np.empty(n, dtype=np.int64)
    group[order] = np.repeat(np.arange(len(starts)), sizes)
    same_sig_pairs = int((sizes * (sizes - 1) // 2).sum())

    cand = _band_candidates(sigs[reps], bands, rows)  # indices into reps
    weight = sizes[cand[:, 0]] * sizes[cand[:, 1]]  # document pairs each stands for
    if params.verify and len(cand):
        est = _agreement(sigs[reps], cand) / params.num_perm  # datasketch's jaccard()
        ok = est >= params.threshold
    else:
        ok = np.ones(len(cand), dtype=bool)
    verified = cand[ok]

    edges_a = np.concatenate([order, reps[verified[:, 0]]])
    edges_b = np.concatenate([reps[group[order]], reps[verified[:, 1]]])
    graph = sparse.coo_matrix((np.ones(len(edges_a), dtype=np.int8), (edges_a, edges_b)), (n, n))
    _, labels = connected_components(graph, directed=False)

    by_id = sorted(range(n), key=ids.__getitem__)
    rank = np.empty(n, dtype=np.int64)
    rank[by_id] = np.arange(n)
    first_rank = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first_rank, labels, rank)
    comp_size = np.bincount(labels)

    result = DedupResult(
        n_docs=n,
        n_candidate_pairs=same_sig_pairs + int(weight.sum()),
        n_verified_pairs=same_sig_pairs + int(weight[ok].sum()),
    )
    for i in by_id:
        label = labels[i]
        if comp_size[label] < 2:
            continue
        doc_id, kept = ids[i], ids[by_id[first_rank[label]]]
        result.clusters[doc_id] = kept
        if doc_id != kept:
            result.drop.add(doc_id)
            result.keep_of[doc_id] = kept
    return result


def find_duplicates(ids: Sequence[str], texts: Sequence[str], params: DedupParams) -> DedupResult:
    """Cluster near-duplicates with MinHash LSH and keep the smallest id of each cluster."""
    return find_duplicates_from_signatures(ids, compute_signatures(ids, texts, params), params)


# ---------------------------------------------------------------- exact duplicates


class _UnionFind:
    """Disjoint sets whose representative is always the smallest member."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo
            self.parent.setdefault(lo, lo)


def _result_from_pairs(
    ids: Iterable[str], pairs: Iterable[tuple[str, str]], n_docs: int
) -> DedupResult:
    uf = _UnionFind()
    for a, b in pairs:
        uf.union(a, b)
    result = DedupResult(n_docs=n_docs)
    for doc_id in sorted(ids):
        if doc_id not in uf.parent:
            continue
        kept = uf.find(doc_id)
        result.clusters[doc_id] = kept
        if doc_id != kept:
            result.drop.add(doc_id)
            result.keep_of[doc_id] = kept
    return result


def normalized_hash(text: str, lowercase: bool = True) -> bytes:
    """Digest of NFKC text, lowercased, whitespace collapsed: equal for trivial variants."""
    norm = unicodedata.normalize("NFKC", text)
    norm = _SPACE.sub(" ", norm.lower() if lowercase else norm).strip()
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest()


def exact_duplicates(ids: Sequence[str], texts: Sequence[str]) -> DedupResult:
    """Group documents whose normalized text is identical; keep the smallest id of each group."""
    _check_ids(ids, len(texts))
    first: dict[bytes, str] = {}
    pairs: list[tuple[str, str]] = []
    for doc_id, text in sorted(zip(ids, texts, strict=True)):
        digest = normalized_hash(text)
        if digest in first:
            pairs.append((first[digest], doc_id))
        else:
            first[digest] = doc_id
    result = _result_from_pairs(ids, pairs, len(ids))
    result.n_candidate_pairs = result.n_verified_pairs = len(pairs)
    return result
