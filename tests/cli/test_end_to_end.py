"""End to end through Dagster: a tiny real experiment materialized in-process, then staleness.

The home is the session's ``materialized`` fixture (tests/conftest.py): a temporary Dagster
instance and a SQLite MLflow store; DeepSpeed really trains (CPU, gloo) in a subprocess launched
through Pipes; dbt-duckdb really builds the statistics. These tests only read it.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
from dagster._core.definitions.data_version import StaleStatus

from cli.materialize import materialize_stale, needs_rebuild, stale_status
from corpuslab.declarations import load_experiment
from corpuslab.layout import Layout
from definitions import build
from tests.conftest import STRICT_DEDUP, Materialized, edit_experiment


def test_everything_materialized_and_checks_passed(materialized: Materialized) -> None:
    home, exp_dir, instance, reports = materialized
    assert reports and all(r.success for r in reports)
    checks = {k: v for r in reports for k, v in r.checks.items()}
    assert checks and all(checks.values()), checks
    # conservation checked on every shard of every sharded stage, survivors on every dedup
    graph = build(exp_dir, home=home).resolve_asset_graph()
    expected = set()
    for key in graph.materializable_asset_keys:
        pdef = graph.get(key).partitions_def
        if pdef is not None:
            for shard in pdef.get_partition_keys(dynamic_partitions_store=instance):
                expected.add(f"{key.to_user_string()}:documents_conserved[{shard}]")
        elif key.path[0] == "dedup":
            expected.add(f"{key.to_user_string()}:survivors_kept")
    assert len(expected) == 4 * 2 + 2 * (2 + 2) * 2 + 2  # corpus, pool and filtered; dedup
    assert {k for k in checks if not k.startswith("stats/")} == expected
    assert any(k.startswith("stats/") for k in checks)  # and dbt's tests, as asset checks


def test_eval_metrics_and_artifacts_in_mlflow(materialized: Materialized) -> None:
    home, *_ = materialized
    layout = Layout(home)
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


def test_doremi_and_entropy_mixtures_materialize_with_their_weights(
    materialized: Materialized,
) -> None:
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
    # the weights are the average of the proxy's per-step weights, as its report recorded them
    report = json.loads((layout.doremi_dir("dro") / "proxy" / "doremi.json").read_text())
    mean = np.mean(report["trajectory"], axis=0)
    expected = dict(zip(report["domains"], (mean / mean.sum()).tolist(), strict=True))
    assert weights["weights"] == pytest.approx(expected)
    assert weights["mean_excess_loss"] == report["mean_excess_loss"] and report["updates"] == 6
    # the proxy's MLflow run holds the trajectory (live metrics, report, plot)
    proxy = json.loads((layout.doremi_dir("dro") / "proxy" / "mlflow.json").read_text())
    client = mlflow.MlflowClient(proxy["tracking_uri"])
    run = client.get_run(proxy["run_id"])
    assert run.data.tags["corpuslab.doremi.role"] == "proxy" and run.info.status == "FINISHED"
    history = client.get_metric_history(proxy["run_id"], "doremi.weight.code")
    code = report["domains"].index("code")
    assert [(m.step, m.value) for m in history] == [
        (s, pytest.approx(report["trajectory"][s - 1][code])) for s in (2, 4, 6)
    ]
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


def _rows(folder: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in folder.glob("*.parquet"))


def test_dbt_counts_match_the_files_the_stages_wrote(materialized: Materialized) -> None:
    """dbt's per-stage counts against rows counted in the stages' Parquet outputs (not in the
    decision tables dbt reads): a stage's documents in are its input's rows, kept its output's."""
    home, exp_dir, *_ = materialized
    layout, exp = Layout(home), load_experiment(exp_dir)
    con = duckdb.connect(str(layout.duckdb_path), read_only=True)
    rows = con.execute(
        "select stage, recipe, source, documents_in, kept, dropped from stage_summary"
    ).fetchall()
    reasons = con.execute("select outcome from stage_counts where stage = 'pool'").fetchall()
    con.close()
    got = {(stage, recipe, source): tuple(n) for stage, recipe, source, *n in rows}
    expected = {}
    for source in exp.sources:
        quarantined = sum(
            len(p.read_text().splitlines()) for p in layout.quarantine_dir(source).glob("*.jsonl")
        )
        docs = _rows(layout.corpus_dir(source))
        expected[("corpus", "_", source)] = (docs + quarantined, docs, quarantined)
    for recipe, decl in exp.recipes.items():
        for source in decl.sources:
            corpus, pool = layout.corpus_dir(source), layout.pool_dir(recipe, source)
            filtered = layout.filtered_dir(recipe, source)
            for stage, inp, out in (("pool", corpus, pool), ("filtered", pool, filtered)):
                n_in, kept = _rows(inp), _rows(out)
                if n_in:  # a stage given no documents decides nothing: no row
                    expected[(stage, recipe, source)] = (n_in, kept, n_in - kept)
    assert got == expected
    assert all(v[1] > 0 for k, v in got.items() if k[0] == "corpus")
    assert any(v[2] > 0 for k, v in got.items() if k[0] == "pool")  # the recipes do drop
    assert any(o.startswith("gopher_quality:") for (o,) in reasons)


def test_nothing_stale_on_second_run(materialized: Materialized) -> None:
    home, exp_dir, instance, _ = materialized
    defs = build(exp_dir, home=home)
    assert materialize_stale(defs, instance, log=lambda _: None) == []


def _edited(exp_dir: Path, dst: Path, old: str, new: str) -> Path:
    return edit_experiment(exp_dir, dst, "recipes.yaml", old, new)


def _status(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, set[StaleStatus]]:
    out: dict[str, set[StaleStatus]] = {}
    for (key, _), status in stale_status(defs, instance).items():
        out.setdefault(key.to_user_string(), set()).add(status)
    return out


def test_editing_one_recipe_stales_only_its_descendants(
    materialized: Materialized, tmp_path: Path
) -> None:
    home, exp_dir, instance, _ = materialized
    # the strict recipe's dedup threshold: strict's dedup and everything after it
    edited = _edited(
        exp_dir,
        tmp_path / "a",
        STRICT_DEDUP,
        STRICT_DEDUP.replace("threshold: 0.8", "threshold: 0.7"),
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
