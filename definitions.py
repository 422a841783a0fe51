"""The Dagster code location: the per-domain definitions, merged.

``dagster dev`` from the repo root loads this module (``[tool.dagster]`` in pyproject.toml);
the experiment is ``$CORPUSLAB_EXPERIMENTS`` or ``experiments/``.
"""

import contextlib
import warnings
from pathlib import Path

import dagster as dg

import jobs
from assets import compare, corpus, evaluation, mixture, pool, stats, training
from corpuslab.declarations import load_experiment
from jobs import automation
from resources import environments

# backfill_policy and the automation conditions are Dagster beta/preview APIs, used on purpose;
# set here (not only in the CLI) so worker processes and `dagster dev` do not print one a decorator
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def build(
    experiments: Path | None = None, home: Path | str | None = None, now: bool = False
) -> dg.Definitions:
    """Definitions of the declared experiment, with the resources of ``$CORPUSLAB_ENV``.

    ``home`` is a local folder or an ``s3://`` prefix (default ``$CORPUSLAB_HOME``).

    Every asset carries the automation condition of ``jobs.automation``; ``now`` makes them all
    eager (what ``corpuslab materialize`` evaluates).
    """
    exp = load_experiment(experiments, home)
    with automation.eager_everywhere() if now else contextlib.nullcontext():
        domains = [m.defs(exp) for m in (corpus, pool, mixture, training, evaluation, compare)]
        stats_defs = stats.defs(*domains)
    return dg.Definitions.merge(
        *domains, stats_defs, jobs.defs(exp, *domains), environments.defs(home)
    )


defs = build()
