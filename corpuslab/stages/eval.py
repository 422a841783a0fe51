"""``eval/<run>`` (``eval/<run>/seed<k>`` per replicate): a trained run scored, in MLflow.

Each suite the run declares (``evals``) is scored on its fixed eval set (``evalset/<suite>``,
which must have passed its exclusion check) with the final weights (metrics
``eval.<suite>.<task>.<metric>``, ``eval.<suite>.core``, ``eval.<suite>.bpb``,
``eval.<suite>.heldout.<source>.bpb``), the LAWA checkpoint average when the run keeps one
(``eval_lawa.<suite>...``) and, with ``eval.eval_every``, every ``eval_every`` steps' checkpoint
(the same ``eval.<suite>...`` metrics at earlier MLflow steps, so the trajectory is a curve
ending at the final weights). Besides, as before suites existed, bits per byte on the run's own
mixture's held-out split (``eval.bpb.<domain>``, ``.mean``, ``.worst``; comparable between runs
of one recipe only).

Outputs: ``eval.json`` (every metric and every item's and held-out document's score, the input
of ``compare/<study>``), ``metrics.parquet`` (long format, read by dbt's ``leaderboard``), both
logged to the run's MLflow run with each eval set as an MLflow dataset input.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from corpuslab.declarations import Experiment
from corpuslab.eval.evalset import EvalSet, evaluate, read_evalset
from corpuslab.fileio import digest, read_json, write_json, write_parquet
from corpuslab.layout import Layout
from corpuslab.stages.evalset import require_clean
from corpuslab.stages.mixture import eos_token, read_heldout, tokenizer_path

# The final weights, and the LAWA checkpoint average when the run declared one.
WEIGHTS = (("model.pt", "eval"), ("model_lawa.pt", "eval_lawa"))
METRICS_SCHEMA = pa.schema(
    [
        ("run", pa.string()),
        ("seed", pa.int64()),
        ("suite", pa.string()),
        ("weights", pa.string()),
        ("step", pa.int64()),
        ("metric", pa.string()),
        ("value", pa.float64()),
    ]
)


def _mixture_heldout(
    exp: Experiment, layout: Layout, run: str, run_dir: Path
) -> tuple[dict[str, float], dict[str, Any]]:
    """Bits per byte on the run's own mixture's held-out split (per weights and domain)."""
    from corpuslab.eval.bpb import evaluate_domains  # torch: only where a model is scored

    rdecl = exp.runs[run]
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
    return metrics, results


def log_evalset_input(client: Any, run_id: str, evalset: EvalSet) -> None:
    """Record an eval set as the run's MLflow dataset input (context ``evaluation``)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    m = evalset.manifest
    dataset = Dataset(
        name=f"evalset/{evalset.suite}",
        digest=evalset.data_version,
        source_type="local",
        source=json.dumps({"uri": str(evalset.folder)}),
        profile=json.dumps(
            {
                "version": m["version"],
                "tasks": {t: v["items"] for t, v in m["tasks"].items()},
                "heldout_documents": {s: v["documents"] for s, v in m["heldout"].items()},
            }
        ),
    )
    client.log_inputs(
        run_id, [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "evaluation")])]
    )


def _log_metrics(client: Any, run_id: str, points: list[tuple[str, float, int]]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key=k, value=float(v), timestamp=now, step=s) for k, v, s in points]
    for start in range(0, len(batch), 500):  # MLflow takes at most 1000 metrics a batch
        client.log_batch(run_id, metrics=batch[start : start + 500])


def materialize_eval(
    exp: Experiment, layout: Layout, run: str, client: Any, seed: int | None = None
) -> dict[str, Any]:
    """Score a run (or its replicate ``seed``) as the module docstring says; ``client`` is an
    ``mlflow.MlflowClient``. Returns the asset's summary."""
    from corpuslab.eval.scoring import Encoder  # torch: only where a model is scored
    from corpuslab.training.checkpoints import complete_tags, load_model

    rdecl = exp.runs[run]
    run_dir = layout.run_dir(run, seed)
    run_id = read_json(run_dir / "mlflow.json")["run_id"]
    steps = int(read_json(run_dir / "summary.json")["steps"])
    metrics, domains = _mixture_heldout(exp, layout, run, run_dir)
    points = [(k, v, steps) for k, v in metrics.items()]
    rows: list[dict[str, Any]] = []
    suites: dict[str, dict[str, Any]] = {}
    tokenizer = tokenizer_path(exp, layout, rdecl.mixture)
    encoder = Encoder.from_file(tokenizer, eos_token(exp, rdecl.mixture))
    evalsets: dict[str, EvalSet] = {}
    for suite in rdecl.evals:
        require_clean(layout, suite)
        sdecl = exp.evals[suite]
        evalsets[suite] = read_evalset(layout.evalset_dir(suite), suite, sdecl.tasks)
        suites[suite] = {"evalset": evalsets[suite].data_version}
    for weights, prefix in WEIGHTS:
        if not (run_dir / weights).exists() or not evalsets:
            continue
        model = load_model(run_dir, weights=weights)
        for suite, evalset in evalsets.items():
            res = evaluate(model, encoder, tokenizer, evalset, exp.evals[suite].batch_size)
            suites[suite][prefix] = res
            for k, v in res["metrics"].items():
                metrics[f"{prefix}.{k}"] = v
                points.append((f"{prefix}.{k}", v, steps))
                rows.append(_row(run, seed, suite, prefix, steps, k, v))
    every = rdecl.eval.eval_every
    if every and evalsets:
        for tag in complete_tags(run_dir / "checkpoints"):
            step = int(tag.removeprefix("step"))
            if step % every or step >= steps:
                continue
            model = load_model(run_dir, weights=f"checkpoints/{tag}/model.pt")
            for suite, evalset in evalsets.items():
                res = evaluate(
                    model, encoder, tokenizer, evalset, exp.evals[suite].batch_size, per_item=False
                )
                suites[suite].setdefault("trajectory", {})[str(step)] = res["metrics"]
                for k, v in res["metrics"].items():
                    points.append((f"eval.{k}", v, step))
                    rows.append(_row(run, seed, suite, "checkpoint", step, k, v))
    _log_metrics(client, run_id, points)
    for evalset in evalsets.values():
        log_evalset_input(client, run_id, evalset)
    out_dir = layout.eval_dir(run, seed)
    out = out_dir / "eval.json"
    write_json(
        {
            "run": run,
            "seed": seed,
            "run_id": run_id,
            "steps": steps,
            "metrics": metrics,
            "domains": domains,
            "suites": suites,
        },
        out,
    )
    table = pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)
    write_parquet(table, out_dir / "metrics.parquet")
    client.log_artifact(run_id, str(out), artifact_path="eval")
    return {
        "metrics": metrics,
        "domains": domains,
        "suites": {
            s: {w: v[w]["metrics"] for w in ("eval", "eval_lawa") if w in v}
            | ({"trajectory": v["trajectory"]} if "trajectory" in v else {})
            for s, v in suites.items()
        },
        "mlflow_run_id": run_id,
        "data_version": digest(out),
    }


def _row(
    run: str, seed: int | None, suite: str, weights: str, step: int, metric: str, value: float
) -> dict[str, Any]:
    return {
        "run": run,
        "seed": seed,
        "suite": suite,
        "weights": weights,
        "step": step,
        "metric": metric.removeprefix(f"{suite}."),
        "value": float(value),
    }
