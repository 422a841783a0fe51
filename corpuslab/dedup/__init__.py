"""Near-duplicate and exact-duplicate detection across a recipe's shards.

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
cached per shard by :func:`shard_signatures`) and :func:`find_duplicates_from_signatures`
(across all shards). Candidate pairs are documents sharing a band bucket, optionally verified
by estimated Jaccard; clusters are connected components; each keeps the document with the
smallest id, so the result never depends on input order.

Modules: ``params`` (settings, result), ``minhash`` (signature kernels), ``cache`` (per-shard
signature cache), ``lsh`` (banding, verification, components, in memory), ``banded`` (the same
over the cache one band at a time, bounded memory) and ``exact`` (normalized digests).
"""

from corpuslab.dedup.banded import SignatureShard, find_duplicates_banded
from corpuslab.dedup.cache import cached_signatures, shard_signatures
from corpuslab.dedup.exact import exact_duplicates, exact_duplicates_from_digests, normalized_hash
from corpuslab.dedup.lsh import find_duplicates_from_signatures
from corpuslab.dedup.minhash import compute_signatures, shingles
from corpuslab.dedup.params import DedupParams, DedupResult, optimal_lsh_params

__all__ = [
    "DedupParams",
    "DedupResult",
    "SignatureShard",
    "cached_signatures",
    "compute_signatures",
    "exact_duplicates",
    "exact_duplicates_from_digests",
    "find_duplicates_banded",
    "find_duplicates_from_signatures",
    "normalized_hash",
    "optimal_lsh_params",
    "shard_signatures",
    "shingles",
]
