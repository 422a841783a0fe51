"""Where every artifact lives under one home folder (``CORPUSLAB_HOME``).

One place decides paths so that the Dagster layer, the training entry point and dbt agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "CORPUSLAB_HOME"


def default_home() -> Path:
    """The home folder: ``$CORPUSLAB_HOME`` or ``./.corpuslab`` under the working directory."""
    return Path(os.environ.get(HOME_ENV) or Path.cwd() / ".corpuslab").resolve()


@dataclass(frozen=True)
class Layout:
    """Paths of every stage's outputs below ``home``."""

    home: Path

    @classmethod
    def from_env(cls) -> Layout:
        return cls(default_home())

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def raw(self) -> Path:
        """Where the demo corpus builder writes its JSONL shards."""
        return self.home / "raw"

    def corpus_dir(self, source: str) -> Path:
        return self.data / "corpus" / f"source={source}"

    def quarantine_dir(self, source: str) -> Path:
        return self.data / "quarantine" / f"source={source}"

    def pool_dir(self, recipe: str, source: str) -> Path:
        return self.data / "pool" / f"recipe={recipe}" / f"source={source}"

    def decisions_dir(self, stage: str, source: str, recipe: str | None = None) -> Path:
        """Per-document keep/drop decisions of one stage; dbt reads these for its counts.

        Hive-style folders (``stage=/recipe=/source=``) let DuckDB read them as columns.
        """
        return (
            self.data
            / "decisions"
            / f"stage={stage}"
            / f"recipe={recipe or '_'}"
            / f"source={source}"
        )

    def dropped_dir(self, recipe: str, source: str) -> Path:
        return self.data / "dropped" / f"recipe={recipe}" / f"source={source}"

    def dedup_dir(self, recipe: str) -> Path:
        return self.data / "dedup" / f"recipe={recipe}"

    def dedup_decisions_dir(self, recipe: str, source: str) -> Path:
        """Per-shard dedup decisions: together with the signature cache, the recipe's index."""
        return self.dedup_dir(recipe) / "decisions" / f"source={source}"

    def quality_dir(self, recipe: str) -> Path:
        return self.data / "quality" / f"recipe={recipe}"

    def scores_dir(self, recipe: str, source: str) -> Path:
        """Per-shard quality scores of the documents the classifier saw (dbt's histogram)."""
        return self.data / "scores" / f"recipe={recipe}" / f"source={source}"

    def filtered_dir(self, recipe: str, source: str) -> Path:
        return self.data / "filtered" / f"recipe={recipe}" / f"source={source}"

    def tokenizer_dir(self, mixture: str) -> Path:
        return self.data / "tokenizer" / f"mixture={mixture}"

    def mixture_dir(self, mixture: str) -> Path:
        return self.data / "mixture" / f"mixture={mixture}"

    def tokens_dir(self, mixture: str) -> Path:
        return self.data / "tokens" / f"mixture={mixture}"

    def encoded_dir(self, tokenizer_owner: str) -> Path:
        """Per-shard token ids of filtered pools, cached per tokenizer (shared by its mixtures)."""
        return self.data / "encoded" / f"tokenizer={tokenizer_owner}"

    def doremi_dir(self, mixture: str) -> Path:
        """DoReMi's reference and proxy runs and the resulting weights of one mixture."""
        return self.home / "doremi" / mixture

    def run_dir(self, run: str, seed: int | None = None) -> Path:
        """A run's folder; a run declared with ``seeds`` has one per seed (``seed<k>``)."""
        base = self.home / "runs" / run
        return base if seed is None else base / f"seed{seed}"

    def eval_dir(self, run: str, seed: int | None = None) -> Path:
        base = self.data / "eval" / f"run={run}"
        return base if seed is None else base / f"seed={seed}"

    def evalset_dir(self, suite: str) -> Path:
        """A suite's fixed evaluation set: task items, held-out documents, manifest."""
        return self.data / "evalset" / f"suite={suite}"

    def compare_dir(self, study: str) -> Path:
        """A study's statistics and its report (Markdown, HTML, plots)."""
        return self.data / "compare" / f"study={study}"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def duckdb_path(self) -> Path:
        return self.home / "stats.duckdb"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"
