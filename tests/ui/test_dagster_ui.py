"""Dagster's UI in a real browser: ``dagster dev`` (what ``make ui`` starts) on 127.0.0.1 over a
copy of the tiny experiment's home and instance, with one recipe edited so that one asset is
stale; the asset is found stale on the asset graph, materialized with the page's own button,
and seen to succeed, in the page and in the instance.

The edit is the ``strict`` recipe's ``keep_fraction`` (0.8 -> 0.7): it changes the code version
of ``quality_model/strict`` only (pool and dedup versions leave ``quality`` out), an asset that
is not partitioned, so "Materialize" launches one run at once; a pool edit would stale four
shard partitions and go through the partition dialog and a backfill. The run is launched the
way the UI launches every run: queued, dequeued by the daemon, executed in a subprocess of the
code server, which gets ``CORPUSLAB_HOME``, ``CORPUSLAB_EXPERIMENTS`` and ``DS_ACCELERATOR`` from
``dagster dev``'s environment.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import dagster as dg
import pytest
from playwright.sync_api import Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from cli.main import LOCAL_INSTANCE_YAML
from corpuslab.declarations import load_experiment
from corpuslab.layout import Layout
from corpuslab.stages.versions import code_version
from tests.conftest import Materialized, edit_experiment
from tests.ui.pages import expect_visible, page_text
from tests.ui.servers import Server, free_port, serve, server_env, wait_for

KEY = dg.AssetKey(["quality_model", "strict"])
OLD, NEW = "keep_fraction: 0.8}", "keep_fraction: 0.7}"  # the strict recipe's, in TINY_EXPERIMENT
LOCATION = "corpuslab"  # [tool.dagster] code_location_name

LOCATIONS_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


class DagsterUI(NamedTuple):
    server: Server
    home: Path
    exp_dir: Path
    dagster_home: Path


def location_loaded(server: Server) -> bool:
    """Whether the webserver has loaded the code location; fails with Dagster's error if the
    location could not be loaded (an import error, a bad declaration)."""
    request = urllib.request.Request(
        server.url + "/graphql",
        data=json.dumps({"query": LOCATIONS_QUERY}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        workspace = json.load(response)["data"]["workspaceOrError"]
    entries = {e["name"]: e for e in workspace.get("locationEntries", [])}
    entry = entries.get(LOCATION)
    if entry is None or entry["loadStatus"] != "LOADED":
        return False
    loaded = entry["locationOrLoadError"]
    assert loaded and loaded["__typename"] != "PythonError", f"code location failed: {loaded}"
    return True


@pytest.fixture()
def dagster_ui(
    materialized: Materialized, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DagsterUI]:
    """``dagster dev`` over a copy of the materialized home, with the instance where ``make ui``
    keeps it (``$CORPUSLAB_HOME/dagster``, the local instance config) and the edited recipe."""
    home = shutil.copytree(materialized.home, tmp_path / "home")
    dagster_home = shutil.copytree(materialized.instance.root_directory, home / "dagster")
    shutil.copyfile(LOCAL_INSTANCE_YAML, dagster_home / "dagster.yaml")
    exp_dir = edit_experiment(
        materialized.exp_dir, tmp_path / "experiments", "recipes.yaml", OLD, NEW
    )
    env = {
        "CORPUSLAB_HOME": str(home),
        "CORPUSLAB_EXPERIMENTS": str(exp_dir),
        "DAGSTER_HOME": str(dagster_home),
        "DS_ACCELERATOR": "cpu",
    }
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))  # this process reads the same instance
    port = free_port()
    command = ["dagster", "dev", "-h", "127.0.0.1", "-p", str(port)]
    log = tmp_path / "dagster-dev.log"
    with serve("dagster dev", command, port=port, env=server_env(env), log=log) as server:
        wait_for(server, lambda: location_loaded(server), "code location loaded", 240, every=1)
        yield DagsterUI(server, home, exp_dir, dagster_home)


def skip_community_dialog(page: Page) -> None:
    """Skip the dialog in which Dagster's UI asks the first visitor of an instance on 127.0.0.1
    to join its community (it opens a second after the app loads), as a person would; nothing
    to do if it does not open (this instance's first visitor already answered it)."""
    dialog = page.get_by_text("Join the Dagster community")
    try:
        dialog.wait_for(state="visible", timeout=15_000)
    except PlaywrightTimeoutError:
        return
    page.get_by_role("button", name="Skip").click()
    dialog.wait_for(state="hidden")


def filter_graph(page: Page, query: str) -> None:
    """Type ``query`` into the asset graph's search box and press Enter, as a person does, and
    check that the box holds exactly that before pressing Enter."""
    search = page.get_by_role("textbox", name="Search and filter assets")
    search.press_sequentially(query)  # focuses the editor's text area first
    shown = page.locator(".CodeMirror", has=search).locator(".CodeMirror-code").inner_text()
    assert shown.strip() == query, f"typed {query!r}, the search box shows {shown!r}"
    search.press("Enter")


def _run_failure(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Why the run failed, from its event log, or None while it has not failed."""
    run = instance.get_run_by_id(run_id)
    if run is None or run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        return None
    errors = [
        str(e.dagster_event.event_specific_data)
        for e in instance.all_logs(run_id)
        if e.dagster_event is not None and e.dagster_event.is_failure
    ]
    return f"run {run_id} {run.status.value}: " + "\n".join(errors)[-3000:]


def wait_shown_materialized(
    page: Page,
    node: Locator,
    instance: dg.DagsterInstance,
    run_id: str,
    server: Server,
    timeout: float,
) -> None:
    """Wait until the asset's node, which follows its runs live, shows its materialization by
    ``run_id``; fail at once, with the run's errors, if the run fails."""
    shown = node.locator(f'a[href*="/runs/{run_id}"]')
    deadline = time.monotonic() + timeout
    while not (shown.count() and node.get_by_text("Materialized", exact=True).count()):
        failure = _run_failure(instance, run_id)
        assert failure is None, f"{failure}\nthe page shows:\n{page_text(page)}"
        if time.monotonic() > deadline:
            run = instance.get_run_by_id(run_id)
            raise AssertionError(
                f"run {run_id} ({run.status.value if run else 'not found'}) not shown "
                f"materialized after {timeout:.0f}s; the page shows:\n{page_text(page)}\n"
                f"dagster dev's log ends:\n{server.log_tail()}"
            )
        page.wait_for_timeout(1000)


def test_stale_asset_materialized_from_the_asset_graph(
    dagster_ui: DagsterUI, page: Page, tmp_path: Path
) -> None:
    """On the global asset graph, quality_model/strict shows "Unsynced" after its recipe's edit;
    its "Materialize" button launches a run that succeeds: the node then shows the run's
    materialization and is in sync, the run page says Success, and the instance holds a
    materialization by that run, marked as launched from the UI, with the edited declaration's
    code version and an output that keeps the edited fraction."""
    server, home, exp_dir, _ = dagster_ui
    page.goto(server.url + "/asset-groups")  # "Lineage": the global asset graph
    search = page.get_by_role("textbox", name="Search and filter assets")
    expect_visible(page, page.locator(".CodeMirror", has=search), "the graph's search box", 60)
    skip_community_dialog(page)
    filter_graph(page, f'key:"{KEY.to_user_string()}"')
    node = page.locator("foreignObject > div").filter(has_text="Latest event")
    expect_visible(page, node, f"the node of {KEY.to_user_string()}", 60)
    badge = node.get_by_text("Unsynced")
    expect_visible(page, badge, "the node's Unsynced badge", 60)
    badge.hover()  # the badge says why: the recipe's edit, nothing upstream
    cause = page.get_by_text("has a new code version")
    expect_visible(page, cause, "the Unsynced badge's cause", 30)
    page.screenshot(path=tmp_path / "dagster-stale.png")

    page.get_by_role("button", name=re.compile(r"\bMaterialize$")).click()
    launched = page.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}$"))
    expect_visible(page, launched, "the 'Launched run' notice", 60)
    short_id = launched.inner_text().split()[-1]

    with dg.DagsterInstance.get() as instance:
        (run,) = [  # the run the button launched, tagged by Dagster as launched from the UI
            r
            for r in instance.get_runs(dg.RunsFilter(tags={"dagster/from_ui": "true"}))
            if r.run_id.startswith(short_id)
        ]
        wait_shown_materialized(page, node, instance, run.run_id, server, timeout=300)
        try:  # the staleness badge refreshes after the run's status
            expect(node.get_by_text("Unsynced")).to_have_count(0, timeout=60_000)
        except AssertionError as exc:
            raise AssertionError(f"still Unsynced after the run:\n{page_text(page)}") from exc
        page.screenshot(path=tmp_path / "dagster-asset-graph.png")

        page.goto(f"{server.url}/runs/{run.run_id}")
        expect_visible(page, page.get_by_text("Success", exact=True).first, "run Success", 60)
        page.screenshot(path=tmp_path / "dagster-run.png")

        event = instance.get_latest_materialization_event(KEY)
        assert event is not None and event.run_id == run.run_id
        finished = instance.get_run_by_id(run.run_id)
        assert finished is not None and finished.status == dg.DagsterRunStatus.SUCCESS
        materialization: Any = event.asset_materialization
        expected = code_version(load_experiment(exp_dir, home), "quality_model", "strict")
        assert materialization.tags["dagster/code_version"] == expected

    # the run worked in the copied home, with the edited declaration
    summary = json.loads((Layout(home).quality_dir("strict") / "summary.json").read_text())
    assert summary["kept"] == math.floor(0.7 * summary["scored"] + 0.5), summary
    for name in ("dagster-stale.png", "dagster-asset-graph.png", "dagster-run.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
