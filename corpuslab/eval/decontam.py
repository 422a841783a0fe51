"""Decontamination: word n-gram overlap between evaluation texts and training documents.

As GPT-3's contamination study, datatrove's ``NGramsDecontFilter`` and AI2's decon do it: text
is lower-cased and split into words (runs of letters and digits, punctuation dropped), every
run of ``n`` consecutive words (13 by default, GPT-3's choice) is hashed, and an evaluation
text is contaminated by the share of its distinct n-grams that some training document also
contains. A text with fewer than ``n`` words has no n-gram and cannot be checked this way; it
is counted as unchecked, not as clean.

Hashing is vectorized: each word gets Python's 64-bit string hash, and an n-gram's hash is
the polynomial ``sum_j h(w_{i+j}) * P^(n-1-j)`` modulo 2^64, computed for all positions of a
document at once with numpy (collisions are possible in principle, at ~2^-64 per pair).
Python salts string hashes per process, so hashes are only ever compared within one process:
nothing here stores them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

NGRAM = 13  # GPT-3 (Brown et al. 2020, appendix C) and most decontamination since
_WORD = re.compile(r"[^\W_]+")
_P = np.uint64(0x100000001B3)  # the 64-bit FNV prime as the polynomial's base


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort and a mask: faster than ``np.unique``'s hash path here)."""
    a = np.sort(a)
    if len(a) < 2:
        return a
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


class NGramHasher:
    """Word n-gram hashes of texts (comparable within one process only)."""

    def __init__(self, n: int = NGRAM) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = n

    def words(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def _word_hashes(self, words: list[str]) -> np.ndarray:
        return np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)

    def hashes(self, text: str) -> np.ndarray:
        """Hashes of every n-gram of ``text`` in order (empty when it has fewer than n words)."""
        words = self.words(text)
        m = len(words) - self.n + 1
        if m <= 0:
            return np.zeros(0, dtype=np.uint64)
        w = self._word_hashes(words)
        acc = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(self.n):
                acc = acc * _P + w[j : j + m]
        return acc


@dataclass
class Overlap:
    """How much of one evaluation text is found in training documents."""

    key: str
    ngrams: int  # distinct n-grams of the text
    found: int  # of those, found in some training document
    examples: list[str] = field(default_factory=list)  # training documents holding some

    @property
    def fraction(self) -> float:
        return self.found / self.ngrams if self.ngrams else 0.0


@dataclass
class OverlapReport:
    """Per evaluation text: its overlap with the training documents scanned."""

    n: int
    threshold: float
    texts: dict[str, Overlap]
    training_documents: int
    unchecked: list[str]  # evaluation texts shorter than n words

    @property
    def contaminated(self) -> list[Overlap]:
        """Texts whose overlap fraction exceeds the threshold, worst first."""
        bad = [o for o in self.texts.values() if o.ngrams and o.fraction > self.threshold]
        return sorted(bad, key=lambda o: (-o.fraction, o.key))

    @property
    def passed(self) -> bool:
        return not self.contaminated


def overlap(
    eval_texts: Mapping[str, str],
    training: Iterable[tuple[str, str]],
    n: int = NGRAM,
    threshold: float = 0.0,
    max_examples: int = 3,
) -> OverlapReport:
    """Overlap of each evaluation text (key -> text) with ``training`` ((doc key, text) pairs).

    An evaluation text is contaminated when more than ``threshold`` of its distinct n-grams
    occur in the training documents; each :class:`Overlap` names up to ``max_examples``
    training documents that hold its n-grams.
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
    hasher = NGramHasher(n)
    owners: dict[int, list[int]] = {}
    keys = list(eval_texts)
    texts: dict[str, Overlap] = {}
    unchecked: list[str] = []
    for i, key in enumerate(keys):
        grams = sorted_unique(hasher.hashes(eval_texts[key]))
        texts[key] = Overlap(key, len(grams), 0)
        if not len(grams):
            unchecked.append(key)
        for g in grams.tolist():
            owners.setdefault(g, []).append(i)
    table = np.array(sorted(owners), dtype=np.uint64)
    found: list[set[int]] = [set() for _ in keys]
    n_docs = 0
    for doc_key, text in training:
        n_docs += 1
        if not len(table):
            continue
        h = sorted_unique(hasher.hashes(text))
        if not len(h):
            continue
        pos = np.searchsorted(table, h)
        pos[pos == len(table)] = 0
        hits = h[table[pos] == h]
        touched: set[int] = set()
        for g in hits.tolist():
            for i in owners[g]:
                found[i].add(g)
                touched.add(i)
        for i in touched:
            ex = texts[keys[i]].examples
            if len(ex) < max_examples and doc_key not in ex:
                ex.append(doc_key)
    for i, key in enumerate(keys):
        texts[key].found = len(found[i])
    return OverlapReport(n, threshold, texts, n_docs, unchecked)
