"""Tokenizer training and packing of documents into fixed-length training sequences."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from corpuslab.layout import atomic_path

EOS = "<|endoftext|>"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int, out_path: Path
) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style) tokenizer and save it atomically as JSON."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    with atomic_path(out_path) as tmp:
        tok.save(str(tmp))
    return tok


def load_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} is missing: materialize the tokenizer asset")
    return Tokenizer.from_file(str(path))


def count_tokens(tok: Tokenizer, texts: Sequence[str], batch: int = 1024) -> list[int]:
    """Tokens per document (without the EOS separator), using the batch encoder."""
    out: list[int] = []
    for i in range(0, len(texts), batch):
        out.extend(len(e.ids) for e in tok.encode_batch(list(texts[i : i + batch])))
    return out


def pack_sequences(
    tok: Tokenizer,
    texts_by_domain: Mapping[str, Sequence[str]],
    seq_len: int,
    seed: int,
    batch: int = 1024,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Encode each domain's documents (EOS-separated), cut rows of ``seq_len + 1`` tokens.

    Rows never mix domains, so each row's domain is known (per-domain losses need it). The
    tail shorter than a row is dropped. Rows of all domains are shuffled together with ``seed``.
    Returns (rows, domain index per row, tokens kept per domain).
    """
    eos = tok.token_to_id(EOS)
    if eos is None:
        raise ValueError(f"tokenizer has no {EOS} token")
    width = seq_len + 1
    dtype = np.uint16 if tok.get_vocab_size() <= 65535 else np.uint32
    rows: list[np.ndarray] = []
    dom: list[np.ndarray] = []
    kept: dict[str, int] = {}
    for d_index, domain in enumerate(sorted(texts_by_domain)):
        texts = texts_by_domain[domain]
        parts: list[np.ndarray] = []
        for i in range(0, len(texts), batch):
            for enc in tok.encode_batch(list(texts[i : i + batch])):
                parts.append(np.asarray(enc.ids + [eos], dtype=dtype))
        stream = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
        n_rows = len(stream) // width
        rows.append(stream[: n_rows * width].reshape(n_rows, width))
        dom.append(np.full(n_rows, d_index, dtype=np.int16))
        kept[domain] = n_rows * width
    all_rows = np.concatenate(rows) if rows else np.zeros((0, width), dtype=dtype)
    all_dom = np.concatenate(dom) if dom else np.zeros(0, dtype=np.int16)
    order = np.random.default_rng(seed).permutation(len(all_rows))
    return all_rows[order], all_dom[order], kept
