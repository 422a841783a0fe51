"""Evaluation declarations: suites, run evals and seeds, studies; each error names file and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from corpuslab.declarations import DeclarationError, load_experiment
from corpuslab.stages.versions import code_version
from tests.conftest import TINY_EXPERIMENT, write_experiment


def _exp(tmp_path: Path, **overrides: str) -> Path:
    files = dict(TINY_EXPERIMENT)
    files.update({k: textwrap.dedent(v) for k, v in overrides.items()})
    return write_experiment(tmp_path / "exp", files)


def _error(tmp_path: Path, **overrides: str) -> str:
    with pytest.raises(DeclarationError) as info:
        load_experiment(_exp(tmp_path, **overrides))
    return str(info.value)


EVALS = TINY_EXPERIMENT["evals.yaml"]


def _evals(*pairs: str) -> dict[str, str]:
    """The tiny evals.yaml with (old, new) replacements applied once each, in order."""
    text = EVALS
    for old, new in zip(pairs[::2], pairs[1::2], strict=True):
        assert old in text
        text = text.replace(old, new, 1)
    return {"evals.yaml": text}


def test_tiny_experiment_declares_a_suite_seeds_and_a_study(tmp_path: Path) -> None:
    exp = load_experiment(_exp(tmp_path))
    assert exp.runs["smoke_b"].replicates() == [0, 1]
    assert exp.runs["smoke"].replicates() == [None]
    assert exp.reservation("reference") == {"tiny_suite": 0.5}
    assert exp.reserved_fraction("code") == 0.0
    assert exp.evals["tiny_suite"].task_names() == [
        "next_0shot", "sig_0shot", "sig_1shot", "word_0shot"
    ]  # fmt: skip
    assert exp.studies["tiny_study"].suite == "tiny_suite"


def test_a_run_names_an_unknown_suite(tmp_path: Path) -> None:
    runs = TINY_EXPERIMENT["runs.yaml"].replace("evals: [tiny_suite]", "evals: [nope]", 1)
    msg = _error(tmp_path, **{"runs.yaml": runs})
    assert "runs.yaml: runs.smoke.evals[0]: unknown 'nope'; allowed: tiny_suite" in msg


def test_suite_sources_and_task_files_must_exist(tmp_path: Path) -> None:
    msg = _error(
        tmp_path / "a", **_evals("fraction_of: {reference: 0.5}", "fraction_of: {refs: 0.5}")
    )
    assert "evals.tiny_suite.heldout.fraction_of.refs: unknown 'refs'" in msg
    msg = _error(
        tmp_path / "b", **_evals("next_sentence, source: reference", "next_sentence, source: code")
    )
    assert "evals.tiny_suite.tasks[0].source: 'code' is not held out by suite 'tiny_suite'" in msg
    msg = _error(
        tmp_path / "c",
        **_evals(
            "builtin: next_sentence, source: reference,",
            "dataset_uri: tasks/t.jsonl,",
            "random_baseline: 0.25, max_items: 16}",
            "random_baseline: 0.25}",
        ),
    )
    assert "evals.tiny_suite.tasks[0].dataset_uri:" in msg and "tasks/t.jsonl is not a file" in msg


def test_a_task_entry_is_checked_with_its_key_path(tmp_path: Path) -> None:
    msg = _error(
        tmp_path / "a", **_evals("random_baseline: 0.25, max_items: 16}", "max_items: 16}")
    )
    assert "evals.yaml: evals.tiny_suite.tasks.0:" in msg and "needs 'random_baseline'" in msg
    msg = _error(tmp_path / "b", **_evals("random_baseline: 0.25", "random_baselin: 0.25"))
    assert "unknown key 'random_baselin'" in msg and "allowed:" in msg and "num_fewshot" in msg


def test_a_whole_source_held_out_cannot_be_trained_on(tmp_path: Path) -> None:
    msg = _error(tmp_path, **_evals("fraction_of: {reference: 0.5}", "sources: [reference]"))
    assert "recipes.lenient.quality.positive_source: source 'reference' is held out" in msg
    assert "evals.tiny_suite.heldout.sources" in msg


def test_studies_are_cross_checked(tmp_path: Path) -> None:
    base = TINY_EXPERIMENT["runs.yaml"]
    head = "tiny_study: {runs: [smoke, smoke_b], baseline: smoke, metric: tiny_suite.core,"

    def study(body: str) -> dict[str, str]:
        assert head in base
        return {"runs.yaml": base.replace(head, body)}

    msg = _error(
        tmp_path / "a",
        **study("tiny_study: {runs: [smoke, smoke_b], baseline: nope, metric: tiny_suite.core,"),
    )
    assert "studies.tiny_study.baseline: unknown 'nope'; allowed: smoke, smoke_b" in msg
    msg = _error(
        tmp_path / "b",
        **study(
            "tiny_study: {runs: [smoke, smoke_b], baseline: smoke, metric: tiny_suite.next.acc,"
        ),
    )
    assert "studies.tiny_study.metric: tiny_suite.next.acc: unknown task 'next'" in msg
    assert "allowed: next_0shot, sig_0shot, sig_1shot, word_0shot" in msg
    msg = _error(
        tmp_path / "c",
        **study("tiny_study: {runs: [smoke, smoke_b], baseline: smoke, metric: other.core,"),
    )
    assert "names no declared suite; allowed suites: tiny_suite" in msg
    msg = _error(
        tmp_path / "e",
        **study("tiny_study: {runs: [smoke, ghost], baseline: smoke, metric: tiny_suite.core,"),
    )
    assert "studies.tiny_study.runs[1]: unknown 'ghost'; allowed: child, smoke, smoke_b" in msg
    runs = base.replace("            evals: [tiny_suite]\n", "", 1).replace(
        "eval_every: 4", "eval_every: 0"
    )
    msg = _error(tmp_path / "d", **{"runs.yaml": runs})
    assert "run 'smoke' is not evaluated on suite 'tiny_suite'" in msg


def test_seeds_and_trajectory_evaluation_are_checked(tmp_path: Path) -> None:
    runs = TINY_EXPERIMENT["runs.yaml"]
    msg = _error(tmp_path / "a", **{"runs.yaml": runs.replace("seeds: [0, 1]", "seeds: [0, 0]")})
    assert "seeds must be distinct" in msg
    msg = _error(tmp_path / "b", **{"runs.yaml": runs.replace("eval_every: 4", "eval_every: 3")})
    assert "runs.smoke.eval.eval_every: 3 must be a multiple of train.checkpoint_every (4)" in msg
    child = runs.replace(
        "        studies:",
        "          heir: {mixture: small, model: {n_layer: 1, n_head: 2, d_model: 32},\n"
        "                 init_from: {run: smoke_b, layers: 1}}\n        studies:",
    )
    msg = _error(tmp_path / "c", **{"runs.yaml": child})
    assert "runs.heir.init_from.run: 'smoke_b' declares seeds" in msg


def test_a_held_out_slice_changes_only_the_pools_it_takes_from(tmp_path: Path) -> None:
    """Reserving half of 'docstrings' restales pools over docstrings, not the others."""
    before = load_experiment(_exp(tmp_path / "a"))
    evals = TINY_EXPERIMENT["evals.yaml"].replace(
        "fraction_of: {reference: 0.5}", "fraction_of: {reference: 0.5, packages: 0.1}"
    )
    after = load_experiment(_exp(tmp_path / "b", **{"evals.yaml": evals}))
    assert code_version(before, "pool", "strict") != code_version(after, "pool", "strict")
    assert code_version(before, "pool", "lenient") == code_version(after, "pool", "lenient")
    # the quality model's positives (reference) lose their held-out half in both
    assert code_version(before, "quality_model", "lenient") == code_version(
        after, "quality_model", "lenient"
    )
    # seeds are part of a replicate's version, not of the run's other replicates
    assert code_version(after, "train", "smoke_b", 0) != code_version(after, "train", "smoke_b", 1)
