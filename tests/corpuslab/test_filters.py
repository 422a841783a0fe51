"""Heuristic steps on real text: each drop names the step and reason that caused it."""

from __future__ import annotations

import inspect
import json

import pytest
from pydantic import ValidationError

from corpuslab.filters import Pipeline, StepError, parse_step

PROSE = inspect.getdoc(json) or ""  # the json module's docstring: ordinary English prose


def test_prose_passes_gopher_rules() -> None:
    pipe = Pipeline.from_decls(
        ["word_count", "mean_word_length", "symbol_ratio", "repeated_lines", "exact_dedup"]
    )
    assert pipe.run([PROSE]) == [None]


def test_word_count_reasons() -> None:
    pipe = Pipeline.from_decls([{"word_count": {"min_words": 50, "max_words": 200}}])
    short = " ".join(PROSE.split()[:10])
    long = " ".join(PROSE.split() * 10)
    assert pipe.run([short, long]) == [
        ("word_count", "too_few_words"),
        ("word_count", "too_many_words"),
    ]


def test_mean_word_length_and_symbols() -> None:
    glued = " ".join(w * 6 for w in PROSE.split())  # words six times longer than English
    hashes = "\n".join(f"# {w}" for w in PROSE.split())  # one '#' per word
    pipe = Pipeline.from_decls(["mean_word_length", "symbol_ratio"])
    assert pipe.run([glued, hashes]) == [
        ("mean_word_length", "mean_word_length_too_long"),
        ("symbol_ratio", "symbol_to_word_ratio"),
    ]


def test_repeated_lines() -> None:
    lines = [line for line in PROSE.splitlines() if line.strip()]
    repeated = "\n".join(lines + lines[:] + lines[:])  # two thirds of lines are repeats
    assert Pipeline.from_decls(["repeated_lines"]).run([repeated]) == [
        ("repeated_lines", "duplicate_line_fraction")
    ]


def test_first_failing_step_names_the_reason() -> None:
    pipe = Pipeline.from_decls([{"word_count": {"min_words": 10}}, "symbol_ratio"])
    assert pipe.run(["# a # b # c"]) == [("word_count", "too_few_words")]


def test_exact_dedup_within_shard_is_whitespace_and_case_blind() -> None:
    pipe = Pipeline.from_decls(["exact_dedup"])
    variant = "  " + PROSE.upper().replace(" ", "   ")
    assert pipe.run([PROSE, variant, PROSE[:-5]]) == [
        None,
        ("exact_dedup", "exact_duplicate"),
        None,
    ]
    assert pipe.run([variant]) == [None]  # state resets per shard


def test_bad_declarations() -> None:
    with pytest.raises(StepError, match="unknown step 'nope'; allowed: exact_dedup"):
        parse_step({"nope": {}})
    with pytest.raises(ValidationError, match="min_words"):
        parse_step({"word_count": {"min_words": 10, "max_words": 5}})
    with pytest.raises(ValidationError, match="extra"):
        parse_step({"symbol_ratio": {"maximum": 0.2}})
