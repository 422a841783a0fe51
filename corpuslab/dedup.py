"""Near-duplicate and exact-duplicate detection over documents.

MinHash over lowercased word n-gram shingles with banded LSH (datasketch), as in DCLM-style
fuzzy dedup. LSH with ``b`` bands of ``r`` rows accepts a pair of Jaccard similarity ``s`` with
probability ``1 - (1 - s^r)^b``; the S-curve's midpoint is about ``(1/b)^(1/r)``. Reference
settings: datatrove 14 x 8 (midpoint ~0.72), NeMo Curator 20 x 13 at 0.8. By default the bands
and rows are datasketch's optimum for ``threshold`` (equal false-positive/negative weights).

Candidate pairs become clusters through connected components (union-find); each cluster keeps
exactly one document, the one with the smallest id, so the result never depends on input order.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from datasketch import LeanMinHash, MinHash, MinHashLSH
from pydantic import BaseModel, ConfigDict, Field, model_validator

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


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
        lsh = _lsh(self)
        return lsh.b, lsh.r


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


def _check_ids(ids: Sequence[str], texts: Sequence[str]) -> None:
    if len(ids) != len(texts):
        raise ValueError(f"got {len(ids)} ids but {len(texts)} texts")
    if len(set(ids)) != len(ids):
        dups = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise ValueError(f"ids must be unique; repeated: {dups[:5]}")


def signatures(
    ids: Sequence[str], texts: Sequence[str], params: DedupParams
) -> dict[str, LeanMinHash]:
    """MinHash signature of every document, keyed by id (compact, immutable LeanMinHash)."""
    _check_ids(ids, texts)
    sets = (shingles(t, params.ngram) for t in texts)
    minhashes = MinHash.generator(sets, num_perm=params.num_perm, seed=params.seed)
    return {doc_id: LeanMinHash(m) for doc_id, m in zip(ids, minhashes, strict=True)}


def _lsh(params: DedupParams) -> MinHashLSH:
    bands_rows = (params.bands, params.rows) if params.bands is not None else None
    return MinHashLSH(threshold=params.threshold, num_perm=params.num_perm, params=bands_rows)


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


def find_duplicates(ids: Sequence[str], texts: Sequence[str], params: DedupParams) -> DedupResult:
    """Cluster near-duplicates with MinHash LSH and keep the smallest id of each cluster."""
    sigs = signatures(ids, texts, params)
    lsh = _lsh(params)
    order = sorted(sigs)
    with lsh.insertion_session() as session:
        for doc_id in order:
            session.insert(doc_id, sigs[doc_id], check_duplication=False)
    candidates: set[tuple[str, str]] = set()
    for doc_id in order:
        for other in lsh.query(sigs[doc_id]):
            if other != doc_id:
                candidates.add((doc_id, other) if doc_id < other else (other, doc_id))
    if params.verify:
        pairs = sorted(
            (a, b) for a, b in candidates if sigs[a].jaccard(sigs[b]) >= params.threshold
        )
    else:
        pairs = sorted(candidates)
    result = _result_from_pairs(order, pairs, len(order))
    result.n_candidate_pairs = len(candidates)
    result.n_verified_pairs = len(pairs)
    return result


def normalized_hash(text: str, lowercase: bool = True) -> bytes:
    """Digest of NFKC text, lowercased, whitespace collapsed: equal for trivial variants."""
    norm = unicodedata.normalize("NFKC", text)
    norm = _SPACE.sub(" ", norm.lower() if lowercase else norm).strip()
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest()


def exact_duplicates(ids: Sequence[str], texts: Sequence[str]) -> DedupResult:
    """Group documents whose normalized text is identical; keep the smallest id of each group."""
    _check_ids(ids, texts)
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
