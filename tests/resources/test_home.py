"""The ``home`` resource and the local environment with an s3:// home: one setting decides where
outputs, the working copy and MLflow's artifacts go."""

from __future__ import annotations

from pathlib import Path

import pytest

from resources import environments


def test_an_s3_home_sets_the_working_copy_and_mlflow_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORPUSLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CORPUSLAB_WORKING_COPY", "per-step")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = environments.local("s3://bucket/exp")
    home, mlflow = res["home"], res["mlflow"]
    assert home.home == "s3://bucket/exp" and home.per_step
    assert home.open().remote == "s3://bucket/exp"
    assert home.layout().home == tmp_path / "cache" / "s3" / "bucket" / "exp" / "work"
    assert mlflow.artifact_root == "s3://bucket/exp/mlflow/artifacts"
    assert mlflow.tracking_uri.startswith(f"sqlite:///{tmp_path / 'cache'}/s3/bucket/exp/machine/")


def test_a_local_home_keeps_everything_in_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CORPUSLAB_WORKING_COPY", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = environments.local(tmp_path / "home")
    assert res["home"].home == str(tmp_path / "home") and not res["home"].per_step
    assert res["home"].open().remote is None
    assert res["mlflow"].artifact_root == (tmp_path / "home" / "mlflow" / "artifacts").as_uri()


def test_an_unknown_working_copy_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORPUSLAB_WORKING_COPY", "private")
    with pytest.raises(ValueError, match="allowed: shared, per-step"):
        environments.local("s3://bucket/exp")
