"""Task files in llm-foundry's formats, task declarations, and prompt construction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from corpuslab.eval.tasks import TaskDecl, TaskFileError, prompts, read_items


def write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_each_format_parses_into_items(tmp_path: Path) -> None:
    """multiple_choice, schema, language_modeling and question_answering lines become items."""
    mc = read_items(
        write(tmp_path / "mc.jsonl", [{"query": " Q ", "choices": ["a", "b "], "gold": 1}]),
        "multiple_choice",
    )
    assert mc[0].contexts == ("Q",) and mc[0].continuations == ("a", "b") and mc[0].gold == 1
    schema = read_items(
        write(
            tmp_path / "s.jsonl", [{"context_options": ["x", "y"], "continuation": "z", "gold": 0}]
        ),
        "schema",
    )
    assert schema[0].alternative(1) == ("y", "z")
    lm = read_items(
        write(tmp_path / "lm.jsonl", [{"context": "c", "continuation": "d"}, ""]),
        "language_modeling",
    )
    assert [i.id for i in lm] == ["line1"]
    qa = read_items(
        write(tmp_path / "qa.jsonl", [{"context": "c", "answer": "a", "aliases": ["b"], "id": 7}]),
        "question_answering",
    )
    assert qa[0].aliases == ("b",) and qa[0].id == "7"


@pytest.mark.parametrize(
    "line,task_type,message",
    [
        ('{"query": "q", "choices": ["a", "b"], "gold": 1', "multiple_choice", "not valid JSON"),
        ({"query": "q", "choices": ["a", "b"]}, "multiple_choice", "'gold' must be an integer"),
        ({"query": "q", "choices": ["a", "b"], "gold": 2}, "multiple_choice", "outside the 2"),
        ({"query": "q", "choices": ["a", "b"], "gold": True}, "multiple_choice", "integer index"),
        ({"query": "q", "choices": "ab", "gold": 0}, "multiple_choice", "list of at least 2"),
        ({"query": "q", "choices": ["a", ""], "gold": 0}, "multiple_choice", r"choices\[1\]"),
        ({"context_options": ["x"], "continuation": "z", "gold": 0}, "schema", "at least 2"),
        ({"context": "c"}, "language_modeling", "missing key 'continuation'"),
        ({"context": "c", "continuation": 3}, "language_modeling", "must be a string"),
        (["not", "an", "object"], "question_answering", "JSON object"),
    ],
)
def test_a_bad_line_names_the_file_and_line(
    tmp_path: Path, line: object, task_type: str, message: str
) -> None:
    """The first malformed line raises TaskFileError with ``<file>:<line>`` and the reason."""
    good = {
        "multiple_choice": {"query": "q", "choices": ["a", "b"], "gold": 0},
        "schema": {"context_options": ["x", "y"], "continuation": "z", "gold": 0},
        "language_modeling": {"context": "c", "continuation": "d"},
        "question_answering": {"context": "c", "answer": "a"},
    }[task_type]
    path = write(tmp_path / "task.jsonl", [good, good, line])
    with pytest.raises(TaskFileError, match=rf"{path}:3: .*{message}"):
        read_items(path, task_type)


def test_categories_and_repeated_ids_are_checked(tmp_path: Path) -> None:
    """has_categories needs a category on every line; ids must not repeat."""
    line = {"context": "c", "continuation": "d"}
    with pytest.raises(TaskFileError, match=r":1: missing key 'category'"):
        read_items(write(tmp_path / "a.jsonl", [line]), "language_modeling", has_categories=True)
    with pytest.raises(TaskFileError, match=r":2: id 'x' repeats line 1"):
        read_items(
            write(tmp_path / "b.jsonl", [{**line, "id": "x"}, {**line, "id": "x"}]),
            "language_modeling",
        )


def test_task_declarations_are_validated() -> None:
    """Choice tasks need a random baseline; builtins must exist and match their type."""
    with pytest.raises(ValidationError, match="needs 'random_baseline'"):
        TaskDecl(label="a", icl_task_type="multiple_choice", dataset_uri="a.jsonl")
    with pytest.raises(ValidationError, match="exactly one of 'dataset_uri'"):
        TaskDecl(label="a", icl_task_type="language_modeling")
    with pytest.raises(ValidationError, match="is a multiple_choice task"):
        TaskDecl(label="a", icl_task_type="language_modeling", builtin="next_sentence", source="s")
    with pytest.raises(ValidationError, match="unknown builtin 'nope'"):
        TaskDecl(label="a", icl_task_type="language_modeling", builtin="nope")
    with pytest.raises(ValidationError, match="only apply to question_answering"):
        TaskDecl(
            label="a", icl_task_type="language_modeling", dataset_uri="a", do_normalization=False
        )
    ok = TaskDecl(label="py_mc", icl_task_type="schema", dataset_uri="a", random_baseline=0.5,
                  num_fewshot=[0, 3])  # fmt: skip
    assert ok.names() == ["py_mc_0shot", "py_mc_3shot"]


def test_prompts_follow_llm_foundry_layout(tmp_path: Path) -> None:
    """prompt_string, demonstrations joined by example_delimiter, then the item's context."""
    items = read_items(
        write(
            tmp_path / "mc.jsonl",
            [{"query": f"Q{i}", "choices": [f"A{i}", f"B{i}"], "gold": i % 2} for i in range(3)],
        ),
        "multiple_choice",
    )
    task = TaskDecl(
        label="t",
        icl_task_type="multiple_choice",
        dataset_uri="mc.jsonl",
        random_baseline=0.5,
        prompt_string="Answer:",
        example_delimiter="\n",
        continuation_delimiter=" => ",
        num_fewshot=[2],
    )
    (zero,) = prompts(task, items[:1], 0)
    assert zero == [("Answer:\nQ0 => ", "A0"), ("Answer:\nQ0 => ", "B0")]
    shots = prompts(task, items, 2)
    ctx, _ = shots[0][0]
    # item 0's demonstrations are items 1 and 2 with their right answers, never item 0
    assert ctx in ("Answer:\nQ1 => B1\nQ2 => A2\nQ0 => ", "Answer:\nQ2 => A2\nQ1 => B1\nQ0 => ")
