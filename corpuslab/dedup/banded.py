"""Banded LSH with bounded memory: one band at a time, candidate pairs spilled, components merged.

The in-memory path (:func:`corpuslab.dedup.lsh.find_duplicates_from_signatures`) stacks every
signature, ``n x num_perm x 8`` bytes (1 KiB a document at 128 permutations). This path reads
the per-shard signature cache one shard at a time and writes each band's columns (and the
columns no band uses) to a spill file of uint32, so a pass holds one band of every document:
``n x (rows + 1) x 8`` bytes. Then, as the in-memory path does:

1. documents with identical signatures are grouped (refined chunk by chunk over all columns),
   and the LSH runs on one representative of each group;
2. each band groups the representatives by equal rows; its candidate pairs are written sorted
   to a spill file;
3. the pairs of all bands are merged range by range of pair codes (at most ``max_pairs`` in
   memory), deduplicated, verified by estimated Jaccard (agreements summed chunk by chunk) and
   merged into components with scipy's ``connected_components`` over the current labels (an
   incremental union-find).

The result is identical to the in-memory path's (same groups, same candidate and verified
pairs, same components, and the same :func:`~corpuslab.dedup.lsh.result_from_labels`).
MinHash-LSH banding as in Leskovec, Rajaraman and Ullman, *Mining of Massive Datasets* §3.4.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from corpuslab.dedup.cache import load_signatures
from corpuslab.dedup.lsh import (
    Components,
    _equal_row_groups,
    _pairs_within_groups,
    result_from_labels,
)
from corpuslab.dedup.params import DedupParams, DedupResult, check_ids

MAX_PAIRS = 1 << 24  # candidate pair codes held in memory at once while merging bands


@dataclass(frozen=True)
class SignatureShard:
    """One shard's cached signatures and which of its rows take part (None: all, in order)."""

    path: Path
    rows: np.ndarray | None = None


def _chunks(params: DedupParams) -> list[tuple[int, int]]:
    """Column ranges: one per band, then the columns no band covers (if any)."""
    bands, rows = params.lsh_params()
    out = [(b * rows, (b + 1) * rows) for b in range(bands)]
    if bands * rows < params.num_perm:
        out.append((bands * rows, params.num_perm))
    return out


def _spill_columns(
    shards: Sequence[SignatureShard], params: DedupParams, spill: Path
) -> tuple[list[Path], int]:
    """Write each chunk's columns of the selected rows to its own file; (files, documents)."""
    chunks = _chunks(params)
    files = [spill / f"columns-{i}.u32" for i in range(len(chunks))]
    handles = [open(f, "wb") for f in files]  # noqa: SIM115 - closed below
    n = 0
    try:
        for shard in shards:
            loaded = load_signatures(shard.path, params)
            if loaded is None:
                raise FileNotFoundError(
                    f"{shard.path}: signature cache entry missing or stale; compute it first"
                )
            sigs = loaded[1] if shard.rows is None else loaded[1][shard.rows]
            n += sigs.shape[0]
            for (lo, hi), fh in zip(chunks, handles, strict=True):
                fh.write(np.ascontiguousarray(sigs[:, lo:hi], dtype=np.uint32).tobytes())
            del loaded, sigs
    finally:
        for fh in handles:
            fh.close()
    return files, n


def _read_chunk(path: Path, width: int) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint32).reshape(-1, width)


def _group_identical(files: list[Path], widths: list[int], n: int) -> np.ndarray:
    """Dense group ids of documents whose signatures are equal in every column."""
    group = np.zeros(n, dtype=np.int64)
    for path, width in zip(files, widths, strict=True):
        rows = np.empty((n, width + 1), dtype=np.uint64)
        rows[:, 0] = group
        rows[:, 1:] = _read_chunk(path, width)
        order, starts = _equal_row_groups(rows)
        del rows
        group[order] = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    return group


def _spill_band_pairs(
    path: Path, width: int, reps: np.ndarray, n_reps: int, out: Path
) -> tuple[Path, int]:
    """Sorted unique codes ``a * n_reps + b`` of representative pairs sharing a bucket."""
    band = _read_chunk(path, width)[reps]
    pairs = _pairs_within_groups(*_equal_row_groups(band))
    del band
    codes = np.unique(pairs[:, 0] * n_reps + pairs[:, 1])
    np.save(out, codes)
    return out, len(codes)


def _code_ranges(band_files: list[Path], total: int, max_pairs: int) -> list[tuple[int, int]]:
    """Half-open code ranges each holding at most ``max_pairs`` codes summed over bands.

    Boundaries come from binary search over the sorted, memory-mapped spill files (a range is
    never split inside one code value, so a single value repeated in every band still fits).
    """
    maps = [np.load(f, mmap_mode="r") for f in band_files]
    top = max((int(m[-1]) for m in maps if len(m)), default=-1) + 1

    def count(lo: int, hi: int) -> int:
        return sum(
            int(np.searchsorted(m, hi, "left") - np.searchsorted(m, lo, "left")) for m in maps
        )

    ranges, lo = [], 0
    while lo < top:
        if count(lo, top) <= max_pairs:
            ranges.append((lo, top))
            break
        a, b = lo + 1, top  # largest hi with count(lo, hi) <= max_pairs, at least lo + 1
        while a < b:
            mid = (a + b + 1) // 2
            if count(lo, mid) <= max_pairs:
                a = mid
            else:
                b = mid - 1
        ranges.append((lo, a))
        lo = a
    return ranges


def _merge_range(band_files: list[Path], lo: int, hi: int) -> np.ndarray:
    """The distinct codes in ``[lo, hi)`` over all bands."""
    parts = []
    for f in band_files:
        m = np.load(f, mmap_mode="r")
        a, b = np.searchsorted(m, lo, "left"), np.searchsorted(m, hi, "left")
        parts.append(np.array(m[a:b]))
        del m
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def banded_components(
    shards: Sequence[SignatureShard],
    params: DedupParams,
    spill_dir: Path,
    max_pairs: int = MAX_PAIRS,
) -> Components:
    """:func:`~corpuslab.dedup.lsh.near_components` over cached shards, banded: the labels of
    the selected rows of ``shards``, in order. Spill files go to a temporary folder under
    ``spill_dir`` and are removed afterwards."""
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    chunks = _chunks(params)
    widths = [hi - lo for lo, hi in chunks]
    bands, _ = params.lsh_params()
    spill_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lsh-", dir=spill_dir) as tmp:
        spill = Path(tmp)
        files, n = _spill_columns(shards, params, spill)
        if n == 0:
            return Components(np.zeros(0, dtype=np.int64), 0, 0)
        group = _group_identical(files, widths, n)
        sizes = np.bincount(group)
        n_reps = len(sizes)
        reps = np.full(n_reps, n, dtype=np.int64)
        np.minimum.at(reps, group, np.arange(n, dtype=np.int64))  # first member of each
        same_sig_pairs = int((sizes * (sizes - 1) // 2).sum())

        band_files, total = [], 0
        for b in range(bands):
            f, k = _spill_band_pairs(files[b], widths[b], reps, n_reps, spill / f"band-{b}.npy")
            band_files.append(f)
            total += k

        labels = np.arange(n_reps, dtype=np.int64)  # component of each representative
        n_candidate = n_verified = same_sig_pairs
        for lo, hi in _code_ranges(band_files, total, max_pairs):
            codes = _merge_range(band_files, lo, hi)
            a, b = codes // n_reps, codes % n_reps
            del codes
            weight = sizes[a] * sizes[b]  # document pairs each stands for
            if params.verify and len(a):
                agree = np.zeros(len(a), dtype=np.int64)
                for path, width in zip(files, widths, strict=True):
                    chunk = _read_chunk(path, width)
                    agree += (chunk[reps[a]] == chunk[reps[b]]).sum(axis=1)
                    del chunk
                ok = agree / params.num_perm >= params.threshold  # datasketch's jaccard()
            else:
                ok = np.ones(len(a), dtype=bool)
            n_candidate += int(weight.sum())
            n_verified += int(weight[ok].sum())
            if ok.any():
                la, lb = labels[a[ok]], labels[b[ok]]
                graph = sparse.coo_matrix(
                    (np.ones(len(la), dtype=np.int8), (la, lb)), (n_reps, n_reps)
                )
                _, comp = connected_components(graph, directed=False)
                labels = comp[labels]
    return Components(labels[group], n_candidate, n_verified)


def find_duplicates_banded(
    ids: Sequence[str],
    shards: Sequence[SignatureShard],
    params: DedupParams,
    spill_dir: Path,
    max_pairs: int = MAX_PAIRS,
) -> DedupResult:
    """:func:`~corpuslab.dedup.lsh.find_duplicates_from_signatures` over cached shards, banded.

    ``ids`` name the selected rows of ``shards`` in order.
    """
    comps = banded_components(shards, params, spill_dir, max_pairs)
    check_ids(ids, len(comps.labels), "signatures")
    if not len(ids):
        return DedupResult(n_docs=0)
    return result_from_labels(
        ids,
        comps.labels,
        n_candidate_pairs=comps.n_candidate_pairs,
        n_verified_pairs=comps.n_verified_pairs,
    )
