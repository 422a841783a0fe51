"""MLflow's UI in a real browser: ``mlflow ui`` (what ``make mlflow`` starts) on 127.0.0.1 over a
copy of the tiny experiment's MLflow store, its compare view opened for the ``smoke`` and
``child`` training runs, and their held-out bits-per-byte found on the page, each in its run's
column and on its metric's row.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from playwright.sync_api import Page, expect

from corpuslab.layout import Layout
from tests.conftest import Materialized
from tests.ui.pages import expect_visible, page_text
from tests.ui.servers import Server, free_port, serve, server_env, wait_for

RUNS = ("smoke", "child")
# The first rows of the compare view's metric table (sorted by name): react-virtualized renders
# only the rows near the viewport, and these are the metrics the runs are compared on.
METRICS = ("eval.bpb.code", "eval.bpb.docstrings", "eval.bpb.mean", "eval.bpb.worst")

# The values shown on the row of metric `key`, left to right (one cell a run): the cells of the
# table's grids whose vertical middle is the name cell's, right of it.
ROW_VALUES_JS = """(key) => {
  const names = [...document.querySelectorAll('[role=grid] a')]
    .filter(a => a.textContent.trim() === key);
  if (names.length !== 1) return null;
  const name = names[0].getBoundingClientRect();
  const mid = name.top + name.height / 2;
  return [...document.querySelectorAll('[role=grid] span')]
    .map(s => [s.getBoundingClientRect(), s.textContent.trim()])
    .filter(([b]) => b.left >= name.right && b.top <= mid && mid <= b.bottom)
    .sort((a, b) => a[0].left - b[0].left)
    .map(([, text]) => text);
}"""


@pytest.fixture()
def mlflow_ui(materialized: Materialized, tmp_path: Path) -> Iterator[tuple[Server, str]]:
    """``mlflow ui`` over a copy of the materialized home's store; yields it and the copy's URI.

    MLflow's background job runner (GenAI scorers and trace rollups: eight more processes, ~7 s
    more to start and ~30 s more to stop on two cores) is switched off; the tracking server and
    UI are the ones ``make mlflow`` starts.
    """
    store = tmp_path / "mlflow.db"
    shutil.copyfile(Layout(materialized.home).mlflow_dir / "mlflow.db", store)
    uri = f"sqlite:///{store}"
    port = free_port()
    command = ["mlflow", "ui", "--backend-store-uri", uri, "-h", "127.0.0.1", "-p", str(port)]
    command += ["--workers", "1"]
    env = server_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    with serve("mlflow ui", command, port=port, env=env, log=tmp_path / "mlflow.log") as server:
        wait_for(server, lambda: server.get("/health") == b"OK", "answer on /health", 180)
        yield server, uri


def test_compare_view_shows_both_runs_eval_metrics(
    mlflow_ui: tuple[Server, str], materialized: Materialized, page: Page, tmp_path: Path
) -> None:
    """The compare view of the smoke and child runs lists both run ids, in the order asked,
    and on each held-out bits-per-byte row shows each run's value, as the store holds it, to
    the three decimals the UI prints."""
    server, uri = mlflow_ui
    layout = Layout(materialized.home)
    ids = [json.loads((layout.run_dir(r) / "mlflow.json").read_text())["run_id"] for r in RUNS]
    client = mlflow.MlflowClient(uri)
    runs = [client.get_run(i) for i in ids]
    (experiment,) = {r.info.experiment_id for r in runs}
    query = urllib.parse.urlencode(
        {"runs": json.dumps(ids), "experiments": json.dumps([experiment])}
    )

    page.goto(f"{server.url}/#/compare-runs?{query}")
    heading = page.get_by_text("Comparing 2 Runs from 1 Experiment")
    expect_visible(page, heading, "the compare view of two runs", 60)
    # the run ids head the columns, in the order of the URL
    id_links = page.get_by_role("link", name=re.compile(f"^({ids[0]}|{ids[1]})$"))
    expect(id_links).to_have_count(2)
    boxes = {link.inner_text().strip(): link.bounding_box() for link in id_links.all()}
    assert sorted(boxes, key=lambda i: boxes[i]["x"]) == ids, boxes

    first = page.get_by_role("grid").get_by_text(METRICS[0], exact=True)
    expect_visible(page, first, "the metrics table", 30)
    first.evaluate("e => e.scrollIntoView({block: 'center'})")  # the screenshot shows the table
    for key in METRICS:
        shown = page.evaluate(ROW_VALUES_JS, key)
        assert shown, f"no row {key!r} among the metrics; the page shows:\n{page_text(page)}"
        stored = [r.data.metrics[key] for r in runs]
        assert [float(v) for v in shown] == pytest.approx(stored, abs=5e-4), (key, shown, stored)

    page.screenshot(path=tmp_path / "mlflow-compare.png")
    assert (tmp_path / "mlflow-compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
