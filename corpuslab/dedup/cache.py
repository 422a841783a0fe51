"""Per-shard signature cache: computed once per pool shard, reused while it is unchanged."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from corpuslab.dedup.minhash import compute_signatures
from corpuslab.dedup.params import DedupParams
from corpuslab.fileio import atomic_path, pack_strings, unpack_strings


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
        id_bytes, id_offsets = pack_strings(ids)  # numpy's str arrays drop trailing NULs
        np.savez(
            fh,
            id_bytes=id_bytes,
            id_offsets=id_offsets,
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
            ids = unpack_strings(data["id_bytes"], data["id_offsets"]).tolist()
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


def cached_signatures(
    cache_dir: Path,
    params: DedupParams,
    shards: Iterable[tuple[str, str, Callable[[], tuple[Sequence[str], Sequence[str]]]]],
) -> tuple[np.ndarray, int, int]:
    """Signatures of many shards, stacked in order: ``(signatures, computed, reused)``.

    Each shard is ``(name, key, read)``: its cache file is ``cache_dir / f"{name}.npz"``,
    ``key`` identifies its content and ``read`` gives its ``(ids, texts)`` on a miss. Entries of
    shards no longer listed are removed, so the cache holds exactly the current shards.
    """
    parts, computed, wanted = [], 0, set()
    for name, key, read in shards:
        path = cache_dir / f"{name}.npz"
        wanted.add(path)
        _, sigs, fresh = shard_signatures(path, params, read, key=key)
        computed += fresh
        parts.append(sigs)
    for stale in cache_dir.glob("**/*.npz"):
        if stale not in wanted:
            stale.unlink()
    stacked = np.concatenate(parts) if parts else np.zeros((0, params.num_perm), np.uint64)
    return stacked, computed, len(parts) - computed
