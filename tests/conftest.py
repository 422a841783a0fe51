"""Shared fixtures: a tiny real experiment (demo corpus text, small caps) in a temp home."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

TINY_EXPERIMENT = {
    "sources.yaml": """
        sources:
          reference: {path: raw/reference}
          docstrings: {path: raw/docstrings}
          code: {path: raw/code}
          packages: {path: raw/packages}
    """,
    "recipes.yaml": """
        recipes:
          lenient:
            sources: [docstrings, code]
            steps:
              - gopher_quality: {min_words: 20, min_alpha_words_ratio: null, min_stop_words: null}
              - exact_dedup: {}
            dedup: {ngram: 5, num_perm: 64, threshold: 0.8}
            quality: {positive_source: reference, negative_sample: 60, keep_fraction: 0.9}
          strict:
            sources: [docstrings, packages]
            steps:
              - gopher_quality: {}
              - gopher_repetition: {}
            dedup: {ngram: 5, num_perm: 64, threshold: 0.8}
            quality: {positive_source: reference, negative_sample: 60, keep_fraction: 0.8}
    """,
    "mixtures.yaml": """
        mixtures:
          small:
            recipe: lenient
            token_budget: 20000
            seq_len: 32
            heldout_fraction: 0.1
            tokenizer: {vocab_size: 512}
          dro:
            recipe: lenient
            strategy: doremi
            token_budget: 20000
            seq_len: 32
            heldout_fraction: 0.1
            tokenizer: {mixture: small}
            doremi:
              reference: small
              model: {n_layer: 1, n_head: 2, d_model: 32}
              train: {steps: 6, micro_batch_size: 4, warmup_steps: 2, log_every: 2}
          entropic:
            recipe: lenient
            strategy: entropy
            token_budget: 20000
            seq_len: 32
            heldout_fraction: 0.1
            tokenizer: {mixture: small}
    """,
    "runs.yaml": """
        runs:
          smoke:
            mixture: small
            model: {n_layer: 1, n_head: 2, d_model: 32}
            deepspeed: zero2
            train: {steps: 8, micro_batch_size: 4, warmup_steps: 2, log_every: 2,
                    checkpoint_every: 4}
            eval: {max_docs_per_domain: 5, eval_every: 4}
            evals: [tiny_suite]
          smoke_b:                    # a higher learning rate, replicated on two seeds
            mixture: small
            model: {n_layer: 1, n_head: 2, d_model: 32}
            deepspeed: zero2
            train: {steps: 8, micro_batch_size: 4, warmup_steps: 2, log_every: 2, lr: 3.0e-3}
            eval: {max_docs_per_domain: 5}
            evals: [tiny_suite]
            seeds: [0, 1]
        studies:                      # beside the runs it compares
          tiny_study: {runs: [smoke, smoke_b], baseline: smoke, metric: tiny_suite.core,
                       n_boot: 200}
    """,
    "evals.yaml": """
        evals:
          tiny_suite:
            heldout: {fraction_of: {reference: 0.5}, max_docs: 8}
            tasks:
              - {label: next, builtin: next_sentence, source: reference,
                 icl_task_type: multiple_choice, random_baseline: 0.25, max_items: 16}
              - {label: sig, builtin: signature_docstring, icl_task_type: multiple_choice,
                 random_baseline: 0.25, max_items: 16, num_fewshot: [0, 1],
                 continuation_delimiter: "\\n\\n"}
              - {label: word, builtin: heldout_lm, source: reference,
                 icl_task_type: language_modeling, max_items: 16}
    """,
}


def write_experiment(folder: Path, files: dict[str, str] = TINY_EXPERIMENT) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        (folder / name).write_text(textwrap.dedent(body))
    return folder


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo corpus builder on small caps: real Python text, 2 shards per source."""
    from corpuslab.ingest.democorpus import build_demo_corpus

    raw = tmp_path_factory.mktemp("raw")
    build_demo_corpus(raw, max_docs_per_source=60, docs_per_shard=30)
    return raw


@pytest.fixture()
def tiny_home(tmp_path: Path, tiny_raw: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh CORPUSLAB_HOME with the tiny raw corpus and a tiny experiment declared."""
    home = tmp_path / "home"
    shutil.copytree(tiny_raw, home / "raw")
    monkeypatch.setenv("CORPUSLAB_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("CORPUSLAB_EXPERIMENTS", str(write_experiment(tmp_path / "experiments")))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (home / "dagster").mkdir(parents=True)
    return home


os.environ.setdefault("DS_ACCELERATOR", "cpu")
