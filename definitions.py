"""The Dagster code location: the per-domain definitions, merged.

``dagster dev`` from the repo root loads this module (``[tool.dagster]`` in pyproject.toml);
the experiment is ``$CORPUSLAB_EXPERIMENTS`` or ``experiments/``.
"""

from pathlib import Path

import dagster as dg

import jobs
from assets import compare, corpus, evaluation, mixture, pool, stats, training
from corpuslab.declarations import load_experiment
from resources import environments


def build(experiments: Path | None = None, home: Path | None = None) -> dg.Definitions:
    """Definitions of the declared experiment, with the resources of ``$CORPUSLAB_ENV``."""
    exp = load_experiment(experiments)
    domains = [m.defs(exp) for m in (corpus, pool, mixture, training, evaluation, compare)]
    return dg.Definitions.merge(
        *domains,
        stats.defs(*domains),
        jobs.defs(exp, *domains),
        environments.defs(home),
    )


defs = build()
