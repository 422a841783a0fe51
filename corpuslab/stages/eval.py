"""``eval/<run>``: held-out bits-per-byte of a trained run per domain, logged to its MLflow run."""

from __future__ import annotations

from typing import Any

from corpuslab.declarations import Experiment
from corpuslab.fileio import digest, read_json, write_json
from corpuslab.layout import Layout
from corpuslab.stages.mixture import read_heldout, tokenizer_path

# The final weights, and the LAWA checkpoint average when the run declared one.
WEIGHTS = (("model.pt", "eval"), ("model_lawa.pt", "eval_lawa"))


def materialize_eval(exp: Experiment, layout: Layout, run: str, client: Any) -> dict:
    """Score the run's final (and LAWA) weights on its mixture's held-out documents.

    ``client`` is an ``mlflow.MlflowClient``: metrics ``eval.bpb.<domain>``, ``.mean`` and
    ``.worst`` (``eval_lawa.*`` for the average) and ``eval.json`` go to the run's MLflow run.
    """
    from corpuslab.eval.bpb import evaluate_domains  # torch: only where a model is scored

    rdecl = exp.runs[run]
    run_dir = layout.run_dir(run)
    heldout = read_heldout(layout, rdecl.mixture, rdecl.eval.max_docs_per_domain)
    tokenizer = tokenizer_path(exp, layout, rdecl.mixture)
    metrics: dict[str, float] = {}
    results: dict[str, Any] = {}
    for weights, prefix in WEIGHTS:
        if not (run_dir / weights).exists():
            continue
        per_domain = evaluate_domains(
            run_dir, tokenizer, heldout, batch_size=rdecl.eval.batch_size, weights=weights
        )
        results[prefix] = per_domain
        bpb = {d: r["bpb"] for d, r in per_domain.items()}
        metrics |= {f"{prefix}.bpb.{d}": v for d, v in bpb.items()}
        metrics[f"{prefix}.bpb.mean"] = sum(bpb.values()) / len(bpb)
        metrics[f"{prefix}.bpb.worst"] = max(bpb.values())
    run_id = read_json(run_dir / "mlflow.json")["run_id"]
    for k, v in metrics.items():
        client.log_metric(run_id, k, v)
    out = layout.eval_dir(run) / "eval.json"
    write_json({"run_id": run_id, "domains": results, "metrics": metrics}, out)
    client.log_artifact(run_id, str(out), artifact_path="eval")
    return {
        "metrics": metrics,
        "domains": results,
        "mlflow_run_id": run_id,
        "data_version": digest(out),
    }
