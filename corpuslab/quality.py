"""Model-based quality filtering: a fastText classifier of "high" vs "low" quality text.

Follows DCLM's baseline (DataComp-LM, section 4.4): a fastText classifier over word unigrams and
bigrams (``wordNgrams=2``) trained on positives from a reference source against random documents
of the pool as negatives, then keeping the top 10% of documents by P(hq). Here the positives
are a configurable source (the demo uses the Python language reference), and both the kept
fraction and an absolute score cut-off are parameters.

Scoring normalizes a whole batch of texts in one compiled pass (numba; the regex path of
:func:`normalize_for_fasttext` gives the same strings where numba is absent), predicts the batch
with one fastText call and reads P(hq) out with numpy, so its cost stays close to fastText's own.
"""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fasttext
import numpy as np
from pydantic import Field, model_validator

from corpuslab.fileio import atomic_path
from corpuslab.strict import Strict

try:  # the compiled normalizer; without numba the regex path gives the same strings
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is not installed
    numba = None

LABEL_HQ = "__label__hq"
LABEL_LQ = "__label__lq"
PREDICT_BATCH = 1024
_TOKEN = re.compile(r"\w+|[^\w\s]")


class QualityParams(Strict):
    """Training and selection settings of the quality classifier."""

    positive_source: str = Field(description="source whose documents are the positives")
    negative_sample: int = Field(
        default=2000, ge=1, description="max negatives drawn from the pool"
    )
    positive_sample: int | None = Field(default=None, ge=1, description="max positives (None: all)")
    keep_fraction: float | None = Field(
        default=0.9, gt=0.0, le=1.0, description="keep top fraction"
    )
    min_score: float | None = Field(
        default=None, ge=0.0, le=1.0, description="or keep P(hq) >= this"
    )
    epoch: int = Field(default=5, ge=1)
    lr: float = Field(default=0.1, gt=0.0)
    dim: int = Field(default=64, ge=1)
    word_ngrams: int = Field(default=2, ge=1, description="DCLM: unigrams + bigrams")
    bucket: int = Field(
        default=100_000, ge=1, description="hash buckets of n-grams (sets model size)"
    )
    heldout_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _min_score_alone(cls, data: Any) -> Any:
        """Giving min_score alone replaces the default keep_fraction rather than clashing."""
        if isinstance(data, dict) and data.get("min_score") is not None:
            data = {"keep_fraction": None, **data}
        return data

    @model_validator(mode="after")
    def _one_rule(self) -> QualityParams:
        if (self.keep_fraction is None) == (self.min_score is None):
            raise ValueError("set exactly one of keep_fraction and min_score")
        return self


def normalize_for_fasttext(text: str) -> str:
    """One lowercased line with punctuation split from words, as fastText tokenizes on spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_TOKEN.findall(text))


# Character classes of the compiled normalizer: what ``\w`` and ``\s`` match in Python's regex.
_OTHER, _WORD, _SPACE = 0, 1, 2


def _ascii_classes() -> np.ndarray:
    """ASCII byte -> (class, lowercase byte) packed as ``class << 8 | byte``."""
    table = np.zeros(128, dtype=np.uint16)
    for c in range(128):
        ch = chr(c)
        cls = _WORD if re.fullmatch(r"\w", ch) else _SPACE if ch.isspace() else _OTHER
        table[c] = cls << 8 | ord(ch.lower())
    return table


_ASCII_CLASSES = _ascii_classes()
_NO_UNICODE = np.zeros(1, dtype=np.uint8)  # stands in for the table when all text is ASCII


@functools.cache
def _unicode_classes() -> np.ndarray:
    """Code point -> class (word, space, other), read off the regex engine once (~0.1 s)."""
    points = np.arange(0x110000, dtype=np.uint32)
    points[0xD800:0xE000] = ord("!")  # surrogates cannot be decoded; they are "other" too
    everything = points.tobytes().decode("utf-32-le")
    table = np.zeros(0x110000, dtype=np.uint8)
    for pattern, cls in ((r"\w+", _WORD), (r"\s+", _SPACE)):
        for run in re.finditer(pattern, everything):
            table[run.start() : run.end()] = cls
    return table


if numba is not None:
    from corpuslab._utf8 import decode_utf8

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def _ascii_step(out, q, packed, started, in_word):  # noqa: ANN001, ANN202
        """Write one ASCII character (a space first if it starts a token), without branches."""
        cls = packed >> 8
        keep = cls != _SPACE
        is_word = cls == _WORD
        out[q] = 32
        q += keep & started & ((not is_word) | (not in_word))
        out[q] = packed & 0xFF
        q += keep
        return q, started | keep, is_word

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def _tokenize_kernel(
        buf: np.ndarray,
        offsets: np.ndarray,
        is_ascii: np.ndarray,
        ascii_classes: np.ndarray,
        classes: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each document as ``\\w+`` runs and single other characters, joined by spaces.

        ``buf`` holds UTF-8 documents (ASCII ones as is, others already NFKC'd and lowercased);
        returns the output bytes and each document's end offset in them.
        """
        n_docs = offsets.shape[0] - 1
        out = np.empty(2 * buf.shape[0] + 1, dtype=np.uint8)
        ends = np.empty(n_docs, dtype=np.int64)
        q = 0
        for d in range(n_docs):
            started = False  # a token was written for this document
            in_word = False
            if is_ascii[d]:  # one byte per character: a branch-free loop
                for p in range(offsets[d], offsets[d + 1]):
                    packed = ascii_classes[buf[p]]
                    q, started, in_word = _ascii_step(out, q, packed, started, in_word)
                ends[d] = q
                continue
            p = offsets[d]
            while p < offsets[d + 1]:
                c = buf[p]
                if c < 0x80:  # the same step for an ASCII character
                    q, started, in_word = _ascii_step(out, q, ascii_classes[c], started, in_word)
                    p += 1
                    continue
                # a UTF-8 sequence (only in text that is not ASCII): decode it to look it up
                cp, width = decode_utf8(buf, p, c)
                cls = classes[cp]
                if cls == _SPACE:  # whitespace ends a word and is dropped
                    in_word = False
                else:
                    if (cls == _OTHER or not in_word) and started:
                        out[q] = 32
                        q += 1
                    for k in range(width):
                        out[q] = buf[p + k]
                        q += 1
                    started = True
                    in_word = cls == _WORD
                p += width
            ends[d] = q
        return out[:q], ends


def normalize_batch(texts: Sequence[str]) -> list[str]:
    """:func:`normalize_for_fasttext` of every text, in one compiled pass when numba is there."""
    if numba is None or not texts:
        return [normalize_for_fasttext(t) for t in texts]
    parts: list[bytes] = []
    is_ascii = np.zeros(len(texts), dtype=np.bool_)
    for i, text in enumerate(texts):
        if text.isascii():  # NFKC leaves ASCII unchanged; the kernel lowercases it
            parts.append(text.encode("ascii"))
            is_ascii[i] = True
        else:
            norm = unicodedata.normalize("NFKC", text).lower()
            parts.append(norm.encode("utf-8", "surrogatepass"))
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)), out=offsets[1:])
    buf = np.frombuffer(b"".join(parts), dtype=np.uint8)
    table = _NO_UNICODE if is_ascii.all() else _unicode_classes()
    out, ends = _tokenize_kernel(buf, offsets, is_ascii, _ASCII_CLASSES, table)
    # out.data is memoryview(out); numpy's stubs call ndarray a buffer only on Python >= 3.12
    view, bounds = out.data, [0, *ends.tolist()]
    return [
        str(view[bounds[i] : bounds[i + 1]], "utf-8", "surrogatepass") for i in range(len(texts))
    ]


def training_sample(
    n_positives: int, candidates: Sequence[int], params: QualityParams
) -> tuple[list[int], list[int]]:
    """(positive indices, negative indices) the classifier trains on, both sorted (seeded).

    Negatives are ``negative_sample`` of the ``candidates`` (pool rows outside the positive
    source), positives at most ``positive_sample`` of the ``n_positives``; both draws come from
    one generator seeded with ``params.seed``, so the same pool gives the same sample.
    """
    rng = np.random.default_rng(params.seed)
    n_neg = min(params.negative_sample, len(candidates))
    negatives = sorted(rng.choice(candidates, size=n_neg, replace=False).tolist()) if n_neg else []
    positives = list(range(n_positives))
    if params.positive_sample is not None and params.positive_sample < n_positives:
        positives = sorted(
            rng.choice(n_positives, size=params.positive_sample, replace=False).tolist()
        )
    return positives, negatives


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney rank statistic (ties get mean ranks)."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=float)
    start = 0
    while start < len(scores):  # average rank over each run of tied scores
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    n_held = min(n - 1, max(1, round(n * fraction))) if n > 1 else 0
    return perm[n_held:], perm[:n_held]


_TRAIN_CHILD = """
import json, sys
import fasttext
fasttext.train_supervised(**json.loads(sys.argv[1])).save_model(sys.argv[2])
"""


def _train_in_fresh_process(fasttext_args: dict[str, Any], model_path: Path) -> None:
    """Run ``fasttext.train_supervised`` in a new interpreter and save the model there.

    fastText 0.9.x fills only ``thread``/10 of the input matrix in ``DenseMatrix::uniform``
    and, in the 0.9.3 wheel, allocates it uninitialized (``posix_memalign``). In a long-lived
    process that memory is recycled heap, so with ``thread=1`` the model depends on leftover
    bytes: runs differ and often fail with "Encountered NaN". A fresh process gets zeroed pages
    from the kernel, which makes training deterministic and stable.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _TRAIN_CHILD, json.dumps(fasttext_args), str(model_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fastText training failed: {proc.stderr.strip()[-2000:]}")


def train_quality_model(
    positives: Sequence[str],
    negatives: Sequence[str],
    params: QualityParams,
    out_path: Path,
) -> dict[str, Any]:
    """Train hq-vs-lq fastText on a stratified split, save it atomically, return held-out metrics.

    Trains on exactly the given texts (:func:`training_sample` chooses them), on one thread
    with a fixed seed in a fresh process (see :func:`_train_in_fresh_process`), so the same
    inputs give the same model.
    """
    rng = np.random.default_rng(params.seed)
    pos, neg = list(positives), list(negatives)
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError(f"need at least 2 positives and 2 negatives, got {len(pos)}/{len(neg)}")
    pos_train, pos_held = _split(len(pos), params.heldout_fraction, rng)
    neg_train, neg_held = _split(len(neg), params.heldout_fraction, rng)
    train = [(LABEL_HQ, pos[i]) for i in pos_train] + [(LABEL_LQ, neg[i]) for i in neg_train]
    train = [train[i] for i in rng.permutation(len(train))]  # SGD must not see one class first

    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        train_file = Path(tmp) / "train.txt"
        with open(train_file, "w", encoding="utf-8") as fh:
            lines = normalize_batch([text for _, text in train])
            for (label, _), line in zip(train, lines, strict=True):
                fh.write(f"{label} {line}\n")
        fasttext_args = {
            "input": str(train_file),
            "epoch": params.epoch,
            "lr": params.lr,
            "dim": params.dim,
            "wordNgrams": params.word_ngrams,
            "bucket": params.bucket,
            "minCount": 1,
            "loss": "softmax",
            "thread": 1,
            "seed": params.seed,
            "verbose": 0,
        }
        with atomic_path(Path(out_path)) as tmp_model:
            _train_in_fresh_process(fasttext_args, tmp_model)
    model = load_model(Path(out_path))

    held_texts = [pos[i] for i in pos_held] + [neg[i] for i in neg_held]
    held_labels = np.array([True] * len(pos_held) + [False] * len(neg_held))
    scores = score_texts(model, held_texts)
    predicted = scores >= 0.5
    tp = int((predicted & held_labels).sum())
    n_pred = int(predicted.sum())
    return {
        "accuracy": float((predicted == held_labels).mean()),
        "precision": tp / n_pred if n_pred else 0.0,
        "recall": tp / int(held_labels.sum()),
        "auc": roc_auc(held_labels, scores),
        "n_train": len(train),
        "n_train_positive": len(pos_train),
        "n_train_negative": len(neg_train),
        "n_heldout": len(held_texts),
        "n_heldout_positive": len(pos_held),
    }


def load_model(path: Path) -> Any:
    """Load a saved classifier."""
    return fasttext.load_model(str(path))


def score_texts(model: Any, texts: Sequence[str]) -> np.ndarray:
    """P(hq) of every text, predicted in batches; ``model`` is a fastText model or its path."""
    if isinstance(model, str | Path):
        model = load_model(Path(model))
    scores = np.empty(len(texts), dtype=np.float64)
    for start in range(0, len(texts), PREDICT_BATCH):
        batch = normalize_batch(texts[start : start + PREDICT_BATCH])
        labels, probs = model.predict(batch, k=-1)
        scores[start : start + len(batch)] = _hq_probability(labels, probs)
    return np.clip(scores, 0.0, 1.0)


def _hq_probability(labels: list[list[str]], probs: list[np.ndarray]) -> np.ndarray:
    """P(hq) from fastText's per-text labels and probabilities, else 1 - P(lq).

    When every row holds both labels (a two-class model asked with ``k=-1``) this is a few
    numpy steps; otherwise each row is read on its own.
    """
    try:
        table = np.asarray(probs, dtype=np.float64)
    except ValueError:  # rows of different lengths
        table = np.empty((0, 0))
    if table.ndim == 2 and table.shape == (len(labels), 2):
        first = np.fromiter((row[0] for row in labels), dtype=object, count=len(labels))
        second = np.fromiter((row[1] for row in labels), dtype=object, count=len(labels))
        hq_first, hq_second = first == LABEL_HQ, second == LABEL_HQ
        if np.all(hq_first | hq_second):
            return np.where(hq_first, table[:, 0], table[:, 1])
    out = np.empty(len(labels), dtype=np.float64)
    for j, (labs, ps) in enumerate(zip(labels, probs, strict=True)):
        p = dict(zip(labs, np.asarray(ps, dtype=np.float64), strict=True))
        out[j] = p.get(LABEL_HQ, 1.0 - p.get(LABEL_LQ, 1.0))
    return out


def select(
    scores: np.ndarray, params: QualityParams, ids: Sequence[str] | None = None
) -> np.ndarray:
    """Boolean keep mask: the top ``keep_fraction`` by score, or score >= ``min_score``.

    With ``keep_fraction`` exactly ``round(keep_fraction * n)`` documents are kept; equal scores
    are ordered by ``ids`` when given (so input order does not matter), else by position.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if params.min_score is not None:
        return scores >= params.min_score
    assert params.keep_fraction is not None
    n_keep = math.floor(params.keep_fraction * len(scores) + 0.5)
    tie = np.arange(len(scores)) if ids is None else np.argsort(np.asarray(ids), kind="stable")
    tie_rank = np.empty(len(scores), dtype=np.int64)
    tie_rank[tie] = np.arange(len(scores))
    order = np.lexsort((tie_rank, -scores))  # highest score first, then tie rank
    keep = np.zeros(len(scores), dtype=bool)
    keep[order[:n_keep]] = True
    return keep
