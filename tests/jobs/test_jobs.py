"""The per-source shard jobs under a backfill: one run per shard, each rebuilding that shard.

A backfill of ``shards_docstrings_job`` over both shards is launched the way the UI launches
it (the ``launchPartitionBackfill`` GraphQL mutation) on a copy of the materialized tiny home,
and Dagster's backfill daemon turns it into runs. The runs it queued are then executed, one
partitioned run each: every per-shard stage of the source is rebuilt with its checks, and since
the outputs are unchanged nothing downstream turns stale.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import dagster as dg
from dagster._daemon.backfill import execute_backfill_iteration
from dagster_graphql.test.utils import execute_dagster_graphql

from cli.status import status
from definitions import build
from tests.conftest import Materialized
from tests.jobs.workspace import LOCATION, copied_instance, repository, workspace

JOB = "shards_docstrings_job"
LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on UnauthorizedError { message }
    ... on PartitionSetNotFoundError { message }
  }
}
"""


def test_shard_job_backfill_runs_every_shard_of_its_source(
    materialized: Materialized, tmp_path: Path
) -> None:
    home, exp_dir, instance, _ = materialized
    shutil.copytree(home, tmp_path / "home", ignore=shutil.ignore_patterns("runs", "doremi"))
    home = tmp_path / "home"
    shards = ["part-00000", "part-00001"]
    with copied_instance(instance, tmp_path / "dagster") as inst:
        before = {r.run_id for r in inst.get_runs()}
        with workspace(inst, exp_dir, home, tmp_path / "location") as context:
            repo = repository(context)
            params = {
                "selector": {
                    "repositorySelector": {
                        "repositoryLocationName": LOCATION,
                        "repositoryName": repo.name,
                    },
                    "partitionSetName": f"{JOB}_partition_set",
                },
                "partitionNames": shards,
            }
            result = execute_dagster_graphql(
                context.create_request_context(), LAUNCH_BACKFILL, {"params": params}
            )
            launched = result.data["launchPartitionBackfill"]
            assert launched["__typename"] == "LaunchBackfillSuccess", launched
            list(execute_backfill_iteration(context, logging.getLogger("backfill")))
        runs = [r for r in inst.get_runs() if r.run_id not in before]
        assert sorted(r.tags["dagster/partition"] for r in runs) == shards
        assert {r.job_name for r in runs} == {JOB}
        assert {r.tags["dagster/backfill"] for r in runs} == {launched["backfillId"]}

        # each queued run, executed as its run worker would: the job on its shard
        defs = build(exp_dir, home=home)
        job = defs.resolve_job_def(JOB)
        expected = {
            "corpus/docstrings",
            "pool/lenient/docstrings",
            "pool/strict/docstrings",
            "dedup/lenient/docstrings",
            "dedup/strict/docstrings",
            "filtered/lenient/docstrings",
            "filtered/strict/docstrings",
        }
        for run in sorted(runs, key=lambda r: r.tags["dagster/partition"]):
            done = job.execute_in_process(
                instance=inst, partition_key=run.tags["dagster/partition"], raise_on_error=False
            )
            assert done.success
            keys = {e.asset_key.to_user_string() for e in done.get_asset_materialization_events()}
            assert keys == expected
            checks = done.get_asset_check_evaluations()
            assert len(checks) == len(expected) and all(c.passed for c in checks)
        # the same outputs again: same data versions, so nothing after them is due
        assert status(build(exp_dir, home=home, now=True), inst).get("due", []) == []
        assert all(
            inst.get_latest_materialization_event(dg.AssetKey(k.split("/"))) is not None
            for k in expected
        )
