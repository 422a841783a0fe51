"""Training process entry point: ``torchrun ... infra/entrypoints/train.py --spec spec.json``.

Launched by Dagster through Pipes, rank 0 streams progress as Pipes log lines and reports the
asset materialization (final loss, throughput, MFU, held-out losses of the final and LAWA
weights, ...) at the end; otherwise, and on other ranks, progress goes to stdout as one JSON
object per line. Launching the same spec again after a crash or a kill resumes from the latest
checkpoint in its ``out_dir`` (``corpuslab.training.loop.train`` decides; a spec that no
longer matches the checkpoint fails with the list of differences). Also runs as a plain
``python`` process, as a world of one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # runnable as a script without installing corpuslab
    sys.path.insert(0, str(REPO_ROOT))

from corpuslab.fileio import digest  # noqa: E402
from corpuslab.training.loop import train  # noqa: E402
from corpuslab.training.runspec import RunSpec  # noqa: E402

PIPES_ENV = "DAGSTER_PIPES_CONTEXT"


def print_reporter(step: int, metrics: dict[str, float]) -> None:
    """Progress as one JSON line on stdout, flushed so a parent process sees it live."""
    print(json.dumps({"step": step, **metrics}), flush=True)


def progress_line(name: str, step: int, metrics: dict[str, float]) -> str:
    """A line a person reads: step, loss, throughput and time left."""
    from corpuslab.progress import eta

    parts = [f"train {name}: step {step}/{int(metrics.get('steps', step))}"]
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.4f}")
    if "tokens_per_s" in metrics:
        parts.append(f"{metrics['tokens_per_s']:,.0f} tokens/s")
    if metrics.get("eta_s", float("nan")) == metrics.get("eta_s"):  # not NaN
        parts.append(f"ETA {eta(metrics['eta_s'])}")
    return ", ".join(parts)


def materialization_metadata(spec: RunSpec, summary: dict[str, Any]) -> dict[str, Any]:
    """What the Dagster asset records about a finished run."""
    keys = (
        "final_loss", "initial_loss", "tokens_per_s", "tokens_seen", "steps", "skipped_steps",
        "num_params", "wall_s", "world_size", "mfu", "zero_stage",
    )  # fmt: skip
    optional = ("heldout_loss", "heldout_loss_lawa", "resumed_from_step")
    meta: dict[str, Any] = {k: summary[k] for k in keys}
    meta |= {k: summary[k] for k in optional if summary.get(k) is not None}
    meta["run_dir"] = str(Path(spec.out_dir).resolve())
    if spec.mlflow_run_id:
        meta["mlflow_run_id"] = spec.mlflow_run_id
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--spec", type=Path, required=True, help="RunSpec JSON file")
    args = parser.parse_args(argv)
    spec = RunSpec.model_validate_json(args.spec.read_text())
    rank = int(os.environ.get("RANK", "0"))

    if rank == 0 and os.environ.get(PIPES_ENV):
        from dagster_pipes import open_dagster_pipes

        with open_dagster_pipes() as pipes:

            def pipes_reporter(step: int, metrics: dict[str, float]) -> None:
                # the run's logs in Dagster get the numbers; the terminal gets a readable line
                pipes.log.info(json.dumps({"step": step, **metrics}))
                print(progress_line(spec.name, step, metrics), file=sys.stderr, flush=True)

            summary = train(spec, pipes_reporter)
            pipes.report_asset_materialization(
                metadata=materialization_metadata(spec, summary),
                data_version=digest(Path(spec.out_dir) / "model.pt"),
            )
    else:
        summary = train(spec, print_reporter)
        if rank == 0:
            print(json.dumps({"summary": summary}), flush=True)

    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
