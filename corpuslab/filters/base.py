"""The step API: a step decides keep / drop-with-reason per document, a pipeline runs steps.

Each step is declared in YAML by name with its parameters, validated by the step's pydantic
``Params`` (unknown keys fail at load time). A step's :meth:`Step.apply` returns the document's
text, possibly modified (C4 line removal, line/paragraph dedup), and ``None`` (keep) or a short
reason; the first step that drops a document names the reason, so every dropped document has one.
Thresholds default to the published values, cited in each step's module.
"""

from __future__ import annotations

from abc import ABC
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, ClassVar, Generic, TypeVar

from corpuslab.strict import Strict

P = TypeVar("P", bound="StepParams")

STEPS: dict[str, type[Step[Any]]] = {}  # filled as step classes are defined
# Step names that existed once, with what replaces them: a recipe naming one fails at load.
RETIRED: dict[str, str] = {
    "word_count": "gopher_quality (min_words, max_words)",
    "mean_word_length": "gopher_quality (min_mean_word_length, max_mean_word_length)",
    "symbol_ratio": "gopher_quality (max_symbol_word_ratio)",
    "repeated_lines": "gopher_repetition (dup_line_frac)",
}


class StepParams(Strict):
    """Base of every step's parameters: unknown keys are errors, not silently ignored."""


class Step(ABC, Generic[P]):
    """One per-document decision, possibly editing the text. Subclasses set ``name``, ``Params``.

    A pure filter overrides :meth:`reason`; a step that edits overrides :meth:`edit` and sets
    ``unit`` to what it removes ("line" or "paragraph"). A subclass that sets ``name`` is
    registered in :data:`STEPS`, the names a recipe may declare.
    """

    name: ClassVar[str]
    Params: ClassVar[type[StepParams]]
    unit: ClassVar[str | None] = None

    def __init__(self, params: P) -> None:
        self.params = params

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return
        if not any(
            m in c.__dict__ for c in cls.__mro__ if c is not Step for m in ("reason", "edit")
        ):
            raise TypeError(f"step {cls.__name__} must override reason() or edit()")
        if cls.name in STEPS or cls.name in RETIRED:
            raise TypeError(f"step name {cls.name!r} is taken")
        STEPS[cls.name] = cls

    def edit(self, text: str) -> tuple[str, str | None, int]:
        """(text after this step, None or the drop reason, lines/paragraphs removed)."""
        return text, self.reason(text), 0

    def apply(self, text: str) -> tuple[str, str | None]:
        """(possibly modified text, None to keep or the reason the document is dropped)."""
        new, why, _ = self.edit(text)
        return new, why

    def reason(self, text: str) -> str | None:
        """None to keep the document, else the reason it is dropped (ignores edits)."""
        return self.edit(text)[1]

    def reset(self) -> None:  # noqa: B027 - optional hook for stateful steps
        """Forget state kept across documents (called at the start of each shard)."""


class StepError(ValueError):
    """A declared step that does not exist or whose parameters are wrong."""


@dataclass
class StepStats:
    """What one step did over a run: documents seen, dropped per reason, edited."""

    name: str
    unit: str | None = None
    documents_in: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    modified: int = 0  # documents kept with text this step changed
    removed: int = 0  # lines or paragraphs (``unit``) removed from those documents
    seconds: float = 0.0

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        """Plain values for metadata and JSON."""
        return {
            "name": self.name,
            "unit": self.unit,
            "documents_in": self.documents_in,
            "dropped": dict(self.dropped),
            "modified": self.modified,
            "removed": self.removed,
            "seconds": round(self.seconds, 6),
        }


@dataclass
class PipelineResult:
    """Per document: the final text and the decision; per step: counters.

    ``texts[i]`` is the text after every step that ran on document ``i``: for a kept document the
    text to write, for a dropped one the text the dropping step received. ``decisions[i]`` is
    None (kept) or ``(step name, reason)``; ``modified[i]`` says whether ``texts[i]`` differs from
    the input.
    """

    texts: list[str]
    decisions: list[tuple[str, str] | None]
    modified: list[bool]
    steps: list[StepStats]

    def __len__(self) -> int:
        return len(self.decisions)

    @property
    def kept(self) -> list[bool]:
        return [d is None for d in self.decisions]

    @property
    def n_kept(self) -> int:
        return sum(d is None for d in self.decisions)

    @property
    def n_dropped(self) -> int:
        return len(self.decisions) - self.n_kept

    def drop_reasons(self) -> Counter[str]:
        """Dropped documents per ``"step:reason"``."""
        return Counter(f"{d[0]}:{d[1]}" for d in self.decisions if d is not None)


# ================================================================ spaCy-compatible word split
#
# datatrove splits words with spaCy's blank English tokenizer (whitespace, then prefixes,


def parse_step(decl: Mapping[str, Any] | str) -> Step[Any]:
    """Build a step from its declaration: ``{name: {param: value}}`` or a bare ``name``."""
    import corpuslab.filters  # noqa: F401 - defines (and so registers) every step

    if isinstance(decl, str):
        decl = {decl: {}}
    if not isinstance(decl, Mapping) or len(decl) != 1:
        raise StepError(f"a step is a mapping with exactly one key (its name), got {decl!r}")
    ((name, params),) = decl.items()
    if name in RETIRED:
        raise StepError(
            f"step {name!r} was retired (it counted whitespace words, unlike Gopher's "
            f"spaCy words); use {RETIRED[name]}"
        )
    if name not in STEPS:
        raise StepError(f"unknown step {name!r}; allowed: {', '.join(sorted(STEPS))}")
    cls = STEPS[name]
    return cls(cls.Params.model_validate(params or {}))


class Pipeline:
    """An ordered list of steps; each sees the text the previous one left; first drop wins."""

    def __init__(self, steps: Sequence[Step[Any]]) -> None:
        self.steps = list(steps)

    @classmethod
    def from_decls(cls, decls: Sequence[Mapping[str, Any] | str]) -> Pipeline:
        return cls([parse_step(d) for d in decls])

    def run(self, texts: Iterable[str]) -> PipelineResult:
        """Apply every step to every document (state such as dedup resets first)."""
        for step in self.steps:
            step.reset()
        stats = [StepStats(step.name, step.unit) for step in self.steps]
        pairs = list(zip(self.steps, stats, strict=True))
        out_texts: list[str] = []
        decisions: list[tuple[str, str] | None] = []
        modified: list[bool] = []
        for text in texts:
            current = text
            decision: tuple[str, str] | None = None
            for step, st in pairs:
                st.documents_in += 1
                t0 = perf_counter()
                new, why, removed = step.edit(current)
                st.seconds += perf_counter() - t0
                if why is not None:
                    st.dropped[why] += 1
                    decision = (step.name, why)
                    break
                if new is not current and new != current:
                    st.modified += 1
                    st.removed += removed
                    current = new
            out_texts.append(current)
            decisions.append(decision)
            modified.append(current is not text)
        return PipelineResult(out_texts, decisions, modified, stats)
