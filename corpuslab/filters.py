"""Per-document steps of a recipe: heuristic quality rules and within-shard exact dedup.

Each step is declared in YAML by name with its parameters, validated by the step's pydantic
``Params`` (unknown keys fail at load time). A step answers ``None`` (keep) or a short reason;
the first step that drops a document names the reason, so every dropped document has one.

Thresholds default to the published values:
- Gopher quality rules, Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights
  from Training Gopher", Appendix A.1 (word count 50..100,000; mean word length 3..10;
  symbol-to-word ratio < 0.1 for '#' and '...').
- Gopher repetition rules, same appendix, Table A1 (duplicate-line fraction <= 0.30).
RefinedWeb (Penedo et al. 2023) reuses these rules in its pipeline; DCLM follows RefinedWeb.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corpuslab.dedup import normalized_hash


class StepParams(BaseModel):
    """Base of every step's parameters: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(ABC):
    """One per-document decision. Subclasses set ``name`` and ``Params``."""

    name: ClassVar[str]
    Params: ClassVar[type[StepParams]]

    def __init__(self, params: StepParams) -> None:
        self.params = params

    @abstractmethod
    def reason(self, text: str) -> str | None:
        """Return None to keep the document, else the reason it is dropped."""

    def reset(self) -> None:  # noqa: B027 - optional hook for stateful steps
        """Forget state kept across documents (called at the start of each shard)."""


_WORD = re.compile(r"\S+")


def words(text: str) -> list[str]:
    """Whitespace words, as the Gopher rules count them."""
    return _WORD.findall(text)


class WordCountParams(StepParams):
    min_words: int = Field(50, ge=0)
    max_words: int = Field(100_000, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> WordCountParams:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words {self.min_words} > max_words {self.max_words}")
        return self


class WordCount(Step):
    """Gopher: keep documents with 50 to 100,000 words."""

    name = "word_count"
    Params = WordCountParams

    def reason(self, text: str) -> str | None:
        p: WordCountParams = self.params  # type: ignore[assignment]
        n = len(words(text))
        if n < p.min_words:
            return "too_few_words"
        if n > p.max_words:
            return "too_many_words"
        return None


class MeanWordLengthParams(StepParams):
    min: float = Field(3.0, ge=0)
    max: float = Field(10.0, gt=0)


class MeanWordLength(Step):
    """Gopher: mean word length between 3 and 10 characters."""

    name = "mean_word_length"
    Params = MeanWordLengthParams

    def reason(self, text: str) -> str | None:
        p: MeanWordLengthParams = self.params  # type: ignore[assignment]
        ws = words(text)
        if not ws:
            return "no_words"
        mean = sum(map(len, ws)) / len(ws)
        if mean < p.min:
            return "mean_word_length_too_short"
        if mean > p.max:
            return "mean_word_length_too_long"
        return None


class SymbolRatioParams(StepParams):
    max: float = Field(0.1, ge=0)
    symbols: tuple[str, ...] = ("#", "...", "\u2026")


class SymbolRatio(Step):
    """Gopher: symbol-to-word ratio below 0.1 for the hash symbol and ellipses."""

    name = "symbol_ratio"
    Params = SymbolRatioParams

    def reason(self, text: str) -> str | None:
        p: SymbolRatioParams = self.params  # type: ignore[assignment]
        n_words = len(words(text))
        if n_words == 0:
            return "no_words"
        n_symbols = sum(text.count(s) for s in p.symbols)
        return "symbol_to_word_ratio" if n_symbols / n_words > p.max else None


class RepeatedLinesParams(StepParams):
    max_fraction: float = Field(0.3, ge=0, le=1)


class RepeatedLines(Step):
    """Gopher: fraction of lines that duplicate an earlier line must not exceed 0.3."""

    name = "repeated_lines"
    Params = RepeatedLinesParams

    def reason(self, text: str) -> str | None:
        p: RepeatedLinesParams = self.params  # type: ignore[assignment]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            return None
        duplicates = len(lines) - len(set(lines))
        return "duplicate_line_fraction" if duplicates / len(lines) > p.max_fraction else None


class ExactDedupParams(StepParams):
    lowercase: bool = True


class ExactDedup(Step):
    """Drop a document whose normalized text was already seen in this shard.

    Cross-shard exact duplicates are removed by the recipe's global dedup stage.
    """

    name = "exact_dedup"
    Params = ExactDedupParams

    def __init__(self, params: StepParams) -> None:
        super().__init__(params)
        self._seen: set[bytes] = set()

    def reset(self) -> None:
        self._seen.clear()

    def reason(self, text: str) -> str | None:
        p: ExactDedupParams = self.params  # type: ignore[assignment]
        digest = normalized_hash(text, p.lowercase)
        if digest in self._seen:
            return "exact_duplicate"
        self._seen.add(digest)
        return None


STEPS: dict[str, type[Step]] = {
    cls.name: cls for cls in (WordCount, MeanWordLength, SymbolRatio, RepeatedLines, ExactDedup)
}


class StepError(ValueError):
    """A declared step that does not exist or whose parameters are wrong."""


def parse_step(decl: Mapping[str, Any] | str) -> Step:
    """Build a step from its declaration: ``{name: {param: value}}`` or a bare ``name``."""
    if isinstance(decl, str):
        decl = {decl: {}}
    if not isinstance(decl, Mapping) or len(decl) != 1:
        raise StepError(f"a step is a mapping with exactly one key (its name), got {decl!r}")
    ((name, params),) = decl.items()
    if name not in STEPS:
        raise StepError(f"unknown step {name!r}; allowed: {', '.join(sorted(STEPS))}")
    cls = STEPS[name]
    return cls(cls.Params.model_validate(params or {}))


class Pipeline:
    """An ordered list of steps; the first step that drops a document gives its reason."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)

    @classmethod
    def from_decls(cls, decls: Sequence[Mapping[str, Any] | str]) -> Pipeline:
        return cls([parse_step(d) for d in decls])

    def run(self, texts: Sequence[str]) -> list[tuple[str, str] | None]:
        """Return, per document, None (kept) or (step name, reason)."""
        for step in self.steps:
            step.reset()
        out: list[tuple[str, str] | None] = []
        for text in texts:
            decision: tuple[str, str] | None = None
            for step in self.steps:
                why = step.reason(text)
                if why is not None:
                    decision = (step.name, why)
                    break
            out.append(decision)
        return out
