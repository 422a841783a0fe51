"""End to end through Dagster: the tiny experiment materialized with ``corpuslab``'s engine
(declarative automation conditions evaluated against a real instance), then staleness, an
incremental shard and a killed training materialization.

The home is the session's ``materialized`` fixture (tests/conftest.py): a temporary Dagster
instance and a SQLite MLflow store; DeepSpeed really trains (CPU, gloo) in a subprocess launched
through Pipes; dbt-duckdb really builds the statistics. Tests that change a home work on a
copy of it (``copied``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest

from assets.partitions import shard_partitions
from cli.materialize import materialize, time_by_stage
from cli.status import status
from corpuslab.declarations import load_experiment
from corpuslab.fileio import digest
from corpuslab.layout import Layout
from definitions import build
from jobs.sensors import shard_requests
from tests.conftest import STRICT_DEDUP, Materialized, edit_experiment


def test_everything_materialized_and_checks_passed(materialized: Materialized) -> None:
    home, exp_dir, instance, reports = materialized
    assert reports and all(r.success for r in reports)
    checks = {k: v for r in reports for k, v in r.checks.items()}
    assert checks and all(checks.values()), checks
    # conservation checked on every shard of every sharded stage, survivors on every dedup shard
    graph = build(exp_dir, home=home).resolve_asset_graph()
    expected = set()
    for key in graph.materializable_asset_keys:
        pdef = graph.get(key).partitions_def
        if pdef is not None:
            check = "survivors_kept" if key.path[0] == "dedup" else "documents_conserved"
            for shard in pdef.get_partition_keys(dynamic_partitions_store=instance):
                expected.add(f"{key.to_user_string()}:{check}[{shard}]")
    assert len(expected) == 4 * 2 + 2 * (2 + 2) * 2 + 4 * 2  # corpus, pool and filtered; dedup
    expected.add("evalset/tiny_suite:excluded_from_training")  # the one unpartitioned check
    assert {k for k in checks if not k.startswith("stats/")} == expected
    # every materialized asset's step time is known, so the table of where time went is whole
    for r in reports:
        assert {a for assets, _ in r.steps for a in assets} == {
            k.to_user_string() for k in r.keys
        }, r.run_id
        assert all(sec > 0 for _, sec in r.steps)
    table = dict((stage, (n, sec)) for stage, n, sec in time_by_stage(reports))
    assert table["train"][0] == 1 + 1 + 2 and table["corpus"][0] == 4 * 2
    assert any(k.startswith("stats/") for k in checks)  # and dbt's tests, as asset checks
    # every asset once: the engine waits for every input that may still change
    units = [(k, r.partition) for r in reports for k in r.keys]
    assert len(units) == len(set(units))


def test_eval_metrics_and_artifacts_in_mlflow(materialized: Materialized) -> None:
    home, *_ = materialized
    layout = Layout(home)
    info = json.loads((layout.run_dir("smoke") / "mlflow.json").read_text())
    client = mlflow.MlflowClient(info["tracking_uri"])
    run = client.get_run(info["run_id"])
    metrics = run.data.metrics
    for domain in ("docstrings", "code"):
        assert 0 < metrics[f"eval.bpb.{domain}"] < 16
    assert metrics["eval.bpb.worst"] == max(
        metrics["eval.bpb.docstrings"], metrics["eval.bpb.code"]
    )
    losses = client.get_metric_history(info["run_id"], "loss")
    assert len(losses) >= 2 and all(m.value > 0 for m in losses)
    assert run.data.params["recipe"] == "lenient" and run.data.params["deepspeed"] == "zero2"
    assert "mixture.weight.code" in run.data.params
    assert run.data.tags["dagster.asset_key"] == "train/smoke"
    assert run.data.tags["dagster.run_id"]
    artifacts = {a.path for a in client.list_artifacts(info["run_id"], "config")}
    assert {"config/deepspeed_config.json", "config/spec.json", "config/mixture.json"} <= artifacts
    assert run.info.status == "FINISHED"


def test_doremi_and_entropy_mixtures_materialize_with_their_weights(
    materialized: Materialized,
) -> None:
    home, *_ = materialized
    layout = Layout(home)
    weights = json.loads((layout.doremi_dir("dro") / "weights.json").read_text())
    mix = json.loads((layout.mixture_dir("dro") / "mixture.json").read_text())
    assert mix["strategy"] == "doremi" and mix["weights"] == pytest.approx(weights["weights"])
    assert sum(weights["weights"].values()) == pytest.approx(1.0)
    assert set(weights["weights"]) == {"docstrings", "code"}
    assert weights["reference_weights"] == pytest.approx(
        json.loads((layout.mixture_dir("small") / "mixture.json").read_text())["weights"]
    )
    # the weights are the average of the proxy's per-step weights, as its report recorded them
    report = json.loads((layout.doremi_dir("dro") / "proxy" / "doremi.json").read_text())
    mean = np.mean(report["trajectory"], axis=0)
    expected = dict(zip(report["domains"], (mean / mean.sum()).tolist(), strict=True))
    assert weights["weights"] == pytest.approx(expected)
    assert weights["mean_excess_loss"] == report["mean_excess_loss"] and report["updates"] == 6
    # the proxy's MLflow run holds the trajectory (live metrics, report, plot)
    proxy = json.loads((layout.doremi_dir("dro") / "proxy" / "mlflow.json").read_text())
    client = mlflow.MlflowClient(proxy["tracking_uri"])
    run = client.get_run(proxy["run_id"])
    assert run.data.tags["corpuslab.doremi.role"] == "proxy" and run.info.status == "FINISHED"
    history = client.get_metric_history(proxy["run_id"], "doremi.weight.code")
    code = report["domains"].index("code")
    assert [(m.step, m.value) for m in history] == [
        (s, pytest.approx(report["trajectory"][s - 1][code])) for s in (2, 4, 6)
    ]
    files = {a.path for a in client.list_artifacts(proxy["run_id"], "doremi")}
    assert {"doremi/weights.json", "doremi/weights_trajectory.png", "doremi/doremi.json"} <= files
    png = layout.doremi_dir("dro") / "weights_trajectory.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # BiMix: weights proportional to each domain's conditional token entropy
    ent = json.loads((layout.mixture_dir("entropic") / "mixture.json").read_text())
    total = sum(ent["entropy"].values())
    assert ent["weights"] == pytest.approx({d: h / total for d, h in ent["entropy"].items()})
    # shared tokenizer: one tokenizer asset, every mixture's tokens under it
    for m in ("small", "dro", "entropic"):
        meta = json.loads((layout.tokens_dir(m) / "meta.json").read_text())
        assert meta["tokenizer"] == str(layout.tokenizer_dir("small") / "tokenizer.json")
    assert not layout.tokenizer_dir("dro").exists()


def _rows(folder: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in folder.glob("*.parquet"))


def test_dbt_counts_match_the_files_the_stages_wrote(materialized: Materialized) -> None:
    """dbt's per-stage counts against rows counted in the stages' Parquet outputs (not in the
    decision tables dbt reads): a stage's documents in are its input's rows, kept its output's."""
    home, exp_dir, *_ = materialized
    layout, exp = Layout(home), load_experiment(exp_dir)
    con = duckdb.connect(str(layout.duckdb_path), read_only=True)
    rows = con.execute(
        "select stage, recipe, source, documents_in, kept, dropped from stage_summary"
    ).fetchall()
    reasons = con.execute("select outcome from stage_counts where stage = 'pool'").fetchall()
    con.close()
    got = {(stage, recipe, source): tuple(n) for stage, recipe, source, *n in rows}
    expected = {}
    for source in exp.sources:
        quarantined = sum(
            len(p.read_text().splitlines()) for p in layout.quarantine_dir(source).glob("*.jsonl")
        )
        docs = _rows(layout.corpus_dir(source))
        expected[("corpus", "_", source)] = (docs + quarantined, docs, quarantined)
    for recipe, decl in exp.recipes.items():
        for source in decl.sources:
            corpus, pool = layout.corpus_dir(source), layout.pool_dir(recipe, source)
            filtered = layout.filtered_dir(recipe, source)
            for stage, inp, out in (("pool", corpus, pool), ("filtered", pool, filtered)):
                n_in, kept = _rows(inp), _rows(out)
                if n_in:  # a stage given no documents decides nothing: no row
                    expected[(stage, recipe, source)] = (n_in, kept, n_in - kept)
    assert got == expected
    assert all(v[1] > 0 for k, v in got.items() if k[0] == "corpus")
    assert any(v[2] > 0 for k, v in got.items() if k[0] == "pool")  # the recipes do drop
    assert any(o.startswith("gopher_quality:") for (o,) in reasons)


def _add_shards(exp_dir: Path, home: Path, instance: dg.DagsterInstance) -> dict:
    new = shard_requests(load_experiment(exp_dir), Layout(home), instance)
    for source, keys in new.items():
        instance.add_dynamic_partitions(shard_partitions(source).name, keys)
    return new


@pytest.fixture()
def copied(
    materialized: Materialized, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Materialized]:
    """A copy of the session's materialized home and Dagster instance, for tests that change
    them (the MLflow store's recorded artifact folder still names the original home)."""
    base = tmp_path / "copy"
    home = base / "home"
    shutil.copytree(materialized.home, home)
    exp_dir = shutil.copytree(materialized.exp_dir, base / "experiments")
    dagster_dir = shutil.copytree(materialized.instance.root_directory, base / "dagster")
    monkeypatch.setenv("CORPUSLAB_HOME", str(home))
    with dg.instance_for_test(temp_dir=str(dagster_dir)) as instance:
        yield Materialized(home, exp_dir, instance, [])


def test_nothing_due_on_second_run(materialized: Materialized) -> None:
    home, exp_dir, instance, _ = materialized
    defs = build(exp_dir, home=home, now=True)
    assert status(defs, instance) == {}
    assert materialize(defs, instance, log=lambda _: None) == []


def _edited(exp_dir: Path, dst: Path, old: str, new: str) -> Path:
    return edit_experiment(exp_dir, dst, "recipes.yaml", old, new)


def _due(defs: dg.Definitions, instance: dg.DagsterInstance) -> set[str]:
    """Assets ``corpuslab status`` says are due, without their shard."""
    return {line.split("[")[0].split(":")[0] for line in status(defs, instance).get("due", [])}


def test_editing_one_recipe_makes_only_its_assets_due(
    materialized: Materialized, tmp_path: Path
) -> None:
    home, exp_dir, instance, _ = materialized
    # the strict recipe's dedup threshold: strict's dedup shards, by their declaration
    edited = _edited(
        exp_dir,
        tmp_path / "a",
        STRICT_DEDUP,
        STRICT_DEDUP.replace("threshold: 0.8", "threshold: 0.7"),
    )
    lines = status(build(edited, home=home, now=True), instance)
    assert {line.split("[")[0].split(":")[0] for line in lines["due"]} == {
        "dedup/strict/docstrings",
        "dedup/strict/packages",
        "quality_model/strict",  # its sample comes from what dedup leaves: checked again
    }
    assert all("declaration changed" in line for line in lines["due"])
    assert len(lines["due"]) == 5  # two shards each, and the model

    # the lenient recipe's steps: its pool shards, nothing of the strict recipe
    edited = _edited(
        exp_dir,
        tmp_path / "b",
        "gopher_quality: {min_words: 20,",
        "gopher_quality: {min_words: 25,",
    )
    assert _due(build(edited, home=home, now=True), instance) == {
        "pool/lenient/docstrings",
        "pool/lenient/code",
        "quality_model/lenient",
    }


def test_a_new_shard_changes_no_decision_about_existing_shards(copied: Materialized) -> None:
    """Add a raw shard: only its own per-shard assets run (nothing global is due), the quality
    model is kept (not even re-checked: same bytes), every existing dedup and filtered shard
    keeps its output, and the new shard's duplicates of existing documents are dropped in
    favour of the existing survivors."""
    home, exp_dir, instance, _ = copied
    layout = Layout(home)
    raw = home / "raw" / "code"
    existing = sorted(p.name for p in raw.iterdir() if not p.name.startswith("."))
    # the new shard: an existing shard's documents again (all duplicates) under new ids
    from corpuslab.ingest.readers import read_raw_shard

    first = read_raw_shard(raw / existing[0], "code").table
    records = [
        {"id": f"again-{i}", "text": t} for i, t in enumerate(first.column("text").to_pylist())
    ]
    (raw / "part-00009.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    before = {
        p: digest(p)
        for d in ("filtered", "dedup")
        for p in (layout.data / d).rglob("*.parquet")
        if "signatures" not in p.parts
    }
    model = layout.quality_dir("lenient") / "model.bin"
    model_digest = digest(model)
    assert _add_shards(exp_dir, home, instance) == {"code": ["part-00009"]}
    curation = dg.AssetSelection.from_string(
        'key:"corpus/*" or key:"pool/*" or key:"dedup/*" or key:"quality_model/*" '
        'or key:"filtered/*"'
    )
    reports = materialize(
        build(exp_dir, home=home, now=True), instance, selection=curation, log=lambda _: None
    )
    ran = {(k.to_user_string(), r.partition) for r in reports for k in r.keys}
    assert {p for _, p in ran} == {"part-00009"}  # nor the quality model: it is fixed
    assert {k for k, p in ran if p == "part-00009"} == {
        "corpus/code", "pool/lenient/code", "dedup/lenient/code", "filtered/lenient/code"
    }  # fmt: skip
    assert digest(model) == model_digest  # same declaration, same sample: the model is kept
    for path, old in before.items():
        assert digest(path) == old, f"{path} changed"
    new = layout.dedup_decisions_dir("lenient", "code") / "part-00009.parquet"
    decided = duckdb.sql(f"select status, survivor_key from '{new}'").fetchall()
    kept_before = {
        k
        for (k,) in duckdb.sql(
            f"select key from '{layout.dedup_dir('lenient')}/decisions/*/*.parquet' "
            "where status = 'kept' and shard <> 'part-00009'"
        ).fetchall()
    }
    survivors = {s for st, s in decided if st != "kept"}
    assert survivors and survivors <= kept_before  # pointed at existing survivors
    # a full recompute rebuilds the index as one batch: the global clustering
    materialize(
        build(exp_dir, home=home, now=True),
        instance,
        selection=curation,
        force={
            (dg.AssetKey(["dedup", "lenient", src]), part): {"full_recompute": "t1"}
            for src in ("docstrings", "code")
            for part in instance.get_dynamic_partitions(shard_partitions(src).name)
        },
        log=lambda _: None,
    )
    from corpuslab.stages.dedup import recipe_decisions

    after = recipe_decisions(load_experiment(exp_dir), layout, "lenient")
    assert after.num_rows == sum(
        len(duckdb.sql(f"select id from '{p}'").fetchall())
        for p in layout.data.glob("pool/recipe=lenient/*/*.parquet")
    )


RESUMABLE = """
  {name}:
    mixture: small
    model: {{n_layer: 1, n_head: 2, d_model: 32}}
    deepspeed: zero2
    train: {{steps: 300, micro_batch_size: 4, warmup_steps: 2, log_every: 5,
            checkpoint_every: 25, lr: 3.0e-3}}
"""


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc's children lists)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:  # exited meanwhile
                continue
    return out


def _losses(layout: Layout, run: str) -> dict[int, float]:
    info = json.loads((layout.run_dir(run) / "mlflow.json").read_text())
    client = mlflow.MlflowClient(info["tracking_uri"])
    return {m.step: m.value for m in client.get_metric_history(info["run_id"], "loss")}


def test_a_killed_training_materialization_resumes_into_the_same_mlflow_run(
    copied: Materialized, tmp_path: Path
) -> None:
    """SIGKILL `corpuslab materialize` (and its torchrun) after a checkpoint; materializing again
    resumes from that checkpoint into the same MLflow run and ends where an uninterrupted run
    of the same declaration ends, step for step."""
    import os
    import signal
    import subprocess
    import sys
    import time

    home, exp_dir, instance, _ = copied
    layout = Layout(home)
    edited = tmp_path / "exp"
    shutil.copytree(exp_dir, edited)
    runs = edited / "runs.yaml"
    head, studies = runs.read_text().split("\nstudies:")  # the two runs go under runs:
    extra = RESUMABLE.format(name="straight") + RESUMABLE.format(name="killed")
    runs.write_text(f"{head.rstrip()}{extra}\nstudies:{studies}")
    env = {
        **os.environ,
        "CORPUSLAB_HOME": str(home),
        "CORPUSLAB_EXPERIMENTS": str(edited),
        "DAGSTER_HOME": instance.root_directory,
        "DS_ACCELERATOR": "cpu",
    }
    cmd = [sys.executable, "-m", "cli", "materialize", "--jobs", "1", "--select"]

    def materialize(selection: str) -> None:
        done = subprocess.run([*cmd, selection], env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{selection}: {done.stdout[-3000:]}\n{done.stderr[-6000:]}"

    materialize('key:"train/straight"')

    proc = subprocess.Popen(
        [*cmd, 'key:"train/killed"'],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = layout.run_dir("killed") / "checkpoints" / "latest"
    deadline = time.time() + 300
    # any checkpoint before the last: a tiny model trains fast, so the window is the whole run
    before_end = {f"step{s}" for s in range(25, 300, 25)}
    while not (latest.is_file() and latest.read_text().strip() in before_end):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint after 5 minutes"
        time.sleep(0.02)
    for pid in _tree(proc.pid):  # the CLI, torchrun and its ranks (in sessions of their own)
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(latest.read_text().strip().removeprefix("step"))
    before = json.loads((layout.run_dir("killed") / "mlflow.json").read_text())["run_id"]
    assert not (layout.run_dir("killed") / "summary.json").exists()

    materialize('key:"train/killed"')
    summary = json.loads((layout.run_dir("killed") / "summary.json").read_text())
    assert summary["resumed_from_step"] == killed_at
    assert json.loads((layout.run_dir("killed") / "mlflow.json").read_text())["run_id"] == before
    client = mlflow.MlflowClient(layout.mlflow_uri)
    run = client.get_run(before)
    assert run.info.status == "FINISHED" and "corpuslab.resumed_by" in run.data.tags
    straight = json.loads((layout.run_dir("straight") / "summary.json").read_text())
    assert summary["final_loss"] == pytest.approx(straight["final_loss"], abs=1e-6)
    ours, theirs = _losses(layout, "killed"), _losses(layout, "straight")
    assert set(ours) == set(theirs) and max(ours) == 300
    assert all(ours[s] == pytest.approx(theirs[s], abs=1e-6) for s in theirs)


def test_study_report_eval_metrics_and_datasets_in_mlflow(materialized: Materialized) -> None:
    """The suite, the seeded run and the study, end to end: the exclusion check ran and passed,
    every replicate has suite metrics (and the trajectory) in MLflow with its token file and
    eval set as dataset inputs, the study's report is a parent run of the compared runs, and
    dbt's leaderboard lists both runs with their seed counts."""
    import json

    home, _, _, reports = materialized
    layout = Layout(home)
    checks = {k: v for r in reports for k, v in r.checks.items()}
    assert checks["evalset/tiny_suite:excluded_from_training"]
    study = json.loads((layout.compare_dir("tiny_study") / "study.json").read_text())
    assert study["metric"] == "tiny_suite.core" and study["baseline"] == "smoke"
    est = study["headline"]["estimates"]
    assert est["smoke"]["n_seeds"] == 1 and est["smoke_b"]["n_seeds"] == 2
    assert est["smoke_b"]["low"] <= est["smoke_b"]["value"] <= est["smoke_b"]["high"]
    diff = study["headline"]["differences"]["smoke_b"]
    assert 0.0 <= diff["flip_probability"] <= 1.0 and diff["low"] <= diff["value"] <= diff["high"]
    assert "smoke_b" in study["decision"]["statement"]
    html = (layout.compare_dir("tiny_study") / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and 'src="http' not in html
    client = mlflow.MlflowClient(layout.mlflow_uri)
    parent = client.get_run(study["mlflow_parent_run_id"])
    assert parent.data.tags["corpuslab.study"] == "tiny_study"
    assert {"report/report.html", "report/report.md", "report/study.json"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "report")
    }
    for run, seed in (("smoke", None), ("smoke_b", 0), ("smoke_b", 1)):
        info = json.loads((layout.run_dir(run, seed) / "mlflow.json").read_text())
        r = client.get_run(info["run_id"])
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"eval.tiny_suite.core", "eval.tiny_suite.heldout.reference.bpb",
                "eval.tiny_suite.sig_1shot.p_correct"} <= set(r.data.metrics)  # fmt: skip
        inputs = {(i.dataset.name, i.tags[0].value) for i in r.inputs.dataset_inputs}
        assert inputs == {("tokens/small", "training"), ("evalset/tiny_suite", "evaluation")}
        if seed is not None:
            assert r.data.params["train.seed"] == str(seed)
    # eval_every: 4 on smoke: the suite scored at step 4 and at the final step 8
    info = json.loads((layout.run_dir("smoke") / "mlflow.json").read_text())
    steps = [m.step for m in client.get_metric_history(info["run_id"], "eval.tiny_suite.core")]
    assert sorted(steps) == [4, 8]
    con = duckdb.connect(str(layout.duckdb_path), read_only=True)
    board = con.execute("select run, seeds from leaderboard order by run").fetchall()
    con.close()
    assert board == [("smoke", 1), ("smoke_b", 2)]
