"""DoReMi assets of a mixture: the reference run, the Group-DRO proxy run and the weights.

``doremi/<mixture>/reference`` and ``doremi/<mixture>/proxy`` are training runs of the same
entry point as ``train/<run>`` (launcher resource, Pipes, MLflow), on the reference mixture's
token file; ``doremi/<mixture>/weights`` turns the proxy's trajectory into the mixture's
domain weights, plots it and logs both to the proxy's MLflow run. ``mixture/<mixture>`` then
samples documents by those weights.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from assets.stages import file_digest, read_json, write_json
from assets.training import launch_training, make_run_spec
from corpuslab.config import Experiment
from corpuslab.layout import atomic_path
from resources import CorpuslabHome, MlflowTracking
from resources.launcher import TrainingLauncher

WEIGHTS_FILE = "weights.json"
PLOT_FILE = "weights_trajectory.png"


def doremi_keys(mixture: str) -> tuple[dg.AssetKey, dg.AssetKey, dg.AssetKey]:
    """(reference, proxy, weights) asset keys of a DoReMi mixture."""
    return (
        dg.AssetKey(["doremi", mixture, "reference"]),
        dg.AssetKey(["doremi", mixture, "proxy"]),
        dg.AssetKey(["doremi", mixture, "weights"]),
    )


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


def _embedded_png(path: Path) -> str:
    """Markdown showing a PNG inline (the Dagster UI renders data URIs in asset metadata)."""
    import base64

    data = base64.b64encode(path.read_bytes()).decode()
    return f"![DoReMi weight trajectory](data:image/png;base64,{data})"


def build_doremi_assets(
    exp: Experiment, mixture: str, code_version: Callable[..., str]
) -> list[dg.AssetsDefinition]:
    decl = exp.mixtures[mixture].doremi
    assert decl is not None
    ref_mix = decl.reference
    ref_key, proxy_key, weights_key = doremi_keys(mixture)
    ds_text = decl.deepspeed_path().read_text()
    tokens_key = dg.AssetKey(["tokens", ref_mix])
    run_decl = (decl.model, decl.train, decl.ranks, ds_text, decl.deepspeed_overrides)

    def _tags(role: str) -> dict[str, str]:
        return {
            "corpuslab.recipe": exp.mixtures[mixture].recipe,
            "corpuslab.mixture": ref_mix,
            "corpuslab.doremi": mixture,
            "corpuslab.doremi.role": role,
        }

    def _params(role: str) -> dict[str, Any]:
        p: dict[str, Any] = {"doremi.mixture": mixture, "doremi.role": role, "mixture": ref_mix}
        p |= {f"model.{k}": v for k, v in decl.model.model_dump().items() if v is not None}
        p |= {f"train.{k}": v for k, v in decl.train.model_dump().items() if v is not None}
        if role == "proxy":
            p |= {
                "doremi.eta": decl.eta,
                "doremi.smoothing": decl.smoothing,
                "doremi.initial_weights": decl.initial_weights,
            }
        return p

    def _launch(
        context: dg.AssetExecutionContext,
        home: CorpuslabHome,
        mlflow: MlflowTracking,
        launcher: TrainingLauncher,
        role: str,
        key: dg.AssetKey,
    ) -> dg.MaterializeResult:
        from corpuslab.runspec import DoReMiSpec

        layout = home.layout()
        ddir = layout.doremi_dir(mixture)
        doremi = None
        if role == "proxy":
            initial = None
            if decl.initial_weights == "reference":
                initial = read_json(layout.mixture_dir(ref_mix) / "mixture.json")["weights"]
            doremi = DoReMiSpec(
                reference_run_dir=ddir / "reference",
                eta=decl.eta,
                smoothing=decl.smoothing,
                initial_weights=initial,
            )
        spec = make_run_spec(
            exp,
            layout,
            name=f"doremi-{mixture}-{role}",
            mixture=ref_mix,
            out_dir=ddir / role,
            model=decl.model,
            train=decl.train,
            deepspeed=decl.deepspeed_path(),
            deepspeed_overrides=decl.deepspeed_overrides,
            tracking_uri=mlflow.tracking_uri,
            doremi=doremi,
        )
        return launch_training(
            context,
            mlflow=mlflow,
            launcher=launcher,
            spec=spec,
            ds_text=ds_text,
            ranks=decl.ranks,
            asset_key=key,
            tags=_tags(role),
            params=_params(role),
            artifacts=[
                layout.mixture_dir(ref_mix) / "mixture.json",
                Path(exp.where("mixtures", mixture)),
            ],
        )

    @dg.asset(
        key=ref_key,
        deps=[tokens_key, dg.AssetKey(["mixture", ref_mix])],
        group_name="doremi",
        kinds={"deepspeed", "pytorch", "mlflow"},
        code_version=code_version("doremi_reference", *run_decl),
        description=f"DoReMi reference model for mixture '{mixture}', trained on '{ref_mix}'.",
    )
    def _reference(
        context: dg.AssetExecutionContext,
        home: CorpuslabHome,
        mlflow: MlflowTracking,
        launcher: TrainingLauncher,
    ) -> dg.MaterializeResult:
        return _launch(context, home, mlflow, launcher, "reference", ref_key)

    @dg.asset(
        key=proxy_key,
        deps=[ref_key, tokens_key, dg.AssetKey(["mixture", ref_mix])],
        group_name="doremi",
        kinds={"deepspeed", "pytorch", "mlflow"},
        code_version=code_version(
            "doremi_proxy", *run_decl, decl.eta, decl.smoothing, decl.initial_weights
        ),
        description=f"DoReMi Group-DRO proxy model for mixture '{mixture}' (weights over steps).",
    )
    def _proxy(
        context: dg.AssetExecutionContext,
        home: CorpuslabHome,
        mlflow: MlflowTracking,
        launcher: TrainingLauncher,
    ) -> dg.MaterializeResult:
        return _launch(context, home, mlflow, launcher, "proxy", proxy_key)

    @dg.asset(
        key=weights_key,
        deps=[proxy_key],
        group_name="doremi",
        kinds={"mlflow"},
        code_version=code_version("doremi_weights"),
        description=f"DoReMi domain weights of mixture '{mixture}': the proxy's average weights.",
    )
    def _weights(
        context: dg.AssetExecutionContext, home: CorpuslabHome, mlflow: MlflowTracking
    ) -> dg.MaterializeResult:
        summary = materialize_doremi_weights(exp, home.layout(), mixture, mlflow.client())
        moved = ", ".join(
            f"{d} {summary['reference_weights'].get(d, float('nan')):.3f}->{w:.3f}"
            for d, w in summary["weights"].items()
        )
        context.log.info(f"DoReMi weights (reference -> DoReMi): {moved}")
        return dg.MaterializeResult(
            metadata={
                "weights": dg.MetadataValue.json(summary["weights"]),
                "reference_weights": dg.MetadataValue.json(summary["reference_weights"]),
                "mean_excess_loss": dg.MetadataValue.json(summary["mean_excess_loss"]),
                "plot": dg.MetadataValue.path(summary["plot"]),
                "trajectory": dg.MetadataValue.md(_embedded_png(Path(summary["plot"]))),
                "mlflow_run_id": summary["mlflow_run_id"],
            },
            data_version=dg.DataVersion(summary["data_version"]),
        )

    return [_reference, _proxy, _weights]


def materialize_doremi_weights(exp: Experiment, layout: Any, mixture: str, client: Any) -> dict:
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
        "plot": str(plot),
        "mlflow_run_id": run_id,
        "data_version": file_digest(ddir / WEIGHTS_FILE),
    }
    return summary
