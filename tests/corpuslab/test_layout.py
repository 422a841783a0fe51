"""One home setting, a local folder or s3://bucket/prefix: where its working copy, this machine's
state and its declared relative paths go."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpuslab.declarations import DeclarationError, load_experiment
from corpuslab.layout import Layout, cache_root, home_location
from tests.conftest import write_experiment


def test_an_s3_home_works_in_a_working_copy_under_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORPUSLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CORPUSLAB_HOME", "s3://bucket/team/exp1/")
    assert cache_root() == tmp_path / "cache"
    assert home_location() == "s3://bucket/team/exp1"
    layout = Layout.from_env()
    assert layout.remote == "s3://bucket/team/exp1" and layout.location == layout.remote
    assert layout.home == tmp_path / "cache" / "s3" / "bucket" / "team" / "exp1" / "work"
    # the Dagster instance and MLflow's SQLite store are this machine's, beside the copy
    assert layout.dagster_home == layout.home.parent / "machine" / "dagster"
    assert layout.mlflow_uri.endswith("/machine/mlflow/mlflow.db")
    assert layout.mlflow_artifact_root == "s3://bucket/team/exp1/mlflow/artifacts"
    pool = layout.pool_dir("r", "code") / "part-0.parquet"
    assert layout.relative(pool) == "data/pool/recipe=r/source=code/part-0.parquet"
    assert layout.url(pool) == "s3://bucket/team/exp1/data/pool/recipe=r/source=code/part-0.parquet"
    with pytest.raises(ValueError, match="not under the home"):
        layout.relative(tmp_path / "elsewhere")


def test_a_local_home_is_used_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORPUSLAB_HOME", str(tmp_path / "home"))
    layout = Layout.from_env()
    assert layout.remote is None and layout.home == tmp_path / "home"
    assert layout.dagster_home == tmp_path / "home" / "dagster"
    assert layout.mlflow_artifact_root == (tmp_path / "home" / "mlflow" / "artifacts").as_uri()
    assert layout.url(layout.data) == str(tmp_path / "home" / "data")


@pytest.mark.parametrize("bad", ["s3://", "s3://bucket/../x", "s3://bucket//x", "gs://bucket/x"])
def test_a_home_location_that_is_not_a_folder_or_an_s3_prefix_is_refused(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORPUSLAB_HOME", bad)
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        home_location()


def test_relative_sources_of_an_s3_home_are_prefixes_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORPUSLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DATA", str(tmp_path / "data"))
    exp_dir = write_experiment(
        tmp_path / "exp",
        {
            "sources.yaml": """
                sources:
                  code: {path: raw/code}
                  top: {path: .}
                  local: {path: $DATA/crawl}
                  lake: {path: "s3://other/lake"}
            """
        },
    )
    exp = load_experiment(exp_dir, home="s3://bucket/exp")
    layout = Layout.for_location("s3://bucket/exp")
    assert exp.remote == "s3://bucket/exp" and exp.home == layout.home
    assert exp.sources["code"].resolve(layout) == "s3://bucket/exp/raw/code"
    assert exp.sources["top"].resolve(layout) == "s3://bucket/exp"
    assert exp.sources["local"].resolve(layout) == str(tmp_path / "data" / "crawl")
    assert exp.sources["lake"].resolve(layout) == "s3://other/lake"


def test_a_declared_file_relative_to_an_s3_home_is_an_error_at_load(tmp_path: Path) -> None:
    exp_dir = write_experiment(
        tmp_path / "exp",
        {
            "sources.yaml": "sources: {code: {path: raw/code}}",
            "recipes.yaml": "recipes: {r: {sources: [code]}}",
            "mixtures.yaml": "mixtures: {m: {recipe: r, token_budget: 1000, "
            "tokenizer: {file: tok/tokenizer.json}}}",
        },
    )
    with pytest.raises(DeclarationError, match=r"mixtures\.m\.tokenizer\.file.*s3://bucket/exp"):
        load_experiment(exp_dir, home="s3://bucket/exp")
