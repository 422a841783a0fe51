"""How sure a comparison is: bootstrap intervals over items and across seeds, paired
differences to a baseline, and the probability that a ranking flips.

A run's score on a suite has two sources of noise: which items the suite happens to hold and
which seed (initialization and data order) the run happened to get. Both are resampled: each
bootstrap replicate draws the items of every task with replacement and the run's seeds with
replacement, and recomputes the metric (Efron's percentile bootstrap; hierarchical over seeds
and items as in Madaan et al. 2024 and "Signal and Noise", Heineman et al. 2025). Runs of a
study are scored on the *same* items, so one item draw serves every run of a replicate and
differences are paired: an easy item helps both runs and cancels in their difference. Seeds
are drawn per run, since a seed number means nothing shared across recipes.

The flip probability of a run against the baseline is the share of replicates in which their
difference has the other sign than observed (ties count half); the ranking flip probability is
the share in which the order of all runs differs from the observed order. A difference whose
interval holds zero, or which is smaller than the seed-to-seed spread, is not a decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from corpuslab.eval.metrics import MetricPath, centered_accuracy

LN2 = math.log(2)


@dataclass
class RunScores:
    """One run's per-item scores on one suite, each array of shape (seeds, items).

    ``tasks[task][field]`` holds the item results of :func:`corpuslab.eval.scoring.score_task`
    (``acc``, ``acc_sum``, ``acc_char``, ``p_correct``, ``margin``, ``gold_nll``,
    ``gold_bytes``); ``heldout[source]`` holds ``nll`` and ``bytes`` per document; ``ids``
    names the items (``task:<name>`` / ``heldout:<source>``) so that pairing can be checked.
    """

    seeds: list[int | None]  # None: a run declared without seeds (one replicate)
    tasks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    heldout: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    def n_items(self, key: str) -> int:
        return len(self.ids[key])


def _per_seed_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B, S): each seed's item mean under item weights ``w`` (B, N)."""
    return (w @ x.T) / w.sum(axis=1, keepdims=True)


def _per_seed_ratio(num: np.ndarray, den: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B, S): each seed's weighted sum of ``num`` over that of ``den``."""
    return (w @ num.T) / (w @ den.T)


def _over_seeds(per_seed: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """(B,): the mean over each replicate's drawn seeds (``seeds``: (B, S) indices)."""
    return np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)


def metric_keys(metric: MetricPath, run: RunScores) -> list[str]:
    """The item sets (``task:<name>`` / ``heldout:<source>``) a metric is computed from."""
    if metric.kind in ("core", "bpb"):
        return [f"task:{t}" for t in run.tasks]
    if metric.kind == "heldout":
        return [f"heldout:{metric.name}"]
    return [f"task:{metric.name}"]


def metric_values(
    run: RunScores, metric: MetricPath, weights: Mapping[str, np.ndarray], seeds: np.ndarray
) -> np.ndarray:
    """The metric for each replicate: item weights per item set, drawn seed indices (B, S)."""

    def task_value(task: str, what: str) -> np.ndarray:
        t, w = run.tasks[task], weights[f"task:{task}"]
        if what == "bpb":
            return _over_seeds(_per_seed_ratio(t["gold_nll"], t["gold_bytes"], w), seeds) / LN2
        if what == "centered":
            acc = _over_seeds(_per_seed_mean(t["acc"], w), seeds)
            return centered_accuracy(acc, run.baselines[task])
        if what not in t:
            raise KeyError(f"task {task!r} has no per-item {what!r}")
        return _over_seeds(_per_seed_mean(t[what], w), seeds)

    if metric.kind == "core":
        return np.mean([task_value(t, "centered") for t in run.tasks], axis=0)
    if metric.kind == "bpb":
        return np.mean([task_value(t, "bpb") for t in run.tasks], axis=0)
    if metric.kind == "heldout":
        assert metric.name is not None
        h, w = run.heldout[metric.name], weights[f"heldout:{metric.name}"]
        return _over_seeds(_per_seed_ratio(h["nll"], h["bytes"], w), seeds) / LN2
    assert metric.name is not None and metric.metric is not None
    return task_value(metric.name, metric.metric)


@dataclass(frozen=True)
class BootstrapPlan:
    """Seeded replicate draws shared by every metric of a study (so they are consistent)."""

    n_boot: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_boot < 100:
            raise ValueError(f"n_boot={self.n_boot}: use at least 100 bootstrap replicates")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must lie in [0.5, 1), got {self.confidence}")

    def item_weights(self, key: str, n: int) -> np.ndarray:
        """(B, N) multiplicities of items drawn with replacement (the same for every run)."""
        rng = np.random.default_rng([self.seed, _stable(key)])
        return rng.multinomial(n, np.full(n, 1.0 / n), size=self.n_boot).astype(np.float64)

    def seed_draws(self, run: str, n_seeds: int) -> np.ndarray:
        """(B, S) seed indices drawn with replacement, per run."""
        rng = np.random.default_rng([self.seed, _stable("seeds:" + run)])
        return rng.integers(0, n_seeds, size=(self.n_boot, n_seeds))

    def interval(self, values: np.ndarray) -> tuple[float, float]:
        alpha = 1.0 - self.confidence
        lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        return float(lo), float(hi)


def _stable(text: str) -> int:
    """A process-independent integer of a string (Python's hash() is salted per process)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass
class Estimate:
    """A run's metric: observed value, intervals (both sources, items only, seeds only)."""

    value: float
    low: float
    high: float
    items_low: float
    items_high: float
    seeds_low: float
    seeds_high: float
    seed_values: list[float]
    n_seeds: int

    @property
    def seed_sd(self) -> float:
        """Standard deviation across seeds (0 with one seed: unknown, not absent)."""
        return float(np.std(self.seed_values, ddof=1)) if len(self.seed_values) > 1 else 0.0


@dataclass
class Difference:
    """A run minus the baseline, paired over items: value, interval, flip probability."""

    value: float
    low: float
    high: float
    flip_probability: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.low > 0.0 or self.high < 0.0


def flip_probability(observed: float, replicates: np.ndarray) -> float:
    """Share of replicates whose sign differs from the observed one (ties count half).

    0.5 when the observed difference is exactly zero: there is no order to flip.
    """
    if observed == 0.0:
        return 0.5
    sign = np.sign(observed)
    other = np.sign(replicates) == -sign
    ties = replicates == 0.0
    return float(other.mean() + 0.5 * ties.mean())


@dataclass
class Comparison:
    """One metric of a study: estimates per run, differences to the baseline, ranking."""

    metric: str
    lower_is_better: bool
    baseline: str
    estimates: dict[str, Estimate]
    differences: dict[str, Difference]
    ranking: list[str]  # best first
    ranking_flip_probability: float


def _check_paired(runs: Mapping[str, RunScores], keys: Sequence[str]) -> None:
    first_name, first = next(iter(runs.items()))
    for name, run in runs.items():
        for key in keys:
            if key not in run.ids:
                raise ValueError(f"run {name!r} has no scores for {key}")
            if run.ids[key] != first.ids[key]:
                raise ValueError(
                    f"runs {first_name!r} and {name!r} were scored on different items of {key}: "
                    "a paired comparison needs the same evaluation set (re-evaluate both)"
                )


def compare(
    runs: Mapping[str, RunScores], baseline: str, metric: MetricPath, plan: BootstrapPlan
) -> Comparison:
    """Estimates, paired differences to ``baseline`` and flip probabilities of ``metric``."""
    if baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not among the runs {sorted(runs)}")
    keys = metric_keys(metric, runs[baseline])
    _check_paired(runs, keys)
    ref = runs[baseline]
    n_items = {k: ref.n_items(k) for k in keys}
    drawn = {k: plan.item_weights(k, n) for k, n in n_items.items()}
    ones = {k: np.ones((1, n)) for k, n in n_items.items()}
    both: dict[str, np.ndarray] = {}
    estimates: dict[str, Estimate] = {}
    for name, run in runs.items():
        all_seeds = np.arange(run.n_seeds)[None, :]
        seeds = plan.seed_draws(name, run.n_seeds)
        observed = float(metric_values(run, metric, ones, all_seeds)[0])
        both[name] = metric_values(run, metric, drawn, seeds)
        items_only = metric_values(run, metric, drawn, np.repeat(all_seeds, plan.n_boot, 0))
        seeds_only = metric_values(run, metric, ones, seeds)
        per_seed = [
            float(metric_values(run, metric, ones, np.array([[s]]))[0]) for s in range(run.n_seeds)
        ]
        lo, hi = plan.interval(both[name])
        ilo, ihi = plan.interval(items_only)
        slo, shi = plan.interval(seeds_only)
        estimates[name] = Estimate(observed, lo, hi, ilo, ihi, slo, shi, per_seed, run.n_seeds)
    differences: dict[str, Difference] = {}
    for name in runs:
        if name == baseline:
            continue
        d = both[name] - both[baseline]
        observed = estimates[name].value - estimates[baseline].value
        lo, hi = plan.interval(d)
        differences[name] = Difference(observed, lo, hi, flip_probability(observed, d))
    sign = 1.0 if metric.lower_is_better else -1.0
    names = list(runs)
    ranking = sorted(names, key=lambda n: sign * estimates[n].value)
    order = np.argsort(sign * np.stack([both[n] for n in names]), axis=0, kind="stable")
    observed_order = np.array([names.index(n) for n in ranking])[:, None]
    flips = float((order != observed_order).any(axis=0).mean())
    return Comparison(
        metric=str(metric),
        lower_is_better=metric.lower_is_better,
        baseline=baseline,
        estimates=estimates,
        differences=differences,
        ranking=ranking,
        ranking_flip_probability=flips,
    )
