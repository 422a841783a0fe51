"""Incremental dedup: new documents are decided against a frozen index of earlier decisions.

A recipe's dedup index is every document already decided, with its exact-text digest, its
MinHash signature and its status (kept, or dropped in favour of a survivor). A batch of new
documents is decided in two passes, as a from-scratch run decides everything:

1. exact: a new document whose normalized text equals an indexed one is dropped in favour of
   that document's survivor; among new documents with the same text the smallest key survives;
2. near: connected components of the LSH graph over the indexed documents (those not exact
   duplicates) and the remaining new ones; a component that holds indexed documents keeps their
   survivor and drops every new member; a component of new documents only keeps its smallest key.

Indexed decisions never change, so adding documents never flips a decision about an existing
one ("existing survivors stay"). With an empty index the result is exactly the global
clustering of :func:`corpuslab.dedup.lsh.find_duplicates_from_signatures` after
:func:`corpuslab.dedup.exact.exact_duplicates`, so a full recompute equals a from-scratch build.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from corpuslab.dedup.lsh import Components, near_components
from corpuslab.dedup.params import DedupParams, check_ids

KEPT = "kept"
EXACT = "exact_duplicate"
NEAR = "near_duplicate"


# (rows of the index, rows of the batch) -> components over those rows, index rows first. The
# index's and the batch's signatures live with the caller: in memory, or per-shard caches
# banded one band at a time (:func:`corpuslab.dedup.banded.banded_components`).
NearComponents = Callable[[np.ndarray, np.ndarray], Components]


@dataclass
class Index:
    """Documents already decided: key, exact digest, status and survivor (signatures: caller)."""

    keys: list[str] = field(default_factory=list)
    exact: list[bytes] = field(default_factory=list)
    status: list[str] = field(default_factory=list)  # KEPT, EXACT or NEAR
    survivor: list[str] = field(default_factory=list)  # the key that stands for the document

    def __len__(self) -> int:
        return len(self.keys)


def in_memory(
    index_signatures: np.ndarray, signatures: np.ndarray, params: DedupParams
) -> NearComponents:
    """Near components over signatures held in memory (index rows first, then the batch's)."""

    def near(index_rows: np.ndarray, rows: np.ndarray) -> Components:
        stacked = np.concatenate(
            [np.asarray(index_signatures)[index_rows], np.asarray(signatures)[rows]]
        ).astype(np.uint64)
        return near_components(stacked.reshape(-1, params.num_perm), params)

    return near


@dataclass
class Decisions:
    """The batch's decisions, aligned with its keys, and the pair counts of its LSH pass."""

    keys: list[str]
    exact: list[bytes]
    status: list[str]
    survivor: list[str]
    n_candidate_pairs: int = 0
    n_verified_pairs: int = 0

    def dropped(self) -> int:
        return sum(s != KEPT for s in self.status)


def decide(
    index: Index, keys: Sequence[str], digests: Sequence[bytes], near: NearComponents
) -> Decisions:
    """Decide the new documents ``keys`` against ``index`` (see the module docstring).

    ``digests`` are the documents' :func:`~corpuslab.dedup.exact.normalized_hash`; ``near``
    gives the near-duplicate components of chosen index rows and batch rows.
    """
    check_ids(keys, len(digests))
    overlap = set(keys) & set(index.keys)
    if overlap:
        raise ValueError(f"documents already in the dedup index: {sorted(overlap)[:5]}")
    n = len(keys)
    digests = list(digests)
    status = [KEPT] * n
    survivor = list(keys)

    # exact: against the index first, then among the new documents (smallest key first)
    known: dict[bytes, str] = {}
    for h, s in zip(index.exact, index.survivor, strict=True):
        known[h] = min(known.get(h, s), s)
    first: dict[bytes, int] = {}
    for i in sorted(range(n), key=keys.__getitem__):
        h = digests[i]
        if h in known:
            status[i], survivor[i] = EXACT, known[h]
        elif h in first:
            status[i], survivor[i] = EXACT, keys[first[h]]
        else:
            first[h] = i

    # near: components over indexed documents (not exact duplicates) and the remaining new ones
    idx_nodes = [j for j, s in enumerate(index.status) if s != EXACT]
    new_nodes = [i for i in range(n) if status[i] == KEPT]
    comps = near(np.asarray(idx_nodes, dtype=np.int64), np.asarray(new_nodes, dtype=np.int64))
    labels = comps.labels
    m = len(idx_nodes)
    frozen: dict[int, str] = {}  # component -> the survivor its indexed members stand for
    for pos, j in enumerate(idx_nodes):
        label = int(labels[pos])
        frozen[label] = min(frozen.get(label, index.survivor[j]), index.survivor[j])
    smallest: dict[int, int] = {}  # component of new documents only -> its smallest-key member
    for pos, i in enumerate(new_nodes):
        label = int(labels[m + pos])
        if label in frozen:
            status[i], survivor[i] = NEAR, frozen[label]
        elif label not in smallest or keys[i] < keys[smallest[label]]:
            smallest[label] = i
    for pos, i in enumerate(new_nodes):
        label = int(labels[m + pos])
        if label in smallest and smallest[label] != i:
            status[i], survivor[i] = NEAR, keys[smallest[label]]

    # an exact duplicate's survivor may itself have become a near duplicate: follow it
    final = {keys[i]: survivor[i] for i in range(n)}
    for i in range(n):
        if status[i] == EXACT:
            s = survivor[i]
            while s in final and final[s] != s:
                s = final[s]
            survivor[i] = s
    return Decisions(
        keys=list(keys),
        exact=digests,
        status=status,
        survivor=survivor,
        n_candidate_pairs=comps.n_candidate_pairs,
        n_verified_pairs=comps.n_verified_pairs,
    )
