"""MinHash-LSH settings, datasketch's optimal banding, and the result of a dedup pass."""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, model_validator
from scipy.integrate import quad

from corpuslab.strict import Strict

# Bump when shingling or hashing changes, so cached signatures of older code count as stale.
SIGNATURE_VERSION = 1


class DedupParams(Strict):
    """Settings of MinHash near-dedup; every threshold is an argument, none is hidden."""

    ngram: int = Field(default=5, ge=1, description="words per shingle")
    num_perm: int = Field(default=128, ge=2, description="MinHash permutations (signature length)")
    threshold: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Jaccard similarity of duplicates"
    )
    bands: int | None = Field(
        default=None, ge=2, description="LSH bands; with rows, overrides optimum"
    )
    rows: int | None = Field(default=None, ge=1, description="rows per LSH band")
    seed: int = Field(default=1, ge=0, description="seed of the MinHash permutations")
    verify: bool = Field(
        default=True, description="drop LSH candidates whose estimated Jaccard is below threshold"
    )
    scheme: Literal["affine32", "legacy"] = Field(
        default="affine32",
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


def check_ids(ids: Sequence[str], n: int, what: str = "texts") -> None:
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} ids but {n} {what}")
    if len(set(ids)) != len(ids):
        dups = sorted(i for i, c in Counter(ids).items() if c > 1)
        raise ValueError(f"ids must be unique; repeated: {dups[:5]}")
