"""How `corpuslab materialize` groups a tick's requests into runs that may run side by side."""

from __future__ import annotations

import dagster as dg

from cli.materialize import group_runs, order_runs


@dg.asset
def up() -> None: ...


@dg.asset(deps=[up])
def down() -> None: ...


@dg.asset(pool="duckdb")
def stats_a() -> None: ...


@dg.asset(pool="duckdb")
def stats_b() -> None: ...


@dg.asset
def alone() -> None: ...


def test_assets_sharing_a_pool_share_a_run_and_dependents_share_a_run() -> None:
    """``stats.duckdb`` has one writer at a time (two dbt builds side by side failed on DuckDB's
    lock): assets in one Dagster pool are never split over runs that may run together."""
    graph = dg.Definitions(assets=[up, down, stats_a, stats_b, alone]).resolve_asset_graph()
    units = {(dg.AssetKey(k), None) for k in ("up", "down", "stats_a", "stats_b", "alone")}
    runs = {tuple(k.to_user_string() for k in keys) for _, keys in group_runs(graph, units)}
    assert runs == {("down", "up"), ("stats_a", "stats_b"), ("alone",)}
    levels = order_runs(graph, group_runs(graph, units))
    assert len(levels) == 1  # three independent runs: side by side with --jobs
