"""Within-shard dedup steps: exact documents, repeated lines and repeated paragraphs.

The local form of DCLM's BFF paragraph dedup and Dolma's paragraph dedup; cross-shard
duplicates are removed by the recipe's global dedup stage (:mod:`corpuslab.dedup`).
"""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field

from corpuslab.dedup.exact import normalized_hash
from corpuslab.filters.base import Step, StepParams
from corpuslab.filters.words import whitespace_words


class ExactDedupParams(StepParams):
    lowercase: bool = True


class ExactDedup(Step[ExactDedupParams]):
    """Drop a document whose normalized text was already seen in this shard.

    Cross-shard exact duplicates are removed by the recipe's global dedup stage.
    """

    name = "exact_dedup"
    Params = ExactDedupParams

    def __init__(self, params: ExactDedupParams) -> None:
        super().__init__(params)
        self._seen: set[bytes] = set()

    def reset(self) -> None:
        self._seen.clear()

    def reason(self, text: str) -> str | None:
        p = self.params
        digest = normalized_hash(text, p.lowercase)
        if digest in self._seen:
            return "exact_duplicate"
        self._seen.add(digest)
        return None


class SpanDedupParams(StepParams):
    """What counts as a repeat, and when a document has too little left."""

    min_chars: int = Field(default=1, ge=1)  # shorter lines/paragraphs are never removed
    lowercase: bool = False
    min_words_left: int = Field(
        default=1, ge=0
    )  # fewer whitespace words left: the document is dropped


_SPACES = re.compile(r"\s+")


class _SpanDedup(Step[SpanDedupParams]):
    """Remove lines/paragraphs that appeared earlier in the shard (Dolma, DCLM BFF style)."""

    Params = SpanDedupParams
    separator: ClassVar[str]
    splitter: ClassVar[re.Pattern[str]]

    def __init__(self, params: SpanDedupParams) -> None:
        super().__init__(params)
        self._seen: set[str] = set()

    def reset(self) -> None:
        self._seen.clear()

    def _key(self, span: str) -> str:
        p = self.params
        key = _SPACES.sub(" ", span).strip()
        return key.lower() if p.lowercase else key

    def edit(self, text: str) -> tuple[str, str | None, int]:
        p = self.params
        seen = self._seen
        kept: list[str] = []
        removed = 0
        for span in self.splitter.split(text):
            key = self._key(span)
            if len(key) < p.min_chars:
                kept.append(span)
                continue
            if key in seen:
                removed += 1
                continue
            seen.add(key)
            kept.append(span)
        if not removed:
            return text, None, 0
        out = self.separator.join(kept).strip()
        if len(whitespace_words(out)) < max(p.min_words_left, 1):
            return text, "too_short_after_dedup", 0
        return out, None, removed


class LineDedup(_SpanDedup):
    """Remove lines whose whitespace-normalized text already appeared in this shard."""

    name = "line_dedup"
    unit = "line"
    separator = "\n"
    splitter = re.compile(r"\n")


class ParagraphDedup(_SpanDedup):
    """Remove paragraphs (blocks between blank lines) already seen in this shard."""

    name = "paragraph_dedup"
    unit = "paragraph"
    separator = "\n\n"
    splitter = re.compile(r"\n\s*\n")
