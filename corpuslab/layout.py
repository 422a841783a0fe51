"""Where every artifact lives: one home, a local folder or an ``s3://bucket/prefix``.

One place decides paths so that the Dagster layer, the training entry point and dbt agree.

The home is one setting, ``CORPUSLAB_HOME``. A local folder is used in place. An object-store
home (``s3://bucket/prefix``) is worked on through a local *working copy* under the cache
folder (``$CORPUSLAB_CACHE``, default ``~/.cache/corpuslab``): stages read and write local
paths there, and :mod:`corpuslab.home` synchronizes it with the store around each stage (its
declared inputs pulled, its outputs pushed; :mod:`corpuslab.stages.io` lists them). This is
how Flyte, Metaflow and Composer treat object storage too: POSIX code on a local disk,
objects moved whole at the boundaries. :attr:`Layout.home` is always the local root the stages
see; :attr:`Layout.remote` the store it mirrors, if any.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

HOME_ENV = "CORPUSLAB_HOME"
CACHE_ENV = "CORPUSLAB_CACHE"
S3_SCHEME = "s3://"
DEFAULT_HOME = ".corpuslab"


def cache_root() -> Path:
    """The machine's cache folder: ``$CORPUSLAB_CACHE``, else ``$XDG_CACHE_HOME/corpuslab``,
    else ``~/.cache/corpuslab``. Everything under it can be deleted and rebuilt (from the store,
    or by measuring again), except what :attr:`Layout.machine` keeps for a remote home."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache").absolute() / "corpuslab"


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether a home location names object storage (``s3://``) rather than a local folder."""
    return isinstance(location, str) and location.startswith(S3_SCHEME)


def home_location() -> str:
    """``$CORPUSLAB_HOME`` as given when it is an ``s3://`` URL, else the absolute local folder
    (default ``./.corpuslab`` under the working directory)."""
    value = os.environ.get(HOME_ENV) or ""
    if is_remote(value):
        return normalize_remote(value)
    if "://" in value:
        raise ValueError(
            f"{HOME_ENV}={value!r}: unsupported scheme; use a local folder or s3://bucket/prefix"
        )
    return str(Path(value or Path.cwd() / DEFAULT_HOME).resolve())


def normalize_remote(url: str) -> str:
    """``s3://bucket/prefix`` without trailing slashes; an error without a bucket, or with
    ``.`` or ``..`` segments (a key that escapes its prefix)."""
    path = url[len(S3_SCHEME) :].strip("/")
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{url!r} is not an s3://bucket/prefix location")
    return S3_SCHEME + path


def default_home() -> Path:
    """The local root of the home: the folder itself, or the working copy of a remote home."""
    return Layout.from_env().home


@dataclass(frozen=True)
class Layout:
    """Paths of every stage's outputs below ``home``, and the store ``home`` mirrors, if any.

    ``remote``: the ``s3://`` home whose working copy ``home`` is (None: a local home).
    ``machine``: where this machine keeps its own state for a remote home (the Dagster
    instance, MLflow's SQLite store by default); a local home keeps them in the home itself.
    """

    home: Path
    remote: str | None = None
    machine_dir: Path | None = None

    @classmethod
    def from_env(cls) -> Layout:
        return cls.for_location(home_location())

    @classmethod
    def for_location(cls, location: str | Path, cache: Path | None = None) -> Layout:
        """The layout of a home given as a local folder or an ``s3://`` URL.

        A remote home's working copy is ``<cache>/s3/<bucket>/<prefix>/work`` and its machine
        state ``.../machine`` (``cache`` defaults to :func:`cache_root`).
        """
        if isinstance(location, str) and is_remote(location):
            url = normalize_remote(location)
            base = (cache or cache_root()) / "s3" / url[len(S3_SCHEME) :]
            return cls(base / "work", remote=url, machine_dir=base / "machine")
        return cls(Path(location).absolute())

    @property
    def location(self) -> str:
        """The home as a user names it: the ``s3://`` URL, or the local folder."""
        return self.remote or str(self.home)

    @property
    def machine(self) -> Path:
        """This machine's own state (Dagster instance, MLflow SQLite): never synchronized."""
        return self.machine_dir or self.home

    def relative(self, path: Path) -> str:
        """``path`` (under ``home``) as a POSIX path relative to it: its key below the remote."""
        try:
            return PurePosixPath(Path(path).absolute().relative_to(self.home)).as_posix()
        except ValueError:
            raise ValueError(f"{path} is not under the home {self.home}") from None

    def url(self, path: Path) -> str:
        """Where ``path`` lives for a person: its ``s3://`` URL for a remote home, else itself."""
        if self.remote is None:
            return str(path)
        return f"{self.remote}/{self.relative(path)}"

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
        """MLflow's default SQLite store and artifacts: machine state for a remote home."""
        return self.machine / "mlflow"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def mlflow_artifact_root(self) -> str:
        """Where MLflow stores run artifacts: ``<remote>/mlflow/artifacts`` for a remote home
        (MLflow's own S3 artifact store), else the local artifacts folder as a ``file://`` URI."""
        if self.remote is not None:
            return f"{self.remote}/mlflow/artifacts"
        return self.mlflow_artifacts.absolute().as_uri()

    @property
    def duckdb_path(self) -> Path:
        return self.home / "stats.duckdb"

    @property
    def dagster_home(self) -> Path:
        """The default Dagster instance folder: machine state for a remote home."""
        return self.machine / "dagster"
