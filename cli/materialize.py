"""Materialize what is missing or stale, now, with Dagster's own declarative automation.

The definitions are built with every asset on the ``NOW`` condition (``jobs.automation``: the
eager condition, plus assets missing from the start); each tick evaluates
their automation conditions with ``dg.evaluate_automation_conditions`` against the persistent
instance and materializes what they request: one run per shard for per-shard stages (the shard's
chain of stages together), and one run per group of independent global assets, up to ``jobs``
runs side by side. Ticks repeat until nothing is requested. The automation cursor is kept under
``$DAGSTER_HOME`` between invocations, so a declaration edited since the last call is seen (its
code version changed); assets whose recorded code version differs from the declared one are
requested even without a cursor.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from assets.common import assets_of

CURSOR_FILE = "corpuslab_automation_cursor.json"
Unit = tuple[dg.AssetKey, str | None]  # an asset and its partition (None: unpartitioned)


@dataclass
class RunReport:
    """One Dagster run the command launched: what it materialized and its checks' outcomes."""

    run_id: str
    partition: str | None
    keys: list[dg.AssetKey]
    success: bool
    seconds: float
    checks: dict[str, bool] = field(default_factory=dict)  # "asset:check[partition]" -> passed
    error: str = ""
    steps: list[tuple[list[str], float]] = field(default_factory=list)  # assets, step seconds


class MaterializeError(RuntimeError):
    """A run failed or an asset stayed requested after being materialized."""


def _cursor_path(instance: dg.DagsterInstance) -> Path:
    return Path(instance.root_directory) / CURSOR_FILE


def load_cursor(instance: dg.DagsterInstance) -> Any:
    path = _cursor_path(instance)
    if not path.is_file():
        return None
    try:
        return dg.deserialize_value(path.read_text())
    except Exception:  # a cursor from another Dagster version: start afresh
        return None


def save_cursor(instance: dg.DagsterInstance, cursor: Any) -> None:
    path = _cursor_path(instance)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(dg.serialize_value(cursor))
    os.replace(tmp, path)


def evaluate(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    selection: dg.AssetSelection | None,
    cursor: Any,
) -> dg.EvaluateAutomationConditionsResult:
    """One tick of the automation conditions.

    Dynamic partitions cannot change during a tick, so the instance's partition lookups are
    cached for its duration: building the tick's cursor looks them up once per condition node
    and subset (thousands of SQLite connections otherwise, ~10 s for the tiny experiment).
    """
    lookup = instance.get_dynamic_partitions
    instance.get_dynamic_partitions = functools.cache(lookup)
    try:
        return dg.evaluate_automation_conditions(
            defs, instance, asset_selection=selection, cursor=cursor
        )
    finally:
        del instance.get_dynamic_partitions  # back to the class's method


LAUNCHER_TAG = "corpuslab/launched_by"
PID_TAG = "corpuslab/pid"
HOST_TAG = "corpuslab/host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark as failed the runs this command started on this host whose process died.

    A killed ``corpuslab materialize`` leaves its run STARTED in the instance, and an asset
    whose run is in progress is never requested again; Dagster's daemon has run monitoring
    for runs it launches, this is the same for runs launched in-process by this command.
    """
    reaped = []
    active = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]
    runs = instance.get_runs(
        filters=dg.RunsFilter(statuses=active, tags={LAUNCHER_TAG: "corpuslab materialize"})
    )
    for run in runs:
        pid = run.tags.get(PID_TAG)
        if run.tags.get(HOST_TAG) != socket.gethostname() or not pid or _alive(int(pid)):
            continue
        instance.report_run_failed(run, f"the process running it (pid {pid}) died")
        reaped.append(run.run_id)
    return reaped


def code_version_changes(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[Unit, str]:
    """Materialized (asset, partition)s whose recorded code version differs from the declared."""
    graph = defs.resolve_asset_graph()
    out: dict[Unit, str] = {}
    for key in graph.materializable_asset_keys:
        node = graph.get(key)
        declared = node.code_version
        if declared is None:
            continue
        seen: set[str | None] = set()
        cursor = None
        while True:  # newest first: the first record of a partition is its latest
            page = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key), limit=1000, cursor=cursor
            )
            for record in page.records:
                mat = record.event_log_entry.asset_materialization
                if mat is None or mat.partition in seen:
                    continue
                seen.add(mat.partition)
                recorded = (mat.tags or {}).get("dagster/code_version")
                if recorded != declared:
                    out[(key, mat.partition)] = f"declaration changed ({recorded} -> {declared})"
            if not page.has_more:
                break
            cursor = page.cursor
    return out


def requested_units(result: dg.EvaluateAutomationConditionsResult, keys: Iterable) -> set[Unit]:
    units: set[Unit] = set()
    for key in keys:
        if not result.get_num_requested(key):
            continue
        parts = result.get_requested_partitions(key)
        units |= {(key, p) for p in parts} if parts else {(key, None)}
    return units


def _reach(graph: Any, keys: Iterable[dg.AssetKey], edges: str) -> set[dg.AssetKey]:
    """Every asset reached from ``keys`` (not themselves) along ``edges``: ``"child_keys"``
    (descendants) or ``"parent_keys"`` (ancestors)."""
    seen: set[dg.AssetKey] = set()
    todo = [n for k in keys for n in getattr(graph.get(k), edges)]
    while todo:
        key = todo.pop()
        if key not in seen:
            seen.add(key)
            todo.extend(getattr(graph.get(key), edges))
    return seen


def _descendants(graph: Any, keys: Iterable[dg.AssetKey]) -> set[dg.AssetKey]:
    return _reach(graph, keys, "child_keys")


def split_ready(graph: Any, units: set[Unit]) -> tuple[set[Unit], set[Unit]]:
    """(units to run now, units to defer): a unit waits while an asset between it and another
    requested unit is not requested itself, since that asset may still change (and it would
    have to run twice). Units chained through requested assets share runs, ordered by Dagster.
    """
    requested = {k for k, _ in units}
    changing = _descendants(graph, requested) - requested  # may change after this tick
    blocked = {k for k in requested if _ancestors(graph, k) & changing}
    return {u for u in units if u[0] not in blocked}, {u for u in units if u[0] in blocked}


def group_runs(graph: Any, units: set[Unit]) -> list[tuple[str | None, list[dg.AssetKey]]]:
    """Runs for a tick's requests: one per shard key, one per independent group of the rest.

    Two global assets are independent when neither is upstream of the other and they share no
    Dagster pool (a resource one writer at a time, e.g. ``stats.duckdb``); the others share a
    run, where Dagster orders their steps.
    """
    by_partition: dict[tuple[str, str], list[dg.AssetKey]] = defaultdict(list)
    globals_: list[dg.AssetKey] = []
    for key, part in units:
        if part is None:
            globals_.append(key)
        else:
            pdef = graph.get(key).partitions_def
            by_partition[(getattr(pdef, "name", "") or "", part)].append(key)
    runs: list[tuple[str | None, list[dg.AssetKey]]] = []
    for pdef_name, part in sorted(by_partition):
        runs.append((part, sorted(set(by_partition[(pdef_name, part)]), key=str)))
    remaining = sorted(set(globals_), key=str)
    groups: list[set[dg.AssetKey]] = []
    for key in remaining:
        related = [g for g in groups if any(_connected(graph, key, other) for other in g)]
        merged = {key}.union(*related)
        groups = [g for g in groups if g not in related] + [merged]
    runs += [(None, sorted(g, key=str)) for g in groups]
    return runs


def order_runs(
    graph: Any, runs: list[tuple[str | None, list[dg.AssetKey]]]
) -> list[list[tuple[str | None, list[dg.AssetKey]]]]:
    """Runs in levels: a run comes after every run holding an ancestor of its assets; the runs
    of one level are independent of each other (they may run side by side)."""
    upstream = [set().union(*(_ancestors(graph, k) for k in keys)) for _, keys in runs]
    after = [
        {j for j, (_, other) in enumerate(runs) if j != i and upstream[i] & set(other)}
        for i in range(len(runs))
    ]
    levels, placed = [], set()
    while len(placed) < len(runs):
        level = [i for i in range(len(runs)) if i not in placed and after[i] <= placed]
        if not level:  # a cycle cannot happen in an asset graph; keep the order if it does
            level = [i for i in range(len(runs)) if i not in placed]
        levels.append([runs[i] for i in level])
        placed |= set(level)
    return levels


def _ancestors(graph: Any, key: dg.AssetKey) -> set[dg.AssetKey]:
    return _reach(graph, [key], "parent_keys")


def _connected(graph: Any, a: dg.AssetKey, b: dg.AssetKey) -> bool:
    if set(graph.get(a).pools or ()) & set(graph.get(b).pools or ()):
        return True
    return b in _ancestors(graph, a) or a in _ancestors(graph, b)


def _run_config(
    keys: list[dg.AssetKey], configs: dict[dg.AssetKey, dict[str, Any]], log_level: str
) -> dict[str, Any]:
    ops = {k.to_python_identifier(): {"config": configs[k]} for k in keys if k in configs}
    return {"loggers": {"console": {"config": {"log_level": log_level}}}, "ops": ops}


def execute_run(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    partition: str | None,
    keys: list[dg.AssetKey],
    configs: dict[dg.AssetKey, dict[str, Any]],
    log_level: str = "WARNING",
) -> RunReport:
    """Materialize ``keys`` (for ``partition``) in one in-process Dagster run."""
    t0 = time.perf_counter()
    result = dg.materialize(
        assets=assets_of(defs),
        selection=keys,
        partition_key=partition,
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
        tags={
            LAUNCHER_TAG: "corpuslab materialize",
            PID_TAG: str(os.getpid()),
            HOST_TAG: socket.gethostname(),
        },
        run_config=_run_config(keys, configs, log_level),
    )
    checks = {
        f"{e.asset_key.to_user_string()}:{e.check_name}"
        + (f"[{partition}]" if partition else ""): e.passed
        for e in result.get_asset_check_evaluations()
    }
    error = ""
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        error = "; ".join(
            f"{e.step_key}: {e.step_failure_data.error.message.strip()}"
            for e in failures
            if e.step_failure_data and e.step_failure_data.error
        )
    return RunReport(
        result.run_id,
        partition,
        keys,
        result.success,
        time.perf_counter() - t0,
        checks,
        error or ("" if result.success else "run failed"),
        _step_seconds(result.all_events),
    )


def _step_seconds(events: Sequence[dg.DagsterEvent]) -> list[tuple[list[str], float]]:
    """Each step's materialized assets (several for dbt's) and duration, from the run's events."""
    assets: dict[str, list[str]] = defaultdict(list)
    for e in events:
        if e.is_step_materialization and e.asset_key is not None and e.step_key is not None:
            assets[e.step_key].append(e.asset_key.to_user_string())
    steps = []
    for e in events:
        ms = getattr(e.event_specific_data, "duration_ms", None)  # StepSuccessData's
        if e.is_step_success and e.step_key in assets and ms is not None:
            steps.append((sorted(assets[e.step_key]), ms / 1000))
    return steps


def time_by_stage(reports: Sequence[RunReport]) -> list[tuple[str, int, float]]:
    """(stage, steps, seconds) summed over every run's steps, the slowest stage first: where
    the time of a materialization went (with ``--jobs`` > 1 the sum exceeds the wall time)."""
    totals: dict[str, list[float]] = {}
    for report in reports:
        for assets, sec in report.steps:
            totals.setdefault(assets[0].split("/")[0], []).append(sec)
    rows = [(stage, len(secs), sum(secs)) for stage, secs in totals.items()]
    return sorted(rows, key=lambda row: -row[2])


def _worker_run(
    experiments: str | None, home: str, partition: str | None, keys: list[str], configs: dict
) -> RunReport:
    """A run in a worker process (its own definitions and instance connection)."""
    from definitions import build

    defs = build(Path(experiments) if experiments else None, home, now=True)
    instance = dg.DagsterInstance.get()
    asset_keys = [dg.AssetKey.from_user_string(k) for k in keys]
    cfg = {dg.AssetKey.from_user_string(k): v for k, v in configs.items()}
    return execute_run(defs, instance, partition, asset_keys, cfg)


def materialize(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    *,
    selection: dg.AssetSelection | None = None,
    force: dict[Unit, dict[str, Any]] | None = None,
    jobs: int = 1,
    experiments: Path | None = None,
    home: Path | str | None = None,
    log: Callable[[str], None] = print,
    max_ticks: int = 100,
    last_tick: Callable[[dg.EvaluateAutomationConditionsResult], None] | None = None,
) -> list[RunReport]:
    """Materialize until the automation conditions request nothing; raise on a failed run.

    ``defs`` must be built with the ``NOW`` conditions (``definitions.build(now=True)``).
    ``force`` adds units to materialize on the first tick whatever their status, with their run
    config (a full dedup recompute, a retrain). ``jobs`` > 1 runs independent runs of a tick
    side by side in worker processes (they rebuild the definitions from ``experiments`` and
    ``home``). ``last_tick`` receives the final evaluation (the one that requested nothing).
    """
    for run_id in reap_dead_runs(instance):
        log(f"run {run_id} was left running by a process that died: marked failed")
    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.materializable_asset_keys if selection is None or k in
            selection.resolve(graph)]  # fmt: skip
    configs: dict[dg.AssetKey, dict[str, Any]] = {}
    cursor = load_cursor(instance)
    first = dict(code_version_changes(defs, instance))
    first.update({u: "forced" for u in force or {}})
    for (key, _), cfg in (force or {}).items():
        configs[key] = cfg
    reports: list[RunReport] = []
    done: set[Unit] = set()
    deferred: set[Unit] = set()
    for _ in range(max_ticks):
        result = evaluate(defs, instance, selection, cursor)
        cursor = result.cursor
        save_cursor(instance, cursor)
        units = requested_units(result, keys) | {u for u in first if u[0] in keys} | deferred
        first = {}
        if not units:
            if last_tick is not None:
                last_tick(result)
            return reports
        units, deferred = split_ready(graph, units)
        again = units & done
        if again:
            names = ", ".join(sorted(f"{k.to_user_string()}[{p}]" for k, p in again))
            raise MaterializeError(f"still requested after being materialized: {names}")
        done |= units
        runs = group_runs(graph, units)
        for part, run_keys in runs:
            label = ", ".join(k.to_user_string() for k in run_keys)
            log(f"materializing {label}" + (f" [shard {part}]" if part else ""))
        tick_reports = []
        for level in order_runs(graph, runs):
            tick_reports += _execute(defs, instance, level, configs, jobs, experiments, home)
            if not all(r.success for r in tick_reports):
                break
        for report in tick_reports:
            reports.append(report)
            if not report.success:
                names = ", ".join(k.to_user_string() for k in report.keys)
                raise MaterializeError(
                    f"run {report.run_id} ({names}"
                    + (f" [shard {report.partition}]" if report.partition else "")
                    + f") failed: {report.error}"
                )
        configs = {}
    raise MaterializeError(f"still requesting after {max_ticks} ticks")


def _execute(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    runs: list[tuple[str | None, list[dg.AssetKey]]],
    configs: dict[dg.AssetKey, dict[str, Any]],
    jobs: int,
    experiments: Path | None,
    home: Path | str | None,
) -> list[RunReport]:
    if jobs <= 1 or len(runs) <= 1 or home is None:
        return [execute_run(defs, instance, part, keys, configs) for part, keys in runs]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(runs)), mp_context=ctx) as pool:
        futures = [
            pool.submit(
                _worker_run,
                str(experiments) if experiments else None,
                str(home),
                part,
                [k.to_user_string() for k in keys],
                {k.to_user_string(): v for k, v in configs.items() if k in keys},
            )
            for part, keys in runs
        ]
        return [f.result() for f in futures]
