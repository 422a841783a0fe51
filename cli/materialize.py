"""Materialize exactly what is stale or missing, through Dagster, in dependency order.

The same decision the UI's "Materialize stale and missing" makes, done from a script: per
partition for sharded assets, one run per ready group, until nothing is stale.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

Unit = tuple[dg.AssetKey, str | None]


@dataclass
class RunReport:
    run_id: str
    partition: str | None
    keys: list[dg.AssetKey]
    success: bool
    checks: dict[str, bool]  # "asset_key:check_name[partition]" -> passed


def stale_status(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[Unit, StaleStatus]:
    """Stale status of every (asset, partition) of the definitions (internal Dagster API)."""
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(
        instance=instance, asset_graph=graph, loading_context=view
    )
    out: dict[Unit, StaleStatus] = {}
    for key in graph.materializable_asset_keys:
        pdef = graph.get(key).partitions_def
        parts = (
            [None] if pdef is None else pdef.get_partition_keys(dynamic_partitions_store=instance)
        )
        for p in parts:
            out[(key, p)] = resolver.get_status(key, p)
    return out


def needs_rebuild(defs: dg.Definitions, instance: dg.DagsterInstance) -> set[dg.AssetKey]:
    """Stale or missing assets plus everything downstream of them.

    Dagster marks only the asset whose code version changed as stale; its descendants turn stale
    once it is rebuilt with a different data version (and stay fresh if the output is identical).
    This is the set a change *may* rebuild: the answer to "what does editing this recipe touch".
    """
    graph = defs.resolve_asset_graph()
    todo = [k for k, _ in pending_units(defs, instance)]
    seen: set[dg.AssetKey] = set()
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        todo.extend(graph.get(key).child_keys)
    return seen


def pending_units(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[Unit]:
    return [
        u
        for u, s in stale_status(defs, instance).items()
        if s in (StaleStatus.STALE, StaleStatus.MISSING)
    ]


def _ready_groups(graph: Any, pending: set[Unit]) -> dict[tuple[str | None, str | None], list]:
    """Group pending units into runs: one per shard (all sharded stages of that shard that can
    run together) and one for unpartitioned assets whose pending parents are all done.

    A unit joins a group when each pending parent is already in the same group (same shard of
    the same partitions definition), so a shard's corpus -> pool chain runs in one Dagster run.
    """
    groups: dict[tuple[str | None, str | None], list] = defaultdict(list)
    placed: dict[Unit, tuple[str | None, str | None]] = {}
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        pdef_name = getattr(node.partitions_def, "name", None)
        for unit in sorted((u for u in pending if u[0] == key), key=str):
            group = (pdef_name, unit[1])
            ok = True
            for parent in node.parent_keys:
                parent_units = [u for u in pending if u[0] == parent]
                if not parent_units:
                    continue
                same_shard = graph.get(parent).partitions_def is not None and unit[1] is not None
                if same_shard:
                    pu = (parent, unit[1])
                    if pu in pending and placed.get(pu) != group:
                        ok = False
                elif any(placed.get(pu) != group for pu in parent_units) or pdef_name is not None:
                    ok = False
                if not ok:
                    break
            if ok:
                groups[group].append(key)
                placed[unit] = group
    return groups


def materialize_stale(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    log: Callable[[str], None] = print,
    max_rounds: int = 50,
    log_level: str = "WARNING",
) -> list[RunReport]:
    """Run stale/missing assets until none remain; raise if a run fails."""
    graph = defs.resolve_asset_graph()
    reports: list[RunReport] = []
    attempted: set[Unit] = set()
    for _ in range(max_rounds):
        pending = set(pending_units(defs, instance))
        if not pending:
            return reports
        again = pending & attempted
        if again:
            names = ", ".join(sorted(f"{k.to_user_string()}[{p}]" for k, p in again))
            raise RuntimeError(f"still stale after being materialized: {names}")
        groups = _ready_groups(graph, pending)
        for (_, part), keys in sorted(
            groups.items(), key=lambda kv: (kv[0][0] is None, str(kv[0]))
        ):
            label = ", ".join(k.to_user_string() for k in sorted(keys, key=str))
            log(f"materializing {label}" + (f" [shard {part}]" if part else ""))
            result = dg.materialize(
                assets=list(defs.assets or []),  # type: ignore[arg-type]
                selection=keys,
                partition_key=part,
                instance=instance,
                resources=defs.resources,
                raise_on_error=True,
                tags={"corpuslab/launched_by": "materialize_stale"},
                run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
            )
            checks = {
                f"{e.asset_key.to_user_string()}:{e.check_name}"
                + (f"[{part}]" if part else ""): e.passed
                for e in result.get_asset_check_evaluations()
            }
            reports.append(RunReport(result.run_id, part, keys, result.success, checks))
            attempted.update((k, part) for k in keys)
    raise RuntimeError(f"nothing converged after {max_rounds} rounds of materialization")
