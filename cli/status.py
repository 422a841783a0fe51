"""``corpuslab status``: what is missing, stale, waiting or failing, and why.

The same evaluation ``corpuslab materialize`` runs (the ``NOW`` automation conditions against
the persistent instance, with its cursor), but read-only: nothing is launched and the cursor is
not advanced. Failing means the latest materialization attempt failed, or a check failed.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import dagster as dg

from cli.materialize import code_version_changes, evaluate, load_cursor


def _units(subset: Any) -> set[str | None]:
    if subset.is_partitioned:
        return set(subset.expensively_compute_partition_keys())
    return {None} if subset.get_internal_bool_value() else set()


def _labelled(result: Any, label: str) -> Any:
    """The sub-result whose condition carries ``label`` (depth-first)."""
    if result.condition.get_label() == label:
        return result
    for child in result.child_results:
        found = _labelled(child, label)
        if found is not None:
            return found
    return None


def status(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    result: dg.EvaluateAutomationConditionsResult | None = None,
) -> dict[str, list[str]]:
    """Lines per category (``due``, ``waiting``, ``failing``), each naming asset, shard, why.

    ``result``: a tick just evaluated (``corpuslab materialize``'s last), instead of a new one.
    """
    out: dict[str, list[str]] = defaultdict(list)
    if result is None:
        result = evaluate(defs, instance, None, load_cursor(instance))
    changed = code_version_changes(defs, instance)
    for res in result.results:
        key = res.key
        if not isinstance(key, dg.AssetKey):
            continue
        name = key.to_user_string()
        due = _labelled(res, "due")
        ready = _labelled(res, "ready")
        if due is None or ready is None:
            continue
        missing = _units(_labelled(res, "missing").true_subset)
        ready_units = _units(ready.true_subset)
        for unit in sorted(_units(due.true_subset) | {p for (k, p) in changed if k == key},
                           key=str):  # fmt: skip
            where = f"{name}[{unit}]" if unit else name
            why = (
                "missing"
                if unit in missing
                else changed.get((key, unit), "an input's data changed since it was built")
            )
            if unit in ready_units:
                out["due"].append(f"{where}: {why}")
            else:
                blocked = [
                    c.condition.get_label()
                    for c in ready.child_results
                    if unit not in _units(c.true_subset)
                ]
                out["waiting"].append(f"{where}: {why}; waiting until: {', '.join(blocked)}")
    graph = defs.resolve_asset_graph()
    for key in sorted(graph.materializable_asset_keys, key=str):
        failed = instance.fetch_failed_materializations(key, limit=1).records
        latest = instance.fetch_materializations(key, limit=1).records
        if failed and (not latest or failed[0].storage_id > latest[0].storage_id):
            out["failing"].append(
                f"{key.to_user_string()}: its latest attempt failed (run {failed[0].run_id})"
            )
        for check_key in graph.get(key).check_keys:
            record = instance.get_latest_asset_check_evaluation_record(check_key)
            if record is not None and record.status.value == "FAILED":
                part = f"[{record.partition}]" if record.partition else ""
                out["failing"].append(
                    f"{key.to_user_string()}{part}: check {check_key.name} failed "
                    f"(run {record.run_id})"
                )
    return dict(out)


def format_status(lines: dict[str, list[str]]) -> str:
    if not any(lines.values()):
        return "everything is materialized and fresh; nothing is failing"
    parts = []
    titles = {
        "due": "due now (corpuslab materialize builds these)",
        "waiting": "stale, waiting for their inputs",
        "failing": "failing",
    }
    for category, title in titles.items():
        if lines.get(category):
            parts.append(f"{title}:")
            parts += [f"  {line}" for line in lines[category]]
    return "\n".join(parts)
