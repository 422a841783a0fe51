"""Exact duplicates: NFKC-normalized text digests, grouped with union-find."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

from corpuslab.dedup.params import DedupResult, check_ids

_SPACE = re.compile(r"\s+")


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
    check_ids(ids, len(texts))
    return exact_duplicates_from_digests(ids, [normalized_hash(t) for t in texts])


def exact_duplicates_from_digests(ids: Sequence[str], digests: Sequence[bytes]) -> DedupResult:
    """:func:`exact_duplicates` from each document's :func:`normalized_hash`, computed elsewhere
    (per shard, in parallel), so the texts never need to be in memory together."""
    check_ids(ids, len(digests), "digests")
    first: dict[bytes, str] = {}
    pairs: list[tuple[str, str]] = []
    for doc_id, digest in sorted(zip(ids, digests, strict=True)):
        if digest in first:
            pairs.append((first[digest], doc_id))
        else:
            first[digest] = doc_id
    result = _result_from_pairs(ids, pairs, len(ids))
    result.n_candidate_pairs = result.n_verified_pairs = len(pairs)
    return result
