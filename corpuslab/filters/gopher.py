"""Gopher quality and repetition rules (Rae et al. 2021, App. A.1, Table A1), as datatrove's
``GopherQualityFilter`` and ``GopherRepetitionFilter``, rule for rule and reason for reason
(datatrove's ``gopher_enough_stop_words`` is ``gopher_too_few_stop_words`` here). Words are
spaCy tokens (:mod:`corpuslab.filters.words`).
"""

from __future__ import annotations

import re

import numpy as np
from pydantic import Field, model_validator

from corpuslab.filters.base import Step, StepParams
from corpuslab.filters.words import spacy_splitter

_BULLET_LINE = re.compile(r"\s*[•-]")
_ELLIPSIS_END = re.compile(r"(?:\.\.\.|…)\s*\Z")
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


class GopherQualityParams(StepParams):
    """Gopher's quality thresholds (Rae et al. 2021, App. A.1); None turns a rule off."""

    min_words: int | None = Field(default=50, ge=0)
    max_words: int | None = Field(default=100_000, ge=1)
    min_mean_word_length: float | None = Field(default=3.0, ge=0)
    max_mean_word_length: float | None = Field(default=10.0, gt=0)
    max_symbol_word_ratio: float | None = Field(default=0.1, ge=0)
    max_bullet_lines_ratio: float | None = Field(default=0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: float | None = Field(default=0.3, ge=0, le=1)
    min_alpha_words_ratio: float | None = Field(default=0.8, ge=0, le=1)
    min_stop_words: int | None = Field(default=2, ge=0)
    stop_words: tuple[str, ...] = GOPHER_STOP_WORDS

    @model_validator(mode="after")
    def _ordered(self) -> GopherQualityParams:
        lo, hi = self.min_words, self.max_words
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_words {lo} > max_words {hi}")
        lo_m, hi_m = self.min_mean_word_length, self.max_mean_word_length
        if lo_m is not None and hi_m is not None and lo_m > hi_m:
            raise ValueError(f"min_mean_word_length {lo_m} > max_mean_word_length {hi_m}")
        return self


class GopherQuality(Step[GopherQualityParams]):
    """Gopher quality rules (Rae et al. 2021, App. A.1), as datatrove's GopherQualityFilter.

    Words are spaCy tokens; "symbol" tokens (only punctuation) are left out of the word count
    and the mean length. Drop when: fewer than 50 or more than 100,000 words; mean word length
    outside 3..10; '#' or ellipses over 0.1 per token; over 90% of lines start with a bullet;
    over 30% of lines end with an ellipsis; under 80% of tokens hold a letter; fewer than 2 of
    the stop words "the, be, to, of, and, that, have, with".
    """

    name = "gopher_quality"
    Params = GopherQualityParams

    def __init__(self, params: GopherQualityParams) -> None:
        super().__init__(params)
        p = self.params
        self._stop = frozenset(p.stop_words)

    def reason(self, text: str) -> str | None:
        p = self.params
        sp = spacy_splitter()
        ids = sp.token_ids(text)
        n_words = len(ids)
        is_word = sp.token_word[ids]
        n_word = int(np.count_nonzero(is_word))
        n_chars = int(sp.token_len[ids][is_word].sum())
        if p.min_words and n_word < p.min_words:
            return "gopher_short_doc"
        if p.max_words and n_word > p.max_words:
            return "gopher_long_doc"
        if n_words == 0 or n_word == 0:
            return "gopher_short_doc"
        mean = n_chars / n_word
        if p.min_mean_word_length and mean < p.min_mean_word_length:
            return "gopher_below_avg_threshold"
        if p.max_mean_word_length and mean > p.max_mean_word_length:
            return "gopher_above_avg_threshold"
        if p.max_symbol_word_ratio:
            if text.count("#") / n_words > p.max_symbol_word_ratio:
                return "gopher_too_many_hashes"
            n_ellipsis = text.count("...") + text.count("…")
            if n_ellipsis / n_words > p.max_symbol_word_ratio:
                return "gopher_too_many_ellipsis"
        lines = text.splitlines()
        n_lines = len(lines) or 1
        if p.max_bullet_lines_ratio and ("•" in text or "-" in text):
            bullets = len(list(filter(_BULLET_LINE.match, lines)))
            if bullets / n_lines > p.max_bullet_lines_ratio:
                return "gopher_too_many_bullets"
        if p.max_ellipsis_lines_ratio and ("..." in text or "…" in text):
            ends = len(list(filter(_ELLIPSIS_END.search, lines)))
            if ends / n_lines > p.max_ellipsis_lines_ratio:
                return "gopher_too_many_end_ellipsis"
        if p.min_alpha_words_ratio:
            n_alpha = int(np.count_nonzero(sp.token_alpha[ids]))
            if n_alpha / n_words < p.min_alpha_words_ratio:
                return "gopher_below_alpha_threshold"
        if p.min_stop_words:
            found = 0
            for word in self._stop:
                i = sp.token_id(word)
                if i is not None and (ids == i).any():
                    found += 1
                    if found >= p.min_stop_words:
                        break
            if found < p.min_stop_words:
                return "gopher_too_few_stop_words"
        return None


_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the rolling n-gram hash


def _split_paragraphs(text: str) -> list[str]:
    """``re.split(r"\\n{2,}", text.strip())`` with str methods (several times faster)."""
    body = text.strip()
    if "\n\n" not in body:
        return [body]
    return [part.lstrip("\n") for part in body.split("\n\n") if part]


def _split_lines(text: str) -> list[str]:
    """``re.split(r"\\n+", text)`` with str methods: empty parts only at the two ends."""
    if "\n\n" not in text:
        return text.split("\n")
    lines = list(filter(None, text.split("\n")))
    if text.startswith("\n"):
        lines.insert(0, "")
    if text.endswith("\n"):
        lines.append("")
    return lines


def _repeats(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per element: does its value occur twice or more; per repeated value: count, first index.

    ``first`` indexes ``hashes``; ``counts`` and ``first`` list the repeated values only.
    """
    k = len(hashes)
    if k < 2:
        return np.zeros(k, dtype=bool), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(hashes)
    ordered = hashes[order]
    new = np.empty(k, dtype=bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, k))
    many = counts >= 2
    rep = np.empty(k, dtype=bool)
    rep[order] = np.repeat(many, counts)
    if not many.any():
        return rep, counts[:0], counts[:0]
    first = np.minimum.reduceat(order, starts)[many]
    return rep, counts[many], first


def _covered_chars(starts: np.ndarray, n: int, cs: np.ndarray) -> int:
    """Characters of the tokens inside the n-token windows at ``starts`` (overlaps once).

    With ``starts`` the repeats of earlier n-grams this bounds datatrove's greedy count from
    above: that count adds disjoint windows among these.
    """
    if not len(starts):
        return 0
    ends = np.minimum(starts + n, len(cs) - 1)  # ``starts`` ascend, so ``ends`` do too
    gap = starts[1:] >= ends[:-1]  # a window that does not overlap the one before
    first = np.concatenate(([True], gap))
    last = np.concatenate((gap, [True]))
    return int((cs[ends[last]] - cs[starts[first]]).sum())


def _duplicates(parts: list[str]) -> tuple[int, int]:
    """(elements equal to an earlier one, their characters): datatrove's ``find_duplicates``."""
    unique = set(parts)
    return len(parts) - len(unique), sum(map(len, parts)) - sum(map(len, unique))


class GopherRepetitionParams(StepParams):
    """Gopher's repetition thresholds (Rae et al. 2021, Table A1); None turns a rule off."""

    dup_line_frac: float | None = Field(default=0.3, ge=0, le=1)
    dup_para_frac: float | None = Field(default=0.3, ge=0, le=1)
    dup_line_char_frac: float | None = Field(default=0.2, ge=0, le=1)
    dup_para_char_frac: float | None = Field(default=0.2, ge=0, le=1)
    top_n_grams: dict[int, float] = Field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    dup_n_grams: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )

    @model_validator(mode="after")
    def _valid_n(self) -> GopherRepetitionParams:
        for key in ("top_n_grams", "dup_n_grams"):
            for n, frac in getattr(self, key).items():
                if n < 1 or not 0 <= frac <= 1:
                    raise ValueError(f"{key}: n must be >= 1 and fractions in [0, 1], got {n}")
        return self


class GopherRepetition(Step[GopherRepetitionParams]):
    """Gopher repetition rules (Rae et al. 2021, Table A1), as datatrove's GopherRepetitionFilter.

    Paragraphs (split on blank lines) and lines: fraction of duplicates <= 0.30 and fraction of
    characters in duplicates <= 0.20. Word n-grams (spaCy tokens): the most frequent 2/3/4-gram
    may cover at most 20/18/16% of the characters; repeated 5..10-grams (counted greedily left to
    right, skipping past each repeat) at most 15..10%. N-grams are compared by a 64-bit rolling
    hash of their tokens and only positions whose shorter n-gram repeats are looked at, since a
    longer n-gram can only repeat where its prefix and suffix do. (datatrove compares the
    5..10-grams as their tokens glued without spaces, so it also counts "ab c" and "a bc" as
    one; here they differ.)
    """

    name = "gopher_repetition"
    Params = GopherRepetitionParams

    def reason(self, text: str) -> str | None:
        p = self.params
        if not text:
            return "empty"
        n_text = len(text)
        paragraphs = _split_paragraphs(text)
        dups, dup_chars = _duplicates(paragraphs)
        if p.dup_para_frac and dups / len(paragraphs) > p.dup_para_frac:
            return "dup_para_frac"
        if p.dup_para_char_frac and dup_chars / n_text > p.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = _split_lines(text)
        dups, dup_chars = _duplicates(lines)
        if p.dup_line_frac and dups / len(lines) > p.dup_line_frac:
            return "dup_line_frac"
        if p.dup_line_char_frac and dup_chars / n_text > p.dup_line_char_frac:
            return "dup_line_char_frac"
        return self._ngram_reason(text, n_text)

    def _ngram_reason(self, text: str, n_text: int) -> str | None:
        p = self.params
        top, dup = p.top_n_grams, p.dup_n_grams
        sp = spacy_splitter()
        ids = sp.token_ids(text)
        m = len(ids)
        sizes = [*top, *dup]
        if m == 0 or not sizes:
            return None
        n_first, max_n = min(sizes), max(sizes)
        max_top = max(top, default=0)
        if m < n_first:
            return None
        h = sp.token_hash[ids].view(np.uint64)
        cs = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(sp.token_len[ids], out=cs[1:])
        # hashes of the n-grams starting at ``pos``; after each n only those that repeat remain
        pos = np.arange(m - n_first + 1)
        hashes = h[: len(pos)].copy()
        for j in range(1, n_first):
            hashes = hashes * _MIX + h[j : j + len(pos)]
        for n in range(n_first, max_n + 1):
            if n > n_first:
                # an n-gram can repeat only where the (n-1)-grams at i and i+1 both repeat
                flag = np.zeros(m + 1, dtype=bool)
                flag[pos] = True
                keep = flag[pos + 1] & (pos + n <= m)
                pos = pos[keep]
                hashes = hashes[keep] * _MIX + h[pos + n - 1]
            rep, counts, first = _repeats(hashes)
            if n in top and m >= n:
                best, i = 1, 0
                if len(counts) and counts.max() >= 2:
                    best = int(counts.max())
                    i = int(pos[first[counts == best].min()])
                if (cs[i + n] - cs[i] + n - 1) * best > top[n] * n_text:
                    return f"top_{n}_gram"
            later = rep.copy()
            later[first] = False  # occurrences after the first of a repeated n-gram
            if n in dup and m >= n and len(first):
                limit = dup[n] * n_text
                if _covered_chars(pos[later], n, cs) > limit:
                    chars = self._greedy(pos[rep], hashes[rep], cs, n, limit)
                    if chars > limit:
                        return f"duplicated_{n}_n_grams"
            if n >= max_top:
                # every longer repeat starts at one of ``later`` and spans at most the longest
                # window, so if even those windows stay under the smallest limit left, all pass
                rest = [k for k in dup if k > n]
                if (
                    not rest
                    or _covered_chars(pos[later], max(rest), cs)
                    <= min(dup[k] for k in rest) * n_text
                ):
                    return None
            pos, hashes = pos[rep], hashes[rep]
        return None

    @staticmethod
    def _greedy(r_pos: np.ndarray, r_hash: np.ndarray, cs: np.ndarray, n: int, limit: float) -> int:
        """datatrove's ``find_all_duplicate`` on the repeating positions only.

        Left to right, an n-gram seen before adds its characters and the scan jumps n tokens;
        positions whose n-gram occurs once never match and so are skipped here.
        """
        seen: set[int] = set()
        idx = total = 0
        lens = (cs[r_pos + n] - cs[r_pos]).tolist()
        for p_i, h_i, l_i in zip(r_pos.tolist(), r_hash.tolist(), lens, strict=True):
            if p_i < idx:
                continue
            if h_i in seen:
                total += l_i
                idx = p_i + n
                if total > limit:
                    break
            else:
                seen.add(h_i)
        return total
