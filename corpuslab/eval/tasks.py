"""In-context-learning tasks in llm-foundry's JSONL formats, declared with llm-foundry's keys.

A task entry takes the keys of an llm-foundry / DCLM eval YAML (``label``, ``dataset_uri``,
``icl_task_type``, ``num_fewshot``, ``continuation_delimiter``, ``example_delimiter``,
``prompt_string``, ``has_categories``, ``fewshot_random_seed``; for question answering
``early_stopping_criteria`` and ``do_normalization``), so DCLM's task list can be pasted in,
plus ``random_baseline`` (the accuracy of guessing, which CORE centers on; DCLM keeps it in a
separate table, and a wrong one silently skews the aggregate, so it is declared beside the task)
and ``builtin``/``source``/``max_items`` for the suites :mod:`corpuslab.eval.suite` generates.

The four JSONL formats (one JSON object a line; string fields are stripped, as llm-foundry's
``strip_data`` does):

- ``multiple_choice``: ``query``, ``choices`` (2+ strings), ``gold`` (index of the right one);
- ``schema``: ``context_options`` (2+ strings), ``continuation``, ``gold`` (the right context);
- ``language_modeling``: ``context``, ``continuation``;
- ``question_answering``: ``context``, ``answer``, optional ``aliases`` (more right answers).

With ``has_categories`` every line also needs a ``category``. A malformed line is a
:class:`TaskFileError` naming the file and the line.

Prompts are built as llm-foundry builds them: ``prompt_string``, then each few-shot
demonstration preceded by ``example_delimiter`` (when anything precedes it) and made of the
example's context, ``continuation_delimiter`` and its right answer, then the item's own context
and ``continuation_delimiter``. Unlike llm-foundry the context is not right-stripped: trailing
whitespace moves into the continuation when the pair is tokenized (lm-evaluation-harness's
rule, :mod:`corpuslab.eval.scoring`), so a delimiter such as ``"\\nAnswer: "`` reaches the
model whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from corpuslab.eval.fewshot import fewshot_indices, twin_groups
from corpuslab.strict import Strict

TaskType = Literal["multiple_choice", "schema", "language_modeling", "question_answering"]
CHOICE_TYPES = ("multiple_choice", "schema")

# Built-in generators of :mod:`corpuslab.eval.suite`: name -> (task type, needs a held-out source)
BUILTINS: dict[str, tuple[str, bool]] = {
    "signature_docstring": ("multiple_choice", False),
    "next_sentence": ("multiple_choice", True),
    "heldout_lm": ("language_modeling", True),
}
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class TaskFileError(ValueError):
    """A task file that cannot be used; the message names the file and the line."""


class TaskDecl(Strict):
    """One ICL task of a suite, with llm-foundry's task keys (see the module docstring).

    Each ``num_fewshot`` value is scored as its own task, named ``<label>_<k>shot`` in metrics.
    """

    label: str
    icl_task_type: TaskType
    dataset_uri: str | None = Field(None, description="JSONL file, relative: experiments folder")
    builtin: str | None = Field(None, description=f"one of {sorted(BUILTINS)}")
    source: str | None = Field(None, description="builtin: the held-out source it is built from")
    max_items: int | None = Field(None, ge=1, description="builtin: at most this many items")
    num_fewshot: list[int] = Field(default_factory=lambda: [0], min_length=1)
    continuation_delimiter: str = " "
    example_delimiter: str = "\n"
    prompt_string: str = ""
    has_categories: bool = False
    fewshot_random_seed: int = 1234
    random_baseline: float | None = Field(None, ge=0.0, lt=1.0)
    early_stopping_criteria: list[str] | None = None
    do_normalization: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> TaskDecl:
        if not _LABEL.match(self.label):
            raise ValueError(f"label {self.label!r} must match [A-Za-z][A-Za-z0-9_]*")
        if (self.dataset_uri is None) == (self.builtin is None):
            raise ValueError("give exactly one of 'dataset_uri' (a JSONL file) or 'builtin'")
        if any(k < 0 for k in self.num_fewshot) or len(set(self.num_fewshot)) != len(
            self.num_fewshot
        ):
            raise ValueError(f"num_fewshot must be distinct values >= 0, got {self.num_fewshot}")
        if self.builtin is not None:
            if self.builtin not in BUILTINS:
                raise ValueError(
                    f"unknown builtin {self.builtin!r}; allowed: {', '.join(sorted(BUILTINS))}"
                )
            kind, needs_source = BUILTINS[self.builtin]
            if kind != self.icl_task_type:
                raise ValueError(
                    f"builtin {self.builtin!r} is a {kind} task, not {self.icl_task_type}"
                )
            if needs_source and self.source is None:
                raise ValueError(f"builtin {self.builtin!r} needs 'source' (a held-out source)")
            if not needs_source and self.source is not None:
                raise ValueError(f"builtin {self.builtin!r} is not built from a source")
        elif self.source is not None or self.max_items is not None:
            raise ValueError("'source' and 'max_items' only apply to builtin tasks")
        if self.icl_task_type in CHOICE_TYPES and self.random_baseline is None:
            raise ValueError(
                f"a {self.icl_task_type} task needs 'random_baseline' (the accuracy of guessing, "
                "e.g. 0.25 for four choices): CORE centers accuracy on it"
            )
        qa_only = {"early_stopping_criteria", "do_normalization"} & self.model_fields_set
        if qa_only and self.icl_task_type != "question_answering":
            raise ValueError(f"{', '.join(sorted(qa_only))} only apply to question_answering")
        return self

    @property
    def baseline(self) -> float:
        """The declared random baseline (0 for generation and language modeling)."""
        return self.random_baseline or 0.0

    def names(self) -> list[str]:
        """Metric names of this entry: one task per few-shot count."""
        return [task_name(self.label, k) for k in self.num_fewshot]

    def resolve_file(self, home: Path) -> Path | None:
        """``dataset_uri`` as an absolute path under the path policy (relative: under ``home``,
        ``$CORPUSLAB_HOME``, as every declared path is; see ``declarations.resolve_path``)."""
        from corpuslab.declarations import resolve_path  # declarations imports this module

        if self.dataset_uri is None:
            return None
        return resolve_path(self.dataset_uri, home)


def task_name(label: str, k: int) -> str:
    """``<label>_<k>shot``: the name a task's metrics carry."""
    return f"{label}_{k}shot"


@dataclass(frozen=True)
class Item:
    """One task item, as scoring sees it: alternatives and which one is right.

    Multiple choice has one context and several continuations, schema several contexts and one
    continuation, language modeling and question answering one of each (``aliases`` are
    question answering's other right answers).
    """

    id: str
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int = 0
    aliases: tuple[str, ...] = ()
    category: str | None = None

    @property
    def n_alternatives(self) -> int:
        return max(len(self.contexts), len(self.continuations))

    def alternative(self, i: int) -> tuple[str, str]:
        """(context, continuation) of alternative ``i``."""
        ctx = self.contexts[i if len(self.contexts) > 1 else 0]
        cont = self.continuations[i if len(self.continuations) > 1 else 0]
        return ctx, cont

    def demonstration(self, delimiter: str) -> str:
        """The item with its right answer, as a few-shot example shows it."""
        ctx, cont = self.alternative(self.gold)
        return f"{ctx}{delimiter}{cont}"

    def text(self) -> str:
        """Context and right answer joined by a space: what decontamination compares."""
        ctx, cont = self.alternative(self.gold)
        return f"{ctx} {cont}"

    def to_json(self, task_type: str) -> dict[str, Any]:
        """The item back in its llm-foundry JSONL format."""
        if task_type == "multiple_choice":
            out: dict[str, Any] = {
                "query": self.contexts[0],
                "choices": list(self.continuations),
                "gold": self.gold,
            }
        elif task_type == "schema":
            out = {
                "context_options": list(self.contexts),
                "continuation": self.continuations[0],
                "gold": self.gold,
            }
        elif task_type == "language_modeling":
            out = {"context": self.contexts[0], "continuation": self.continuations[0]}
        else:
            out = {
                "context": self.contexts[0],
                "answer": self.continuations[0],
                "aliases": list(self.aliases),
            }
        if self.category is not None:
            out["category"] = self.category
        return {"id": self.id, **out}


def _string(record: dict, key: str, where: str, allow_empty: bool = False) -> str:
    if key not in record:
        raise TaskFileError(f"{where}: missing key {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise TaskFileError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value and not allow_empty:
        raise TaskFileError(f"{where}: {key!r} is empty")
    return value


def _strings(record: dict, key: str, where: str, min_len: int) -> tuple[str, ...]:
    if key not in record:
        raise TaskFileError(f"{where}: missing key {key!r}")
    value = record[key]
    if not isinstance(value, list) or len(value) < min_len:
        raise TaskFileError(f"{where}: {key!r} must be a list of at least {min_len} strings")
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            raise TaskFileError(f"{where}: {key}[{i}] must be a non-empty string")
        out.append(v.strip())
    return tuple(out)


def _gold(record: dict, n: int, where: str) -> int:
    gold = record.get("gold")
    if isinstance(gold, bool) or not isinstance(gold, int):
        raise TaskFileError(f"{where}: 'gold' must be an integer index, got {gold!r}")
    if not 0 <= gold < n:
        raise TaskFileError(f"{where}: 'gold'={gold} is outside the {n} alternatives")
    return gold


def parse_item(record: Any, task_type: str, has_categories: bool, where: str, id: str) -> Item:
    """One JSONL record as an :class:`Item`; :class:`TaskFileError` (naming ``where``) if bad."""
    if not isinstance(record, dict):
        raise TaskFileError(f"{where}: a line must hold a JSON object, got {type(record).__name__}")
    category = _string(record, "category", where) if has_categories else None
    if task_type == "multiple_choice":
        choices = _strings(record, "choices", where, 2)
        return Item(
            id=id,
            contexts=(_string(record, "query", where, allow_empty=True),),
            continuations=choices,
            gold=_gold(record, len(choices), where),
            category=category,
        )
    if task_type == "schema":
        options = _strings(record, "context_options", where, 2)
        return Item(
            id=id,
            contexts=options,
            continuations=(_string(record, "continuation", where),),
            gold=_gold(record, len(options), where),
            category=category,
        )
    if task_type == "language_modeling":
        return Item(
            id=id,
            contexts=(_string(record, "context", where, allow_empty=True),),
            continuations=(_string(record, "continuation", where),),
            category=category,
        )
    if task_type == "question_answering":
        aliases = _strings(record, "aliases", where, 0) if "aliases" in record else ()
        return Item(
            id=id,
            contexts=(_string(record, "context", where),),
            continuations=(_string(record, "answer", where),),
            aliases=aliases,
            category=category,
        )
    raise ValueError(f"unknown icl_task_type {task_type!r}")


def read_items(path: Path, task_type: str, has_categories: bool = False) -> list[Item]:
    """Every item of a JSONL task file; the first malformed line raises :class:`TaskFileError`.

    Blank lines are skipped; an item's id is its ``id`` field if it has one, else
    ``line<N>``. Ids must be unique (per-item results are joined on them).
    """
    if not path.is_file():
        raise TaskFileError(f"{path}: task file not found")
    items: list[Item] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskFileError(f"{where}: not valid JSON: {exc.msg}") from None
            raw_id = record.get("id") if isinstance(record, dict) else None
            item_id = str(raw_id) if raw_id is not None else f"line{n}"
            if item_id in seen:
                raise TaskFileError(f"{where}: id {item_id!r} repeats line {seen[item_id]}")
            seen[item_id] = n
            items.append(parse_item(record, task_type, has_categories, where, item_id))
    if not items:
        raise TaskFileError(f"{path}: no items")
    return items


def write_items(items: Sequence[Item], task_type: str, path: Path) -> None:
    """Write items in their llm-foundry JSONL format (with their ids), atomically."""
    from corpuslab.fileio import write_jsonl

    write_jsonl((item.to_json(task_type) for item in items), path)


def prompts(task: TaskDecl, items: Sequence[Item], k: int) -> list[list[tuple[str, str]]]:
    """Per item, its alternatives as (context, continuation) strings with ``k`` demonstrations.

    Demonstrations are drawn by :func:`corpuslab.eval.fewshot.fewshot_indices` (seeded with
    ``fewshot_random_seed`` and the item's index; never the item itself or a twin of it).
    """
    twins = twin_groups([item.contexts for item in items]) if k else {}
    delim = task.continuation_delimiter
    out = []
    for i, item in enumerate(items):
        prefix = task.prompt_string
        if k:
            shots = fewshot_indices(len(items), i, k, task.fewshot_random_seed, twins.get(i, ()))
            for j in shots:
                prefix += (task.example_delimiter if prefix else "") + items[j].demonstration(delim)
        sep = task.example_delimiter if prefix else ""
        alternatives = []
        for a in range(item.n_alternatives):
            ctx, cont = item.alternative(a)
            alternatives.append((f"{prefix}{sep}{ctx}{delim}", cont))
        out.append(alternatives)
    return out
