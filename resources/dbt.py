"""``dbt``: the dbt-duckdb project, parsed once a process when its files changed."""

import sys
from functools import cache
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject

REPO_ROOT = Path(__file__).resolve().parent.parent
DBT_DIR = REPO_ROOT / "dbt"
# the dbt of this interpreter's environment, so an un-activated virtualenv still finds it
DBT_EXE = str(Path(sys.executable).parent / "dbt")


@cache
def dbt_project() -> DbtProject:
    """The dbt-duckdb project, its manifest re-parsed when a dbt file is newer (once a process).

    Our own check replaces ``prepare_if_dev`` so that it also runs outside ``dagster dev`` (a
    clean checkout has no manifest) and uses this environment's dbt even when it is not on PATH.
    """
    project = DbtProject(project_dir=DBT_DIR, profiles_dir=DBT_DIR)
    sources = [DBT_DIR / "dbt_project.yml", *DBT_DIR.glob("models/**/*"), *DBT_DIR.glob("macros/*")]
    manifest = Path(project.manifest_path)
    if not manifest.exists() or manifest.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        _cli(project).cli(["parse", "--quiet"], target_path=Path("target")).wait()
    return project


def _cli(project: DbtProject) -> DbtCliResource:
    return DbtCliResource(project_dir=project, profiles_dir=str(DBT_DIR), dbt_executable=DBT_EXE)


def dbt_resource() -> DbtCliResource:
    """The ``dbt`` resource: the project (parsed if needed) with this environment's dbt."""
    return _cli(dbt_project())
