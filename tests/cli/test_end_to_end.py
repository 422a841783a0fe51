"""End to end through Dagster: a tiny real experiment materialized in-process, then staleness.

A temporary Dagster instance and a SQLite MLflow store; DeepSpeed really trains (CPU, gloo) in
a subprocess launched through Pipes; dbt-duckdb really builds the statistics.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import mlflow
import pytest
from dagster._core.definitions.data_version import StaleStatus

from assets.partitions import shard_partitions
from cli.materialize import RunReport, materialize_stale, needs_rebuild, stale_status
from corpuslab.declarations import load_experiment
from corpuslab.layout import Layout
from definitions import build
from jobs.sensors import shard_requests


@pytest.fixture(scope="module")
def materialized(
    tmp_path_factory: pytest.TempPathFactory, tiny_raw: Path
) -> tuple[Path, Path, dg.DagsterInstance, list[RunReport]]:
    from tests.conftest import write_experiment

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
        defs = build(exp_dir, home=home)
        for source, keys in shard_requests(
            load_experiment(exp_dir), Layout(home), instance
        ).items():
            instance.add_dynamic_partitions(shard_partitions(source).name, keys)
        reports = materialize_stale(defs, instance, log=lambda _: None)
        yield home, exp_dir, instance, reports
    mp.undo()


def test_everything_materialized_and_checks_passed(materialized) -> None:  # type: ignore[no-untyped-def]
    home, exp_dir, instance, reports = materialized
    assert reports and all(r.success for r in reports)
    checks = {k: v for r in reports for k, v in r.checks.items()}
    assert checks and all(checks.values()), checks
    # conservation checked on every shard of every sharded stage (2 shards per source)
    assert sum(k.startswith("corpus/code:documents_conserved") for k in checks) == 2
    assert sum(k.startswith("pool/strict/packages:documents_conserved") for k in checks) == 2
    assert sum(k.startswith("filtered/lenient/docstrings:documents_conserved") for k in checks) == 2
    assert checks["dedup/lenient:survivors_kept"]


def test_eval_metrics_and_artifacts_in_mlflow(materialized) -> None:  # type: ignore[no-untyped-def]
    home, *_ = materialized
    layout = Layout(home)
    import json

    info = json.loads((layout.run_dir("smoke") / "mlflow.json").read_text())
    client = mlflow.MlflowClient(info["tracking_uri"])
    run = client.get_run(info["run_id"])
    metrics = run.data.metrics
    for domain in ("docstrings", "code"):
        assert 0 < metrics[f"eval.bpb.{domain}"] < 16
    assert metrics["eval.bpb.worst"] == max(
        metrics["eval.bpb.docstrings"], metrics["eval.bpb.code"]
    )
    losses = client.get_metric_history(info["run_id"], "loss")
    assert len(losses) >= 2 and all(m.value > 0 for m in losses)
    assert run.data.params["recipe"] == "lenient" and run.data.params["deepspeed"] == "zero2"
    assert "mixture.weight.code" in run.data.params
    assert run.data.tags["dagster.asset_key"] == "train/smoke"
    assert run.data.tags["dagster.run_id"]
    artifacts = {a.path for a in client.list_artifacts(info["run_id"], "config")}
    assert {"config/deepspeed_config.json", "config/spec.json", "config/mixture.json"} <= artifacts
    assert run.info.status == "FINISHED"


def test_doremi_and_entropy_mixtures_materialize_with_their_weights(materialized) -> None:  # type: ignore[no-untyped-def]
    import json

    home, *_ = materialized
    layout = Layout(home)
    weights = json.loads((layout.doremi_dir("dro") / "weights.json").read_text())
    mix = json.loads((layout.mixture_dir("dro") / "mixture.json").read_text())
    assert mix["strategy"] == "doremi" and mix["weights"] == pytest.approx(weights["weights"])
    assert sum(weights["weights"].values()) == pytest.approx(1.0)
    assert set(weights["weights"]) == {"docstrings", "code"}
    assert weights["reference_weights"] == pytest.approx(
        json.loads((layout.mixture_dir("small") / "mixture.json").read_text())["weights"]
    )
    assert all(v >= 0 for v in weights["mean_excess_loss"].values())
    # the proxy's MLflow run holds the trajectory (live metrics, report, plot)
    proxy = json.loads((layout.doremi_dir("dro") / "proxy" / "mlflow.json").read_text())
    client = mlflow.MlflowClient(proxy["tracking_uri"])
    run = client.get_run(proxy["run_id"])
    assert run.data.tags["corpuslab.doremi.role"] == "proxy" and run.info.status == "FINISHED"
    history = client.get_metric_history(proxy["run_id"], "doremi.weight.code")
    assert [m.step for m in history] == [2, 4, 6]
    files = {a.path for a in client.list_artifacts(proxy["run_id"], "doremi")}
    assert {"doremi/weights.json", "doremi/weights_trajectory.png", "doremi/doremi.json"} <= files
    png = layout.doremi_dir("dro") / "weights_trajectory.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # BiMix: weights proportional to each domain's conditional token entropy
    ent = json.loads((layout.mixture_dir("entropic") / "mixture.json").read_text())
    total = sum(ent["entropy"].values())
    assert ent["weights"] == pytest.approx({d: h / total for d, h in ent["entropy"].items()})
    # shared tokenizer: one tokenizer asset, every mixture's tokens under it
    for m in ("small", "dro", "entropic"):
        meta = json.loads((layout.tokens_dir(m) / "meta.json").read_text())
        assert meta["tokenizer"] == str(layout.tokenizer_dir("small") / "tokenizer.json")
    assert not layout.tokenizer_dir("dro").exists()


def test_dbt_counts_add_up(materialized) -> None:  # type: ignore[no-untyped-def]
    home, *_ = materialized
    con = duckdb.connect(str(Layout(home).duckdb_path), read_only=True)
    rows = con.execute(
        "select stage, recipe, source, documents_in, kept, dropped from stage_summary"
    ).fetchall()
    reasons = con.execute("select outcome from stage_counts where stage = 'pool'").fetchall()
    con.close()
    assert {(r[0], r[1], r[2]) for r in rows} >= {
        ("pool", "strict", "packages"),
        ("filtered", "lenient", "code"),
        ("corpus", "_", "reference"),
    }
    assert all(n_in == kept + dropped for *_, n_in, kept, dropped in rows)
    assert any(o.startswith("gopher_quality:") for (o,) in reasons)


def test_nothing_stale_on_second_run(materialized) -> None:  # type: ignore[no-untyped-def]
    home, exp_dir, instance, _ = materialized
    defs = build(exp_dir, home=home)
    assert materialize_stale(defs, instance, log=lambda _: None) == []


def _edited(exp_dir: Path, dst: Path, old: str, new: str) -> Path:
    shutil.copytree(exp_dir, dst)
    recipes = dst / "recipes.yaml"
    text = recipes.read_text()
    assert old in text
    recipes.write_text(text.replace(old, new, 1))
    return dst


def _status(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, set[StaleStatus]]:
    out: dict[str, set[StaleStatus]] = {}
    for (key, _), status in stale_status(defs, instance).items():
        out.setdefault(key.to_user_string(), set()).add(status)
    return out


def test_editing_one_recipe_stales_only_its_descendants(materialized, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    home, exp_dir, instance, _ = materialized
    # the strict recipe's dedup threshold: strict's dedup and everything after it
    edited = _edited(
        exp_dir,
        tmp_path / "a",
        "threshold: 0.8}\n    quality: {positive_source: reference, "
        "negative_sample: 60, keep_fraction: 0.8}",
        "threshold: 0.7}\n    quality: {positive_source: reference, "
        "negative_sample: 60, keep_fraction: 0.8}",
    )
    defs = build(edited, home=home)
    status = _status(defs, instance)
    stale = {k for k, s in status.items() if StaleStatus.STALE in s}
    assert stale == {"dedup/strict"}  # the changed asset itself; the rest follow on rebuild
    assert all(s == {StaleStatus.FRESH} for k, s in status.items() if k not in stale)
    touched = {k.to_user_string() for k in needs_rebuild(defs, instance)}
    assert touched == {
        "dedup/strict",
        "quality_model/strict",
        "filtered/strict/docstrings",
        "filtered/strict/packages",
        "stats/stage_decisions",
        "stats/stage_counts",
        "stats/stage_summary",
        "stats/quality_score_histogram",
    }

    # the lenient recipe's steps: its pools and everything down to the trained model
    edited = _edited(
        exp_dir,
        tmp_path / "b",
        "gopher_quality: {min_words: 20,",
        "gopher_quality: {min_words: 25,",
    )
    defs = build(edited, home=home)
    stale = {k for k, s in _status(defs, instance).items() if StaleStatus.STALE in s}
    assert stale == {"pool/lenient/docstrings", "pool/lenient/code"}
    touched = {k.to_user_string() for k in needs_rebuild(defs, instance)}
    assert {
        "dedup/lenient",
        "quality_model/lenient",
        "filtered/lenient/code",
        "tokenizer/small",
        "mixture/small",
        "tokens/small",
        "train/smoke",
        "eval/smoke",
        "doremi/dro/reference",
        "doremi/dro/proxy",
        "doremi/dro/weights",
        "mixture/dro",
        "tokens/dro",
        "mixture/entropic",
    } <= touched
    assert not any(k.startswith(("corpus/", "pool/strict", "dedup/strict")) for k in touched)


def test_study_report_eval_metrics_and_datasets_in_mlflow(materialized) -> None:  # type: ignore[no-untyped-def]
    """The suite, the seeded run and the study, end to end: the exclusion check ran and passed,
    every replicate has suite metrics (and the trajectory) in MLflow with its token file and
    eval set as dataset inputs, the study's report is a parent run of the compared runs, and
    dbt's leaderboard lists both runs with their seed counts."""
    import json

    home, _, _, reports = materialized
    layout = Layout(home)
    checks = {k: v for r in reports for k, v in r.checks.items()}
    assert checks["evalset/tiny_suite:excluded_from_training"]
    study = json.loads((layout.compare_dir("tiny_study") / "study.json").read_text())
    assert study["metric"] == "tiny_suite.core" and study["baseline"] == "smoke"
    est = study["headline"]["estimates"]
    assert est["smoke"]["n_seeds"] == 1 and est["smoke_b"]["n_seeds"] == 2
    assert est["smoke_b"]["low"] <= est["smoke_b"]["value"] <= est["smoke_b"]["high"]
    diff = study["headline"]["differences"]["smoke_b"]
    assert 0.0 <= diff["flip_probability"] <= 1.0 and diff["low"] <= diff["value"] <= diff["high"]
    assert "smoke_b" in study["decision"]["statement"]
    html = (layout.compare_dir("tiny_study") / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and 'src="http' not in html
    client = mlflow.MlflowClient(layout.mlflow_uri)
    parent = client.get_run(study["mlflow_parent_run_id"])
    assert parent.data.tags["corpuslab.study"] == "tiny_study"
    assert {"report/report.html", "report/report.md", "report/study.json"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "report")
    }
    for run, seed in (("smoke", None), ("smoke_b", 0), ("smoke_b", 1)):
        info = json.loads((layout.run_dir(run, seed) / "mlflow.json").read_text())
        r = client.get_run(info["run_id"])
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"eval.tiny_suite.core", "eval.tiny_suite.heldout.reference.bpb",
                "eval.tiny_suite.sig_1shot.p_correct"} <= set(r.data.metrics)  # fmt: skip
        inputs = {(i.dataset.name, i.tags[0].value) for i in r.inputs.dataset_inputs}
        assert inputs == {("tokens/small", "training"), ("evalset/tiny_suite", "evaluation")}
        if seed is not None:
            assert r.data.params["train.seed"] == str(seed)
    # eval_every: 4 on smoke: the suite scored at step 4 and at the final step 8
    info = json.loads((layout.run_dir("smoke") / "mlflow.json").read_text())
    steps = [m.step for m in client.get_metric_history(info["run_id"], "eval.tiny_suite.core")]
    assert sorted(steps) == [4, 8]
    con = duckdb.connect(str(layout.duckdb_path), read_only=True)
    board = con.execute("select run, seeds from leaderboard order by run").fetchall()
    con.close()
    assert board == [("smoke", 1), ("smoke_b", 2)]
