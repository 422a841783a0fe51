"""The study's verdict in words: a winner is named only when the difference is significant."""

from __future__ import annotations

from corpuslab.eval.stats import Comparison, Difference, Estimate
from corpuslab.eval.study import decision


def _estimate(value: float, seeds: list[float]) -> Estimate:
    return Estimate(value, value - 0.1, value + 0.1, value - 0.1, value + 0.1, value - 0.1,
                    value + 0.1, seeds, len(seeds))  # fmt: skip


def _comparison(diff: Difference, seeds: list[float]) -> Comparison:
    return Comparison(
        metric="core_lite.core",
        lower_is_better=False,
        baseline="heuristic",
        estimates={"heuristic": _estimate(0.0, seeds), "quality": _estimate(diff.value, seeds)},
        differences={"quality": diff},
        ranking=["quality", "heuristic"] if diff.value > 0 else ["heuristic", "quality"],
        ranking_flip_probability=diff.flip_probability,
    )


def test_a_difference_whose_interval_holds_zero_names_no_winner() -> None:
    verdict = decision(_comparison(Difference(0.0067, -0.022, 0.036, 0.32), [0.0, 0.01]), 0.95)
    text = verdict["statement"]
    assert "quality scores above heuristic" in text and "beats" not in text
    assert "not significant at this scale (the interval holds zero)" in text
    assert verdict["versus_baseline"]["quality"]["significant"] is False


def test_a_significant_difference_beyond_the_seed_spread_names_the_winner() -> None:
    verdict = decision(_comparison(Difference(0.2, 0.1, 0.3, 0.0), [0.0, 0.01]), 0.95)
    text = verdict["statement"]
    assert "quality beats heuristic" in text and text.count("— significant") == 1


def test_a_significant_difference_within_the_seed_spread_is_a_hint() -> None:
    verdict = decision(_comparison(Difference(0.05, 0.01, 0.09, 0.02), [0.0, 0.2]), 0.95)
    text = verdict["statement"]
    assert "quality beats heuristic" in text and "treat it as a hint, not a decision" in text
