"""The tokenized training set on disk: one definition shared by its producer and the trainer.

A token directory holds ``meta.json``, ``train.bin`` (a raw ``(n_sequences, seq_len + 1)``
array of token ids: inputs are ``row[:-1]``, targets ``row[1:]``; rows already shuffled) and
``train_domains.npy`` (the domain index of each row).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from corpuslab.fileio import atomic_dir

META = "meta.json"
TOKENS = "train.bin"
DOMAINS = "train_domains.npy"
DTYPES = ("uint16", "uint32")


def dtype_for_vocab(vocab_size: int) -> str:
    """The smallest supported unsigned dtype that holds every id below ``vocab_size``."""
    if vocab_size <= 2**16:
        return "uint16"
    if vocab_size <= 2**32:
        return "uint32"
    raise ValueError(f"vocab_size={vocab_size} does not fit in uint32")


@dataclass(frozen=True)
class TokenMeta:
    """Contents of ``meta.json``."""

    dtype: str
    seq_len: int
    n_sequences: int
    vocab_size: int
    eos_id: int
    domains: list[str]
    tokenizer: str  # absolute path of the tokenizer.json that produced the ids

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"token dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.seq_len < 1 or self.n_sequences < 0 or self.vocab_size < 1:
            raise ValueError(f"invalid token file shape in {self}")
        if not 0 <= self.eos_id < self.vocab_size:
            raise ValueError(f"eos_id={self.eos_id} is outside the vocabulary of {self.vocab_size}")


@dataclass(frozen=True)
class TokenFile:
    """An opened token directory: its metadata and a read-only memmap of the rows."""

    path: Path
    meta: TokenMeta
    tokens: np.memmap  # shape (n_sequences, seq_len + 1)

    @classmethod
    def open(cls, tokens_dir: str | Path) -> TokenFile:
        """Read ``meta.json`` and map ``train.bin``; fail if the file size disagrees with it."""
        path = Path(tokens_dir)
        meta_path = path / META
        if not meta_path.is_file():
            raise FileNotFoundError(f"no {META} in token directory {path}")
        meta = TokenMeta(**json.loads(meta_path.read_text()))
        bin_path = path / TOKENS
        row = meta.seq_len + 1
        expected = meta.n_sequences * row * np.dtype(meta.dtype).itemsize
        actual = bin_path.stat().st_size
        if actual != expected:
            raise ValueError(
                f"{bin_path} has {actual} bytes, meta.json implies {expected} "
                f"({meta.n_sequences} rows x {row} tokens x {meta.dtype})"
            )
        tokens = np.memmap(bin_path, dtype=meta.dtype, mode="r", shape=(meta.n_sequences, row))
        return cls(path=path, meta=meta, tokens=tokens)

    def domains(self) -> np.ndarray:
        """Domain index of each row, shape (n_sequences,), memory-mapped."""
        return np.load(self.path / DOMAINS, mmap_mode="r")

    def __len__(self) -> int:
        return self.meta.n_sequences


def write_token_file(
    tokens_dir: str | Path,
    sequences: np.ndarray,
    domains: np.ndarray | Sequence[int],
    vocab_size: int,
    eos_id: int,
    domain_names: Sequence[str],
    tokenizer_path: str | Path,
) -> TokenFile:
    """Write a token directory atomically (built aside, renamed into place) and open it.

    ``sequences`` is an integer array of shape ``(n_sequences, seq_len + 1)``; ``domains`` holds
    one index into ``domain_names`` per row. Ids are checked against ``vocab_size``.
    """
    seqs = np.asarray(sequences)
    if seqs.ndim != 2 or seqs.shape[1] < 2:
        raise ValueError(f"sequences must have shape (n, seq_len + 1), got {seqs.shape}")
    if not np.issubdtype(seqs.dtype, np.integer):
        raise ValueError(f"sequences must hold integer token ids, got dtype {seqs.dtype}")
    if seqs.size and (int(seqs.min()) < 0 or int(seqs.max()) >= vocab_size):
        raise ValueError(
            f"token ids span [{int(seqs.min())}, {int(seqs.max())}], outside [0, {vocab_size})"
        )
    doms = np.asarray(domains, dtype=np.int64)
    if doms.shape != (seqs.shape[0],):
        raise ValueError(f"domains must have shape ({seqs.shape[0]},), got {doms.shape}")
    if doms.size and (int(doms.min()) < 0 or int(doms.max()) >= len(domain_names)):
        raise ValueError(f"domain indices must lie in [0, {len(domain_names)})")
    meta = TokenMeta(
        dtype=dtype_for_vocab(vocab_size),
        seq_len=seqs.shape[1] - 1,
        n_sequences=seqs.shape[0],
        vocab_size=vocab_size,
        eos_id=eos_id,
        domains=list(domain_names),
        tokenizer=str(Path(tokenizer_path).resolve()),
    )
    final = Path(tokens_dir)
    with atomic_dir(final) as tmp:
        np.ascontiguousarray(seqs, dtype=meta.dtype).tofile(tmp / TOKENS)
        np.save(tmp / DOMAINS, doms.astype(np.int32))
        (tmp / META).write_text(json.dumps(asdict(meta), indent=2) + "\n")
    return TokenFile.open(final)
