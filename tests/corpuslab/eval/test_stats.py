"""Bootstrap intervals, paired differences and flip probabilities against known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from corpuslab.eval.metrics import MetricPath
from corpuslab.eval.stats import BootstrapPlan, RunScores, compare, flip_probability

ACC = MetricPath("s", "task", "t", "acc")
P = MetricPath("s", "task", "t", "p_correct")


def run(fields: dict[str, np.ndarray], baseline: float = 0.0, task: str = "t") -> RunScores:
    """A run with one task whose per-item fields are (seeds, items) arrays."""
    n_seeds, n_items = next(iter(fields.values())).shape
    full = {"gold_nll": np.ones((n_seeds, n_items)), "gold_bytes": np.ones((n_seeds, n_items))}
    return RunScores(
        seeds=list(range(n_seeds)),
        tasks={task: full | fields},
        baselines={task: baseline},
        ids={f"task:{task}": [f"i{j}" for j in range(n_items)]},
    )


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_constant_scores_have_a_zero_width_interval() -> None:
    runs = {"a": run({"acc": np.ones((2, 50))}), "b": run({"acc": np.ones((2, 50))})}
    c = compare(runs, "a", ACC, BootstrapPlan(n_boot=500))
    e = c.estimates["a"]
    assert (e.value, e.low, e.high) == (1.0, 1.0, 1.0)
    d = c.differences["b"]
    assert (d.value, d.low, d.high, d.flip_probability) == (0.0, 0.0, 0.0, 0.5)


def test_interval_over_items_matches_the_normal_approximation() -> None:
    """400 coin-flip items at 50%: the 95% interval is 0.5 +- 1.96 * sqrt(0.25 / 400)."""
    acc = np.zeros((1, 400))
    acc[0, ::2] = 1.0
    c = compare({"a": run({"acc": acc})}, "a", ACC, BootstrapPlan(n_boot=4000, seed=1))
    e = c.estimates["a"]
    half = 1.96 * math.sqrt(0.25 / 400)
    assert e.value == 0.5
    assert (e.high - e.low) / 2 == pytest.approx(half, rel=0.08)
    assert e.seeds_low == e.seeds_high == 0.5  # one seed: no seed spread to resample


def test_a_paired_constant_shift_is_certain_even_when_intervals_overlap() -> None:
    """B = A + 0.05 on every item: each run's interval is wide, their difference exact."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, size=(1, 300))
    runs = {"a": run({"p_correct": a}), "b": run({"p_correct": a + 0.05})}
    c = compare(runs, "a", P, BootstrapPlan(n_boot=2000))
    ea, eb = c.estimates["a"], c.estimates["b"]
    assert eb.low < ea.high  # the runs' own intervals overlap ...
    d = c.differences["b"]
    assert d.value == pytest.approx(0.05)
    assert d.low == pytest.approx(0.05) and d.high == pytest.approx(0.05)
    assert d.flip_probability == 0.0 and d.significant  # ... yet the paired difference is sure
    assert c.ranking == ["b", "a"] and c.ranking_flip_probability == 0.0


def test_flip_probability_matches_the_normal_approximation() -> None:
    """Paired differences with mean/se = 1: the sign flips in Phi(-1) = 16% of resamples."""
    rng = np.random.default_rng(3)
    n = 400
    noise = rng.normal(0.0, 1.0, n)
    noise = (noise - noise.mean()) / noise.std()
    diff = 0.5 * noise + 0.5 / math.sqrt(n)  # mean 0.025, se = 0.5 / sqrt(n) = 0.025
    base = rng.uniform(0, 1, n)
    runs = {"a": run({"p_correct": base[None]}), "b": run({"p_correct": (base + diff)[None]})}
    c = compare(runs, "a", P, BootstrapPlan(n_boot=8000, seed=2))
    d = c.differences["b"]
    assert d.flip_probability == pytest.approx(phi(-1.0), abs=0.025)
    assert not d.significant  # a one-standard-error difference is no decision


def test_seed_spread_shows_in_the_seed_interval_not_the_item_interval() -> None:
    """Seeds at 0.4, 0.5 and 0.6 on every item: items say nothing, seeds say everything."""
    p = np.repeat(np.array([[0.4], [0.5], [0.6]]), 40, axis=1)
    c = compare({"a": run({"p_correct": p})}, "a", P, BootstrapPlan(n_boot=2000))
    e = c.estimates["a"]
    assert e.value == pytest.approx(0.5)
    assert e.items_low == pytest.approx(0.5) and e.items_high == pytest.approx(0.5)
    assert e.seeds_low < 0.47 and e.seeds_high > 0.53
    assert e.seed_values == pytest.approx([0.4, 0.5, 0.6]) and e.seed_sd == pytest.approx(0.1)


def test_core_centers_each_task_on_its_baseline() -> None:
    """CORE of two tasks (rb 0.25 and 0.5) is the mean of their centered accuracies."""
    r = RunScores(
        seeds=[0],
        tasks={
            "x": {
                "acc": np.array([[1.0, 0.0, 0.0, 1.0]]),
                "gold_nll": np.ones((1, 4)),
                "gold_bytes": np.ones((1, 4)),
            },
            "y": {
                "acc": np.array([[1.0, 1.0, 1.0, 0.0]]),
                "gold_nll": np.ones((1, 4)),
                "gold_bytes": np.ones((1, 4)),
            },
        },  # fmt: skip
        baselines={"x": 0.25, "y": 0.5},
        ids={"task:x": list("abcd"), "task:y": list("abcd")},
    )
    c = compare({"r": r}, "r", MetricPath("s", "core"), BootstrapPlan(n_boot=200))
    assert c.estimates["r"].value == pytest.approx(((0.5 - 0.25) / 0.75 + (0.75 - 0.5) / 0.5) / 2)


def test_runs_on_different_items_cannot_be_paired() -> None:
    a, b = run({"acc": np.ones((1, 3))}), run({"acc": np.ones((1, 3))})
    b.ids["task:t"] = ["i0", "i1", "other"]
    with pytest.raises(ValueError, match="different items of task:t"):
        compare({"a": a, "b": b}, "a", ACC, BootstrapPlan(n_boot=100))


def test_flip_probability_counts_ties_half() -> None:
    assert flip_probability(1.0, np.array([1.0, -1.0, 0.0, 2.0])) == pytest.approx(0.375)
    assert flip_probability(0.0, np.array([1.0])) == 0.5
