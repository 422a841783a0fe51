"""``doremi/<mixture>/weights``: DoReMi's domain weights from its proxy run, plotted and logged.

The reference and proxy runs themselves are training runs (:mod:`corpuslab.stages.training`);
this stage averages the proxy's weights over its steps, as the DoReMi paper does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corpuslab.declarations import Experiment
from corpuslab.fileio import atomic_path, digest, read_json, write_json
from corpuslab.layout import Layout

WEIGHTS_FILE = "weights.json"
PLOT_FILE = "weights_trajectory.png"


def plot_trajectory(report: dict[str, Any], reference: dict[str, float], out: Path) -> Path:
    """A PNG of each domain's weight over the proxy's steps, the average and the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = report["domains"]
    steps = range(1, len(report["trajectory"]) + 1)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, d in enumerate(domains):
        (line,) = ax.plot(steps, [a[i] for a in report["trajectory"]], label=d)
        color = line.get_color()
        ax.axhline(report["average_weights"][d], color=color, linestyle="--", linewidth=1)
        if d in reference:
            ax.axhline(reference[d], color=color, linestyle=":", linewidth=1)
    ax.set_xlabel("proxy step")
    ax.set_ylabel("domain weight")
    ax.set_title("DoReMi weights (solid), their average (dashed), reference mixture (dotted)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out


def materialize_doremi_weights(exp: Experiment, layout: Layout, mixture: str, client: Any) -> dict:
    """Write ``weights.json`` from the proxy's report, plot the trajectory, log both to MLflow."""
    decl = exp.mixtures[mixture].doremi
    assert decl is not None
    ddir = layout.doremi_dir(mixture)
    proxy_dir = ddir / "proxy"
    report_path = proxy_dir / "doremi.json"
    if not report_path.is_file():
        raise FileNotFoundError(
            f"{report_path} is missing: materialize doremi/{mixture}/proxy first"
        )
    report = read_json(report_path)
    reference = read_json(layout.mixture_dir(decl.reference) / "mixture.json")["weights"]
    weights = report["average_weights"]
    summary = {
        "weights": weights,
        "reference_mixture": decl.reference,
        "reference_weights": reference,
        "final_weights": report["final_weights"],
        "mean_excess_loss": report["mean_excess_loss"],
        "mean_proxy_loss": report["mean_proxy_loss"],
        "mean_reference_loss": report["mean_reference_loss"],
        "steps": report["updates"],
        "eta": report["eta"],
        "smoothing": report["smoothing"],
    }
    plot = plot_trajectory(report, reference, ddir / PLOT_FILE)
    write_json(summary, ddir / WEIGHTS_FILE)
    run_id = read_json(proxy_dir / "mlflow.json")["run_id"]
    client.log_artifact(run_id, str(ddir / WEIGHTS_FILE), artifact_path="doremi")
    client.log_artifact(run_id, str(plot), artifact_path="doremi")
    client.log_artifact(run_id, str(report_path), artifact_path="doremi")
    for d, w in weights.items():
        client.log_metric(run_id, f"doremi.result.{d}", float(w))
    summary |= {
        "plot": layout.url(plot),
        "mlflow_run_id": run_id,
        "data_version": digest(ddir / WEIGHTS_FILE),
    }
    return summary
