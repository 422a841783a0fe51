"""Fixtures shared across the session, each built once: the tiny raw corpus, the raw files of
every format, a token file, one S3 server, and one tiny home materialized through Dagster.

Everything is real (demo-corpus text, moto's S3 server on 127.0.0.1, DeepSpeed on CPU, a
SQLite Dagster instance and MLflow store); tests read these and build their own copies to
change anything.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

if TYPE_CHECKING:
    import dagster as dg

    from tests.corpuslab.ingest.test_storage import S3Server

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
                    checkpoint_every: 4, lawa_k: 2}
            eval: {max_docs_per_domain: 5, eval_every: 4}
            evals: [tiny_suite]
          child:
            mixture: small
            model: {n_layer: 1, n_head: 2, d_model: 32}
            deepspeed: zero3
            ranks: 2
            train: {steps: 2, micro_batch_size: 2, warmup_steps: 0, log_every: 1}
            init_from: {run: smoke, layers: 1}
            eval: {max_docs_per_domain: 5}
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


def edit_experiment(exp_dir: Path, dst: Path, file: str, old: str, new: str) -> Path:
    """A copy of a declarations folder at ``dst`` with ``old`` replaced by ``new`` in ``file``."""
    shutil.copytree(exp_dir, dst)
    text = (dst / file).read_text()
    assert old in text, f"{old!r} is not in {file}"
    (dst / file).write_text(text.replace(old, new, 1))
    return dst


STRICT_DEDUP = (  # the strict recipe's dedup threshold, as TINY_EXPERIMENT declares it
    "threshold: 0.8}\n    quality: {positive_source: reference, negative_sample: 60, "
    "keep_fraction: 0.8}"
)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo corpus builder on small caps: real Python text, 2 shards per source."""
    from corpuslab.ingest.democorpus import build_demo_corpus

    raw = tmp_path_factory.mktemp("raw")
    build_demo_corpus(raw, max_docs_per_source=60, docs_per_shard=30)
    return raw


class Materialized(NamedTuple):
    """The tiny experiment materialized through Dagster: its home, declarations, instance, runs."""

    home: Path
    exp_dir: Path
    instance: dg.DagsterInstance
    reports: list[Any]  # cli.materialize.RunReport, one a Dagster run


@pytest.fixture(scope="session")
def materialized(
    tmp_path_factory: pytest.TempPathFactory, tiny_raw: Path
) -> Iterator[Materialized]:
    """Every asset of the tiny experiment, materialized once a session on a temporary instance.

    Partitions come from the shard sensor's own helper; the rest is what ``make demo`` does
    (``corpuslab materialize``: the automation conditions evaluated until nothing is due),
    DeepSpeed really training (CPU, gloo) through Pipes, dbt-duckdb really building the
    statistics. Tests must not change this home: copy it.
    """
    import dagster as dg

    from assets.partitions import shard_partitions
    from cli.materialize import materialize
    from corpuslab.declarations import load_experiment
    from corpuslab.layout import Layout
    from definitions import build
    from jobs.sensors import shard_requests

    base = tmp_path_factory.mktemp("e2e")
    home = base / "home"
    shutil.copytree(tiny_raw, home / "raw")
    exp_dir = write_experiment(base / "experiments")
    mp = pytest.MonkeyPatch()
    mp.setenv("CORPUSLAB_HOME", str(home))
    mp.setenv("DS_ACCELERATOR", "cpu")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    (base / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(base / "dagster")) as instance:
        defs = build(exp_dir, home=home, now=True)
        for source, keys in shard_requests(
            load_experiment(exp_dir), Layout(home), instance
        ).items():
            instance.add_dynamic_partitions(shard_partitions(source).name, keys)
        reports = materialize(defs, instance, log=lambda _: None)
        yield Materialized(home, exp_dir, instance, reports)
    mp.undo()


@pytest.fixture(scope="session")
def tokens_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real token file (Python's help topics, a BPE trained on them), shared by the trainers."""
    from tests.training import build_token_file

    return build_token_file(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="session")
def raw_formats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/raw``: every raw format, corrupt files among them (see ``build_raw``)."""
    from tests.corpuslab.ingest.test_storage import build_raw

    return build_raw(tmp_path_factory.mktemp("formats") / "raw")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1, started once; each test module uses its own bucket."""
    from tests.corpuslab.ingest.test_storage import moto_server

    with moto_server() as server:
        yield server


os.environ.setdefault("DS_ACCELERATOR", "cpu")
