"""Tokenizers (trained BPE or a user's file) and packing of token streams into training rows."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from corpuslab.fileio import atomic_path

EOS = "<|endoftext|>"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int, out_path: Path, eos_token: str = EOS
) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style) tokenizer and save it atomically as JSON.

    ``eos_token`` is its one special token (the document separator of packed rows).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    with atomic_path(out_path) as tmp:
        tok.save(str(tmp))
    return tok


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a ``tokenizer.json``; a missing file names the asset that writes it."""
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} is missing: materialize the tokenizer asset")
    return Tokenizer.from_file(str(path))


def eos_id(tok: Tokenizer, eos_token: str, path: Path | str) -> int:
    """The id of ``eos_token``; ValueError naming the tokenizer file when it lacks it."""
    idx = tok.token_to_id(eos_token)
    if idx is None:
        raise ValueError(
            f"tokenizer {path} has no token {eos_token!r} in its vocabulary: add it, or declare "
            "the tokenizer's own end-of-text token as the mixture's tokenizer.eos_token"
        )
    return int(idx)


def vocab_size(tok: Tokenizer) -> int:
    """One more than the largest id (added tokens included): the embedding rows a model needs."""
    return max(tok.get_vocab_size(with_added_tokens=True), max(tok.get_vocab().values()) + 1)


def install_tokenizer_file(src: Path, dest: Path, eos_token: str) -> Tokenizer:
    """Check a user's ``tokenizer.json`` (loads, has ``eos_token``), then copy it atomically.

    Nothing is written when a check fails, so a bad file never replaces a good tokenizer.
    """
    if not src.is_file():
        raise FileNotFoundError(f"tokenizer file {src} does not exist")
    try:
        tok = Tokenizer.from_file(str(src))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise ValueError(f"tokenizer file {src} does not load: {exc}") from exc
    eos_id(tok, eos_token, src)
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return tok


def pack_rows(
    streams: Mapping[str, np.ndarray], seq_len: int, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Cut each domain's token stream into rows of ``seq_len + 1`` and shuffle all rows.

    Rows never mix domains, so each row's domain is known (per-domain losses and DoReMi need
    it); a tail shorter than a row is dropped. Domains are indexed in sorted order. Returns
    (rows, domain index per row, tokens packed per domain).
    """
    width = seq_len + 1
    names = sorted(streams)
    dtype = np.result_type(*(streams[d].dtype for d in names)) if names else np.uint16
    n_rows = {d: len(streams[d]) // width for d in names}
    total = sum(n_rows.values())
    rows = np.empty((total, width), dtype=dtype)
    dom = np.empty(total, dtype=np.int16)
    order = np.random.default_rng(seed).permutation(total)
    at = 0
    for d_index, domain in enumerate(names):
        n = n_rows[domain]
        # scatter straight into shuffled positions: one copy of the tokens, no concatenation
        rows[order[at : at + n]] = streams[domain][: n * width].reshape(n, width)
        dom[order[at : at + n]] = d_index
        at += n
    return rows, dom, {d: n_rows[d] * width for d in names}
