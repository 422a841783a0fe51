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
    model: GPT,
    windows: Iterator[tuple[int, list[int], list[int]]],
    seq_len: int,
    batch_size: int,
    n_docs: int,
) -> np.ndarray:
    """Summed NLL in nats per document over every target of ``(doc, inputs, targets)`` windows,
    batched and right-padded."""
    device = next(model.parameters()).device
    per_doc = np.zeros(n_docs, dtype=np.float64)

    def run(batch: list[tuple[int, list[int], list[int]]]) -> None:
        inp = torch.zeros((len(batch), seq_len), dtype=torch.long)
        tgt = torch.full((len(batch), seq_len), IGNORE_INDEX, dtype=torch.long)
        for i, (_, x, y) in enumerate(batch):
            inp[i, : len(x)] = torch.tensor(x)
            tgt[i, : len(y)] = torch.tensor(y)
        nll = model.per_token_loss(inp.to(device), tgt.to(device))
        rows = nll.double().sum(dim=1).cpu().numpy()
        np.add.at(per_doc, [d for d, _, _ in batch], rows)

    batch: list[tuple[int, list[int], list[int]]] = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    return per_doc


@torch.no_grad()
def document_scores(
    model: GPT,
    tokenizer_path: str | Path,
    texts: Sequence[str],
    seq_len: int | None = None,
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """Per document: summed NLL in nats (``nll``), scored UTF-8 ``bytes`` and ``tokens``.

    What is scored is described in the module docstring; a document with nothing to predict
    has zero of each. :func:`bits_per_byte` is their ratio over all documents.
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

    sequences: list[tuple[int, list[int]]] = []
    n_bytes = np.zeros(len(texts), dtype=np.int64)
    n_tokens = np.zeros(len(texts), dtype=np.int64)
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    for d, (text, enc) in enumerate(zip(texts, encodings, strict=True)):
        if eos_id is not None:
            ids, scored_bytes = [eos_id, *enc.ids], len(text.encode("utf-8"))
        else:
            ids = list(enc.ids)
            first_end = enc.offsets[0][1] if ids else 0
            scored_bytes = len(text.encode("utf-8")) - len(text[:first_end].encode("utf-8"))
        if len(ids) < 2:
            continue  # nothing to predict
        sequences.append((d, ids))
        n_tokens[d] = len(ids) - 1
        n_bytes[d] = scored_bytes

    windows = ((d, x, y) for d, ids in sequences for x, y in _windows(ids, seq_len))
    nll = _score(model, windows, seq_len, batch_size, len(texts))
    model.train(was_training)
    return {"nll": nll, "bytes": n_bytes, "tokens": n_tokens}


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
    docs = document_scores(model, tokenizer_path, texts, seq_len, batch_size)
    nll, n_bytes = float(docs["nll"].sum()), int(docs["bytes"].sum())
    return {
        "bpb": nll / (math.log(2) * n_bytes) if n_bytes else float("nan"),
        "nll_nats": nll,
        "tokens": int(docs["tokens"].sum()),
        "bytes": n_bytes,
        "documents": int((docs["tokens"] > 0).sum()),
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
    path = Path(run_dir)  # runs/<run> or runs/<run>/seed<k>
    seeded = path.name.startswith("seed") and path.name[4:].isdigit()
    name = f"{path.parent.name}/{path.name}" if seeded else path.name
    progress = Progress(f"eval {name} ({weights})", len(heldout), "domains")
    out = {}
    for domain, texts in heldout.items():
        out[domain] = bits_per_byte(model, tokenizer_path, texts, seq_len, batch_size)
        progress.advance(note=f"{domain} {out[domain]['bpb']:.3f} bits/byte")
    return out
