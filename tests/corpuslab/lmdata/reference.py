"""Reference implementations the encoded-cache path is checked against: text in memory, encoded
directly, counted and packed with the library's own ``pack_rows``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer

from corpuslab.lmdata.tokenize import EOS, eos_id, pack_rows, vocab_size


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
    eos_token: str = EOS,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Encode each domain's documents (EOS-separated) and pack them with :func:`pack_rows`.

    The tokens asset packs from the encoded cache instead (:mod:`corpuslab.lmdata.encoded`),
    which must give the same rows for the same documents.
    """
    eos = eos_id(tok, eos_token, "in memory")
    dtype = np.uint16 if vocab_size(tok) <= 2**16 else np.uint32
    streams: dict[str, np.ndarray] = {}
    for domain, texts in texts_by_domain.items():
        parts: list[np.ndarray] = []
        for i in range(0, len(texts), batch):
            for enc in tok.encode_batch(list(texts[i : i + batch]), add_special_tokens=False):
                parts.append(np.asarray(enc.ids + [eos], dtype=dtype))
        streams[domain] = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return pack_rows(streams, seq_len, seed)
