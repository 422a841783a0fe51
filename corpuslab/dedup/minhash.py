"""MinHash signatures bit-identical to datasketch's, from compiled SHA-1 and permutation kernels.

Each shingle's UTF-8 bytes are hashed with SHA-1 (first 4 digest bytes, little-endian), then
permuted either by datasketch's default ``"affine32"`` scheme (MurmurHash3 finalizer, then
``a*h + b mod 2^32``) or its ``"legacy"`` scheme (``a*h + b mod 2^61-1``, truncated to 32 bits).
Word splitting, shingle assembly, SHA-1 (32 shingles side by side, in SIMD lanes) and the
permutation minimum are compiled with numba and run over batches of documents; without numba the
same values come from a slower numpy/hashlib path (:func:`_signatures_reference`, datasketch's
own algorithm). One coherent piece: the kernels share their tables and buffers.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

from corpuslab.dedup.params import DedupParams, check_ids

try:  # the compiled kernel; without numba the numpy/hashlib path gives the same values
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is not installed
    numba = None


_WORD = re.compile(r"\w+")
MAX_HASH = (1 << 32) - 1  # datasketch's initial (empty-set) hash value
MERSENNE_PRIME = (1 << 61) - 1
BATCH_DOCS = 4096  # documents per batch of the compiled path (bounds its buffers' memory)
BATCH_CHARS = 1 << 22  # characters per batch, the same
BLOCKS_PER_STEP = 1 << 12  # shingles hashed per kernel step (a multiple of the SIMD lanes)


def normalize_words(text: str) -> list[str]:
    """Lowercased words with punctuation removed, so formatting changes do not break shingles."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def shingles(text: str, ngram: int) -> set[bytes]:
    """The set of word ``ngram``-grams of ``text``; a shorter text is one shingle of itself."""
    words = normalize_words(text)
    if len(words) < ngram:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + ngram]).encode("utf-8") for i in range(len(words) - ngram + 1)}


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
    check_ids(ids, len(texts))
    if numba is None:
        return _signatures_reference(texts, params)
    return _signatures_compiled(texts, params)
