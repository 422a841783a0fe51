"""The automation policy, evaluated by Dagster's own condition evaluator over the materialized
tiny home: data stages follow their inputs at once, training waits for the nightly tick."""

from __future__ import annotations

import datetime
from pathlib import Path

import dagster as dg

from definitions import build
from jobs.automation import NIGHTLY_CRON
from tests.conftest import Materialized, edit_experiment
from tests.jobs.workspace import copied_instance

NIGHT = datetime.datetime(2030, 1, 1, 2, 55, tzinfo=datetime.UTC)  # before the 03:00 tick


def _requested(result: dg.EvaluateAutomationConditionsResult) -> set[str]:
    return {
        r.key.to_user_string()
        for r in result.results
        if isinstance(r.key, dg.AssetKey) and result.get_num_requested(r.key)
    }


def test_declaration_edits_run_data_stages_at_once_and_training_at_night(
    materialized: Materialized, tmp_path: Path
) -> None:
    """An edited recipe step and an edited run: the pool shards are requested on the next
    evaluation, the training run only on the first evaluation after 03:00, once."""
    home, exp_dir, instance, _ = materialized
    assert NIGHTLY_CRON == "0 3 * * *"
    edited = edit_experiment(
        exp_dir, tmp_path / "a", "recipes.yaml", "min_words: 20,", "min_words: 25,"
    )
    edited = edit_experiment(edited, tmp_path / "b", "runs.yaml", "steps: 8,", "steps: 9,")
    with copied_instance(instance, tmp_path / "dagster") as inst:
        declared = build(exp_dir, home=home)  # the deployed conditions, not the CLI's
        first = dg.evaluate_automation_conditions(declared, inst, evaluation_time=NIGHT)
        assert _requested(first) == set()  # everything is fresh

        changed = build(edited, home=home)
        soon = dg.evaluate_automation_conditions(
            changed,
            inst,
            evaluation_time=NIGHT + datetime.timedelta(minutes=1),
            cursor=first.cursor,
        )
        # the quality model's declaration changed too, but it waits for the pool and dedup
        assert _requested(soon) == {"pool/lenient/docstrings", "pool/lenient/code"}
        assert soon.get_requested_partitions(dg.AssetKey(["pool", "lenient", "code"])) == {
            "part-00000",
            "part-00001",
        }

        night = dg.evaluate_automation_conditions(
            changed,
            inst,
            evaluation_time=NIGHT + datetime.timedelta(minutes=10),
            cursor=soon.cursor,
        )
        assert "train/smoke" in _requested(night)
        assert not any(k.startswith("pool/") for k in _requested(night))  # already requested

        later = dg.evaluate_automation_conditions(
            changed,
            inst,
            evaluation_time=NIGHT + datetime.timedelta(minutes=20),
            cursor=night.cursor,
        )
        assert "train/smoke" not in _requested(later)  # handled: once a night
