"""``compare/<study>``: the declared runs (every seed) compared on one suite, with confidence.

Reads each replicate's ``eval.json``, computes intervals, paired differences to the baseline
and flip probabilities for the headline metric and every other metric of the suite
(:mod:`corpuslab.eval.study`), writes ``study.json``, ``report.md``, ``report.html`` and the
plots, and records them in MLflow as the artifacts of a parent run whose children are the
compared runs (MLflow's ``mlflow.parentRunId`` tag; a run belongs to the study that last
claimed it).
"""

from __future__ import annotations

from typing import Any

from corpuslab.declarations import Experiment
from corpuslab.eval import study as lib
from corpuslab.eval.evalset import DECONTAMINATION, MANIFEST
from corpuslab.eval.metrics import parse_metric
from corpuslab.eval.stats import BootstrapPlan
from corpuslab.fileio import digest, read_json, write_json
from corpuslab.layout import Layout
from corpuslab.stages.training import replicate_name


def _replicates(exp: Experiment, layout: Layout, run: str) -> list[dict[str, Any]]:
    out = []
    for seed in exp.runs[run].replicates():
        path = layout.eval_dir(run, seed) / "eval.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: materialize eval/{replicate_name(run, seed)} first"
            )
        out.append(read_json(path))
    return out


def _loss_curve(client: Any, run_id: str) -> list[tuple[int, float]]:
    history = client.get_metric_history(run_id, "loss")
    return [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)]


def materialize_compare(exp: Experiment, layout: Layout, study: str, client: Any) -> dict[str, Any]:
    """Compare the study's runs (see the module docstring); ``client``: an MlflowClient."""
    decl = exp.studies[study]
    suite = decl.suite
    sdecl = exp.evals[suite]
    headline = parse_metric(decl.metric, sdecl.task_names(), sdecl.heldout_sources())
    plan = BootstrapPlan(n_boot=decl.n_boot, confidence=decl.confidence, seed=decl.seed)
    evals = {run: _replicates(exp, layout, run) for run in decl.runs}
    runs = {run: lib.run_scores(reps, suite) for run, reps in evals.items()}
    comparisons = lib.analyze(runs, decl.baseline, headline, plan)
    verdict = lib.decision(comparisons[str(headline)], decl.confidence)
    curves = {
        run: {str(e["seed"]): _loss_curve(client, e["run_id"]) for e in reps}
        for run, reps in evals.items()
    }
    out_dir = layout.compare_dir(study)
    plot_files = lib.plots(comparisons, decl.runs, suite, curves, out_dir)
    evalset_dir = layout.evalset_dir(suite)
    context = {
        "runs": {
            run: {
                "seeds": exp.runs[run].seeds or [f"train.seed={exp.runs[run].train.seed}"],
                "mixture": exp.runs[run].mixture,
                "recipe": exp.mixtures[exp.runs[run].mixture].recipe,
                "mlflow_run_ids": [e["run_id"] for e in reps],
            }
            for run, reps in evals.items()
        },
        "evalset": read_json(evalset_dir / MANIFEST),
        "decontamination": read_json(evalset_dir / DECONTAMINATION),
    }
    md_path, html_path = lib.write_report(
        out_dir, study, str(headline), comparisons, verdict, plan, context, plot_files
    )
    result = {
        "study": study,
        "metric": str(headline),
        "baseline": decl.baseline,
        "confidence": decl.confidence,
        "n_boot": decl.n_boot,
        "decision": verdict,
        "headline": lib.comparison_json(comparisons[str(headline)]),
        "metrics": {k: lib.comparison_json(c) for k, c in comparisons.items()},
        "runs": context["runs"],
        "evalset": context["evalset"]["data_version"],
        "report": {"markdown": str(md_path), "html": str(html_path)},
    }
    child_ids = [i for info in result["runs"].values() for i in info["mlflow_run_ids"]]
    parent = _create_parent_run(client, study, decl, result, child_ids)
    result["mlflow_parent_run_id"] = parent
    study_json = out_dir / "study.json"
    try:
        write_json(result, study_json)
        _fill_parent_run(client, parent, study, result, child_ids,
                         [study_json, md_path, html_path, *plot_files.values()])  # fmt: skip
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    result["data_version"] = digest(study_json)
    return result


def _create_parent_run(
    client: Any, study: str, decl: Any, result: dict[str, Any], child_ids: list[str]
) -> str:
    """The study's MLflow run, in the compared runs' experiment, with the decision as note."""
    experiment_id = client.get_run(child_ids[0]).info.experiment_id
    parent = client.create_run(
        experiment_id,
        run_name=f"study-{study}",
        tags={
            "corpuslab.study": study,
            "corpuslab.metric": result["metric"],
            "mlflow.note.content": result["decision"]["statement"],
        },
    ).info.run_id
    for k, v in {
        "study": study,
        "metric": result["metric"],
        "baseline": decl.baseline,
        "runs": ",".join(decl.runs),
        "confidence": decl.confidence,
        "n_boot": decl.n_boot,
        "bootstrap_seed": decl.seed,
    }.items():
        client.log_param(parent, k, v)
    return parent


def _fill_parent_run(
    client: Any,
    parent: str,
    study: str,
    result: dict[str, Any],
    child_ids: list[str],
    files: list,
) -> None:
    """Headline numbers and the report as the parent's; the compared runs become children."""
    head = result["headline"]
    for run, e in head["estimates"].items():
        client.log_metric(parent, f"study.{run}.value", e["value"])
        client.log_metric(parent, f"study.{run}.low", e["low"])
        client.log_metric(parent, f"study.{run}.high", e["high"])
    for run, d in head["differences"].items():
        client.log_metric(parent, f"study.{run}.diff", d["value"])
        client.log_metric(parent, f"study.{run}.diff_low", d["low"])
        client.log_metric(parent, f"study.{run}.diff_high", d["high"])
        client.log_metric(parent, f"study.{run}.flip_probability", d["flip_probability"])
    client.log_metric(parent, "study.ranking_flip_probability", head["ranking_flip_probability"])
    for path in files:
        client.log_artifact(parent, str(path), artifact_path="report")
    for child in child_ids:
        client.set_tag(child, "mlflow.parentRunId", parent)
        client.set_tag(child, "corpuslab.study", study)
    client.set_terminated(parent, "FINISHED")
