"""``stats/*``: dbt-duckdb statistics over the stage outputs, as Dagster assets (dagster-dbt)."""

import contextlib
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from assets.common import assets_of
from corpuslab.fileio import exclusive
from corpuslab.layout import HOME_ENV
from jobs.automation import condition_for
from resources.dbt import dbt_project
from resources.home import CorpuslabHome

# stats.duckdb has one writer at a time: Dagster's pool (a run queue with pool limits honours
# it; `corpuslab materialize` puts assets sharing a pool in one run) and a file lock besides
STATS_POOL = "corpuslab_stats_duckdb"


class CorpuslabDbtTranslator(DagsterDbtTranslator):
    """Keys dbt models under ``stats/`` and wires them downstream of the stage assets.

    The SQL reads Parquet globs, which dbt cannot see as lineage; a model names the stages it
    reads in ``meta.corpuslab_upstream`` and this translator turns them into asset deps.
    """

    def __init__(self, keys_by_stage: Mapping[str, Sequence[dg.AssetKey]]) -> None:
        super().__init__()
        self.keys_by_stage = keys_by_stage

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = self.get_resource_props(manifest, unique_id)
        if props.get("resource_type") != "model":
            return spec
        meta = props.get("meta") or props.get("config", {}).get("meta", {}) or {}
        stages = meta.get("corpuslab_upstream", [])
        extra = [dg.AssetDep(k) for s in stages for k in self.keys_by_stage.get(s, [])]
        key = dg.AssetKey(["stats", props["name"]])
        return spec.replace_attributes(
            key=key,
            deps=[*spec.deps, *extra],
            group_name="stats",
            automation_condition=condition_for(key),
        )


STATS = dg.AssetKey(["stats"])


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment while dbt runs (its profile reads it)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def build_dbt_assets(keys_by_stage: Mapping[str, Sequence[dg.AssetKey]]) -> dg.AssetsDefinition:
    project = dbt_project()

    @dbt_assets(
        manifest=project.manifest_path,
        project=project,
        dagster_dbt_translator=CorpuslabDbtTranslator(keys_by_stage),
        name="corpus_stats",
        pool=STATS_POOL,
    )
    def _corpus_stats(
        context: dg.AssetExecutionContext, dbt: DbtCliResource, home: CorpuslabHome
    ) -> Any:
        with (
            home.staged(None, STATS) as layout,
            exclusive(layout.duckdb_path.with_name(".stats.lock")),  # one DuckDB writer at a time
            _environ(HOME_ENV, str(layout.home)),
        ):
            yield from dbt.cli(["build"], context=context).stream()  # on the local copy

    return _corpus_stats


def defs(*domains: dg.Definitions) -> dg.Definitions:
    """The dbt models, downstream of the stage assets of ``domains`` they read."""
    keys: dict[str, list[dg.AssetKey]] = defaultdict(list)
    for d in domains:
        for a in assets_of(d):
            for key in a.keys:
                keys[key.path[0]].append(key)
    return dg.Definitions(assets=[build_dbt_assets(keys)])
