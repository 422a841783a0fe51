"""C4 line and page rules (Raffel et al. 2020, Sec. 2.2), as datatrove's ``C4QualityFilter``
with the reference code's defaults (tensorflow_datasets ``c4_utils``).
"""

from __future__ import annotations

import re

from pydantic import Field

from corpuslab.filters.base import Step, StepParams
from corpuslab.filters.words import count_sentences

_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_END_PUNCTUATION = (".", "?", "!", '"', "'")
_POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)


class C4QualityParams(StepParams):
    """C4's rules (Raffel et al. 2020, Sec. 2.2) with datatrove's C4QualityFilter defaults."""

    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = Field(default=5, ge=-1)  # -1 turns the page rule off
    min_words_per_line: int = Field(default=3, ge=-1)
    max_word_length: int = Field(default=1000, ge=-1)  # -1 turns the rule off
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class C4Quality(Step[C4QualityParams]):
    """C4 cleaning (Raffel et al. 2020, Sec. 2.2), as datatrove's C4QualityFilter.

    Removes lines (stripped) that: hold a word over 1000 characters; do not end in terminal
    punctuation (. ? ! " ') or end in an ellipsis; have fewer than 3 words; mention
    "javascript"; mention terms of use, privacy/cookie policies or cookies. Wikipedia citation
    marks are deleted. Drops the page when a kept line holds "lorem ipsum" or a curly bracket,
    or when fewer than 5 sentences (spaCy's sentence split) remain.
    """

    name = "c4_quality"
    Params = C4QualityParams
    unit = "line"

    def edit(self, text: str) -> tuple[str, str | None, int]:
        p = self.params
        kept: list[str] = []
        n_sentences = 0
        need_sentences = p.min_num_sentences
        n_lines = 0
        has_curly = p.filter_curly_bracket and "{" in text
        for raw in text.splitlines():
            line = raw.strip()
            if not line:
                continue
            n_lines += 1
            if p.remove_citations and "[" in line:
                line = _CITATION.sub("", line)
            if p.filter_no_terminal_punct and (
                not line.endswith(_END_PUNCTUATION) or line.endswith("...")
            ):
                continue
            words_ = raw.split()
            if len(words_) < p.min_words_per_line:
                continue
            if p.max_word_length != -1 and max(map(len, words_)) > p.max_word_length:
                continue
            low = line.lower()
            if p.filter_lorem_ipsum and "lorem ipsum" in low:
                return text, "lorem_ipsum", 0
            if p.filter_javascript and "javascript" in low:
                continue
            if has_curly and "{" in line:
                return text, "curly_bracket", 0
            if p.filter_policy and any(s in low for s in _POLICY_SUBSTRINGS):
                continue
            if n_sentences < need_sentences:
                n_sentences += count_sentences(line)
            kept.append(line)
        if need_sentences != -1 and n_sentences < need_sentences:
            return text, "too_few_sentences", 0
        out = "\n".join(kept).strip()
        removed = n_lines - len(kept)
        if removed == 0 and out == text:
            return text, None, 0
        return out, None, removed
