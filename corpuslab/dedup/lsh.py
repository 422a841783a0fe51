"""Banded LSH over signatures, estimated-Jaccard verification and connected components.

Candidate pairs are documents sharing a band bucket, optionally verified by estimated Jaccard;
clusters are connected components; each keeps the document with the smallest id, so the result
never depends on input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from corpuslab.dedup.params import DedupParams, DedupResult, check_ids

_VERIFY_CHUNK = 1 << 16  # candidate pairs compared per numpy step


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


@dataclass
class Components:
    """Connected components of the verified near-duplicate graph over ``n`` documents."""

    labels: np.ndarray  # component of each document
    n_candidate_pairs: int  # document pairs sharing a band bucket
    n_verified_pairs: int  # of those, pairs whose estimated Jaccard passed the threshold


def near_components(signatures: np.ndarray, params: DedupParams) -> Components:
    """Components of documents linked by LSH candidate pairs (verified when ``params.verify``).

    Documents with identical signatures are merged first (they share every bucket and estimate
    Jaccard 1.0); the LSH runs on one representative of each. Pair counts still count
    document pairs, as a datasketch index queried with every document would.
    """
    sigs = np.asarray(signatures)
    if sigs.ndim != 2 or sigs.shape[1] != params.num_perm:
        raise ValueError(f"signatures of shape {sigs.shape}, expected (n, {params.num_perm})")
    n = sigs.shape[0]
    if n == 0:
        return Components(np.zeros(0, dtype=np.int64), 0, 0)
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
    return Components(
        labels=labels,
        n_candidate_pairs=same_sig_pairs + int(weight.sum()),
        n_verified_pairs=same_sig_pairs + int(weight[ok].sum()),
    )


def find_duplicates_from_signatures(
    ids: Sequence[str], signatures: np.ndarray, params: DedupParams
) -> DedupResult:
    """Cluster near-duplicates from precomputed signatures; keep the smallest id of each cluster."""
    sigs = np.asarray(signatures)
    check_ids(ids, sigs.shape[0], "signatures")
    if len(ids) == 0:
        return DedupResult(n_docs=0)
    comps = near_components(sigs, params)
    return result_from_labels(
        ids,
        comps.labels,
        n_candidate_pairs=comps.n_candidate_pairs,
        n_verified_pairs=comps.n_verified_pairs,
    )


def result_from_labels(
    ids: Sequence[str], labels: np.ndarray, *, n_candidate_pairs: int, n_verified_pairs: int
) -> DedupResult:
    """Clusters from component labels (any numbering): each keeps its smallest id.

    Shared by the in-memory and the banded path, so both build results the same way.
    """
    n = len(ids)
    by_id = sorted(range(n), key=ids.__getitem__)
    rank = np.empty(n, dtype=np.int64)
    rank[by_id] = np.arange(n)
    first_rank = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first_rank, labels, rank)
    comp_size = np.bincount(labels)

    result = DedupResult(
        n_docs=n, n_candidate_pairs=n_candidate_pairs, n_verified_pairs=n_verified_pairs
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
