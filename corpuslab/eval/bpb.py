"""Held-out bits-per-byte: a tokenizer-independent language-modeling score per domain.

Bits per byte = (total NLL in nats) / (ln 2 x UTF-8 bytes of the scored text), so models with
different tokenizers compare on the same footing.

How a document is scored: its tokens (no special tokens added by the tokenizer) are scored in
non-overlapping windows of ``seq_len`` predictions; each window starts from the last token of
the previous one, so every scored token is predicted exactly once and attends to at most
``seq_len`` earlier tokens (less at window starts). If the tokenizer has ``<|endoftext|>``, the
document is preceded by that EOS id, as it is in training streams where EOS ends the previous
document: every token is then scored and the byte count is the whole document's. Without it the
first token has no context and is not scored; its bytes are left out of the count.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from corpuslab.lmdata.tokenize import EOS
from corpuslab.progress import Progress
from corpuslab.training.checkpoints import load_model
from corpuslab.training.model import GPT, IGNORE_INDEX


@torch.no_grad()
def sequence_loss(model: GPT, rows: np.ndarray, batch_size: int = 16) -> float:
    """Mean cross-entropy in nats per token over token-file rows (inputs ``row[:-1]``).

    Scores every target of every row once, in full-length windows, as training does: the
    held-out loss of a run is comparable to its training loss.
    """
    if len(rows) == 0:
        raise ValueError("no rows to score")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        block = torch.from_numpy(np.asarray(rows[start : start + batch_size], dtype=np.int64))
        block = block.to(device)
        nll = model.per_token_loss(block[:, :-1], block[:, 1:])
        total += float(nll.double().sum())
        count += nll.numel()
    model.train(was_training)
    return total / count


def _windows(ids: list[int], seq_len: int) -> Iterator[tuple[list[int], list[int]]]:
    """(inputs, targets) windows that predict ids[1:] once each, at most seq_len per window."""
    for start in range(0, len(ids) - 1, seq_len):
        chunk = ids[start : start + seq_len + 1]
        yield chunk[:-1], chunk[1:]


def _score(
    model: GPT, windows: Iterator[tuple[list[int], list[int]]], seq_len: int, batch_size: int
) -> float:
    """Summed NLL in nats over every target in ``windows``, batched and right-padded."""
    device = next(model.parameters()).device
    total = 0.0

    def run(batch: list[tuple[list[int], list[int]]]) -> float:
        inp = torch.zeros((len(batch), seq_len), dtype=torch.long)
        tgt = torch.full((len(batch), seq_len), IGNORE_INDEX, dtype=torch.long)
        for i, (x, y) in enumerate(batch):
            inp[i, : len(x)] = torch.tensor(x)
            tgt[i, : len(y)] = torch.tensor(y)
        nll = model.per_token_loss(inp.to(device), tgt.to(device))
        return float(nll.double().sum())

    batch: list[tuple[list[int], list[int]]] = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            total += run(batch)
            batch = []
    if batch:
        total += run(batch)
    return total


@torch.no_grad()
def bits_per_byte(
    model: GPT,
    tokenizer_path: str | Path,
    texts: Sequence[str],
    seq_len: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Bits per byte of ``model`` on ``texts`` (see the module docstring for what is scored).

    Returns ``bpb``, ``nll_nats`` (summed), ``tokens`` and ``bytes`` scored, and ``documents``
    (those with at least one scored token).
    """
    seq_len = seq_len or model.config.seq_len
    if not 1 <= seq_len <= model.config.seq_len:
        raise ValueError(f"seq_len={seq_len} must lie in [1, {model.config.seq_len}]")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    eos_id = tokenizer.token_to_id(EOS)
    was_training = model.training
    model.eval()

    sequences: list[list[int]] = []
    n_bytes = n_tokens = 0
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    for text, enc in zip(texts, encodings, strict=True):
        if eos_id is not None:
            ids, scored_bytes = [eos_id, *enc.ids], len(text.encode("utf-8"))
        else:
            ids = list(enc.ids)
            first_end = enc.offsets[0][1] if ids else 0
            scored_bytes = len(text.encode("utf-8")) - len(text[:first_end].encode("utf-8"))
        if len(ids) < 2:
            continue  # nothing to predict
        sequences.append(ids)
        n_tokens += len(ids) - 1
        n_bytes += scored_bytes

    windows = (w for ids in sequences for w in _windows(ids, seq_len))
    nll = _score(model, windows, seq_len, batch_size)
    model.train(was_training)
    return {
        "bpb": nll / (math.log(2) * n_bytes) if n_bytes else float("nan"),
        "nll_nats": nll,
        "tokens": n_tokens,
        "bytes": n_bytes,
        "documents": len(sequences),
    }


def evaluate_domains(
    run_dir: str | Path,
    tokenizer_path: str | Path,
    heldout: dict[str, list[str]],
    seq_len: int | None = None,
    batch_size: int = 8,
    weights: str = "model.pt",
) -> dict[str, dict[str, Any]]:
    """Bits per byte of a trained run on each held-out domain: ``{domain: metrics}``.

    ``weights="model_lawa.pt"`` scores the checkpoint average instead of the final weights.
    """
    model = load_model(run_dir, weights=weights)
    progress = Progress(f"eval {Path(run_dir).name} ({weights})", len(heldout), "domains")
    out = {}
    for domain, texts in heldout.items():
        out[domain] = bits_per_byte(model, tokenizer_path, texts, seq_len, batch_size)
        progress.advance(note=f"{domain} {out[domain]['bpb']:.3f} bits/byte")
    return out
