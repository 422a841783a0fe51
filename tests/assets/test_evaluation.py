"""``eval/<run>`` through Dagster scores the final and the LAWA weights and logs both.

``smoke`` in the session's materialized home declares ``lawa_k: 2`` with a checkpoint every 4
of its 8 steps. The LAWA scores are recomputed here from the two checkpoints' weights averaged
by hand, so a stage that scored the wrong file (or the final weights twice) would fail.
"""

from __future__ import annotations

import json

import dagster as dg
import mlflow
import pytest
import torch

from corpuslab.declarations import load_experiment
from corpuslab.eval.bpb import bits_per_byte
from corpuslab.layout import Layout
from corpuslab.stages.mixture import read_heldout, tokenizer_path
from corpuslab.training.checkpoints import load_model
from tests.conftest import Materialized


def test_eval_asset_scores_the_lawa_average_of_the_last_checkpoints(
    materialized: Materialized,
) -> None:
    home, exp_dir, instance, _ = materialized
    layout, exp = Layout(home), load_experiment(exp_dir)
    run_dir = layout.run_dir("smoke")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["lawa_checkpoints"] == ["step4", "step8"]
    states = [
        torch.load(run_dir / "checkpoints" / t / "model.pt", weights_only=True)
        for t in ("step4", "step8")
    ]
    lawa = load_model(run_dir)  # the architecture; its weights replaced by the average
    lawa.load_state_dict(
        {k: (states[0][k].double() + states[1][k].double()).float() / 2 for k in states[0]}
    )
    heldout = read_heldout(layout, "small", exp.runs["smoke"].eval.max_docs_per_domain)
    tok = tokenizer_path(exp, layout, "small")
    batch = exp.runs["smoke"].eval.batch_size
    expected = {
        d: bits_per_byte(lawa, tok, texts, batch_size=batch)["bpb"] for d, texts in heldout.items()
    }
    final = {
        d: bits_per_byte(load_model(run_dir), tok, t, batch_size=batch)["bpb"]
        for d, t in heldout.items()
    }

    report = json.loads((layout.eval_dir("smoke") / "eval.json").read_text())
    metrics = report["metrics"]
    assert set(heldout) == {"docstrings", "code"}
    for domain in heldout:
        assert metrics[f"eval_lawa.bpb.{domain}"] == pytest.approx(expected[domain], rel=1e-6)
        assert metrics[f"eval.bpb.{domain}"] == pytest.approx(final[domain], rel=1e-6)
        assert metrics[f"eval_lawa.bpb.{domain}"] != metrics[f"eval.bpb.{domain}"]
    assert metrics["eval_lawa.bpb.worst"] == max(expected.values())

    # the same numbers in the run's MLflow run and in the asset's Dagster metadata
    client = mlflow.MlflowClient(json.loads((run_dir / "mlflow.json").read_text())["tracking_uri"])
    logged = client.get_run(report["run_id"]).data.metrics
    assert {k: v for k, v in logged.items() if k.startswith("eval_lawa.")} == pytest.approx(
        {k: v for k, v in metrics.items() if k.startswith("eval_lawa.")}
    )
    event = instance.get_latest_materialization_event(dg.AssetKey(["eval", "smoke"]))
    assert event is not None and event.asset_materialization is not None
    meta = event.asset_materialization.metadata
    assert meta["eval_lawa_bpb_mean"].value == pytest.approx(
        metrics["eval_lawa.bpb.mean"], abs=1e-4
    )
