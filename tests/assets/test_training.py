"""``train/<run>`` through Dagster: a ZeRO-3 run on two ranks that inherits its parent's weights.

``child`` in the session's materialized home declares ``deepspeed: zero3``, ``ranks: 2`` and
``init_from: {run: smoke, layers: 1}``; ``smoke`` has one layer, so the child starts from all of
smoke's final weights. Its first loss, averaged over both ranks, must then be smoke's model's
loss on exactly the rows the child's first step read: recomputed here on one process.
"""

from __future__ import annotations

import json

import dagster as dg
import mlflow
import pytest

from corpuslab.eval.bpb import sequence_loss
from corpuslab.layout import Layout
from corpuslab.lmdata.tokenfile import TokenFile
from corpuslab.training.checkpoints import load_model
from corpuslab.training.data import BatchSampler
from corpuslab.training.runspec import RunSpec
from tests.conftest import Materialized


def test_child_run_trains_zero3_on_two_ranks_from_its_parents_weights(
    materialized: Materialized,
) -> None:
    home, _, instance, _ = materialized
    layout = Layout(home)
    child_dir = layout.run_dir("child")
    summary = json.loads((child_dir / "summary.json").read_text())
    assert (summary["zero_stage"], summary["world_size"], summary["steps"]) == (3, 2, 2)
    # ZeRO-3 on two ranks: each holds half of the optimizer state (flat buffers padded to split)
    halves = summary["optimizer_state_numel_per_rank"]
    assert len(halves) == 2 and abs(halves[0] - halves[1]) <= 64
    assert "transformer.h.0.attn.c_attn.weight" in summary["inherited_tensors"]
    assert "transformer.wte.weight" in summary["inherited_tensors"]

    spec = RunSpec.model_validate_json((child_dir / "spec.json").read_text())
    assert spec.init_from is not None and spec.init_from.run_dir == layout.run_dir("smoke")
    tokens = TokenFile.open(layout.tokens_dir("small"))
    sampler = BatchSampler(
        len(tokens) - spec.train.heldout_sequences,
        summary["micro_batch_size"],
        summary["grad_accum_steps"],
        2,
        spec.train.seed,
    )
    rows = tokens.tokens[sampler.global_rows(0)]
    parent = load_model(layout.run_dir("smoke"))
    assert summary["initial_loss"] == pytest.approx(sequence_loss(parent, rows), abs=1e-4)
    parent_first = json.loads((layout.run_dir("smoke") / "summary.json").read_text())
    assert summary["initial_loss"] < parent_first["initial_loss"] - 0.1  # not a random init

    # Dagster ran the parent first, and the child's MLflow run records where it came from
    parent_event = instance.get_latest_materialization_event(dg.AssetKey(["train", "smoke"]))
    child_event = instance.get_latest_materialization_event(dg.AssetKey(["train", "child"]))
    assert parent_event is not None and child_event is not None
    assert parent_event.timestamp < child_event.timestamp
    assert child_event.asset_materialization is not None
    meta = child_event.asset_materialization.metadata
    assert meta["world_size"].value == 2 and meta["zero_stage"].value == 3
    run_id = json.loads((child_dir / "mlflow.json").read_text())["run_id"]
    client = mlflow.MlflowClient(
        json.loads((child_dir / "mlflow.json").read_text())["tracking_uri"]
    )
    params = client.get_run(run_id).data.params
    assert (params["init_from.run"], params["init_from.layers"], params["ranks"]) == (
        "smoke",
        "1",
        "2",
    )
    assert params["deepspeed"] == "zero3"
