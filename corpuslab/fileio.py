"""File I/O every stage shares: atomic writes, JSON, Parquet, and the one content digest.

A killed step never leaves a half-written file under its final name (everything is written
beside it and renamed into place), and every data version, cache key and model version is the
same :func:`digest` of file contents.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DIGEST_CHARS = 16  # hex characters of a content digest (64 bits)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` and rename it into place only on success.

    A killed step therefore never leaves a half-written file under the final name.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are shared files
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Like :func:`atomic_path` for a whole directory: built aside, swapped in at the end."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if final.exists():
            # a fresh name: a fixed ".old" sibling could be something this never wrote
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, old)  # onto the empty folder just made
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock`` (created if missing): one writer at a time of a
    shared file or folder (a dedup index, ``stats.duckdb``) across processes of this host."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def digest(*paths: Path) -> str:
    """SHA-256 of the files' contents, in order (hex, 16 characters).

    The data version of every output, the key of every cache entry and the version of every
    model: an unchanged output keeps its descendants fresh, a changed one stales them.
    """
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:DIGEST_CHARS]


def write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    """Read a stage's JSON output; a missing file names the upstream to materialize."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: materialize its upstream asset first")
    return json.loads(path.read_text(encoding="utf-8"))


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write a table atomically (zstd-compressed)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """Read a stage's Parquet output; a missing file names the upstream to materialize."""
    if not path.exists():
        raise FileNotFoundError(f"expected shard {path} is missing: materialize its upstream asset")
    return pq.read_table(path, columns=columns)


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> None:
    """Write records as JSONL atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def pack_strings(strings: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as (UTF-8 bytes, int64 offsets) for an ``.npz`` without pickle.

    numpy's own string arrays drop trailing NUL characters (``"a\\0"`` comes back as ``"a"``),
    so two document ids that differ only there would collide in a cache.
    """
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def unpack_strings(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The strings of :func:`pack_strings` as an object array (fancy indexing still works)."""
    raw = data.tobytes()
    out = np.empty(len(offsets) - 1, dtype=object)
    out[:] = [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return out
