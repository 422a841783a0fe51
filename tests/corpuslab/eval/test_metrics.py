"""Centered accuracy, task metrics, CORE aggregation and metric names."""

from __future__ import annotations

import math

import pytest

from corpuslab.eval.metrics import (
    centered_accuracy,
    flat_metrics,
    parse_metric,
    suite_metrics,
    task_metrics,
)


def test_centered_accuracy_is_zero_at_chance_and_one_at_perfect() -> None:
    assert centered_accuracy(0.25, 0.25) == 0.0
    assert centered_accuracy(1.0, 0.25) == 1.0
    assert centered_accuracy(0.625, 0.25) == pytest.approx(0.5)
    assert centered_accuracy(0.0, 0.5) == -1.0  # below chance is negative
    with pytest.raises(ValueError):
        centered_accuracy(0.5, 1.0)


def test_task_metrics_and_core_on_hand_worked_numbers() -> None:
    """Two tasks: CORE is the mean of their centered accuracies; bpb pools nats over bytes."""
    mc = [
        {"acc": 1.0, "acc_sum": 1.0, "acc_char": 0.0, "p_correct": 0.7, "margin": 0.4,
         "gold_nll": 2.0, "gold_bytes": 4},
        {"acc": 0.0, "acc_sum": 1.0, "acc_char": 1.0, "p_correct": 0.1, "margin": -0.2,
         "gold_nll": 6.0, "gold_bytes": 4},
    ]  # fmt: skip
    lm = [{"acc": 1.0, "gold_nll": 1.0, "gold_bytes": 2}] * 3 + [
        {"acc": 0.0, "gold_nll": 3.0, "gold_bytes": 2}
    ]
    t_mc = task_metrics(mc, 0.25)
    t_lm = task_metrics(lm, 0.0)
    assert t_mc["acc"] == 0.5 and t_mc["acc_sum"] == 1.0 and t_mc["acc_char"] == 0.5
    assert t_mc["centered"] == pytest.approx((0.5 - 0.25) / 0.75)
    assert t_mc["p_correct"] == pytest.approx(0.4) and t_mc["margin"] == pytest.approx(0.1)
    assert t_mc["bpb"] == pytest.approx(8.0 / (math.log(2) * 8))
    assert t_lm["centered"] == 0.75 and "margin" not in t_lm
    suite = suite_metrics({"mc": t_mc, "lm": t_lm}, {"reference": {"bpb": 1.5}})
    assert suite["core"] == pytest.approx(((0.5 - 0.25) / 0.75 + 0.75) / 2)
    assert suite["bpb"] == pytest.approx((t_mc["bpb"] + t_lm["bpb"]) / 2)
    assert suite["heldout.reference.bpb"] == 1.5
    flat = flat_metrics("core_lite", {"mc_0shot": t_mc}, suite)
    assert flat["core_lite.core"] == suite["core"]
    assert flat["core_lite.mc_0shot.centered"] == t_mc["centered"]
    assert "core_lite.mc_0shot.items" not in flat


def test_categories_get_their_own_accuracy() -> None:
    res = [{"acc": 1.0, "gold_nll": 1.0, "gold_bytes": 1, "category": "x"},
           {"acc": 0.0, "gold_nll": 1.0, "gold_bytes": 1, "category": "y"}]  # fmt: skip
    assert task_metrics(res, 0.0)["categories"] == {"x": 1.0, "y": 0.0}


def test_metric_names_parse_against_the_suite() -> None:
    tasks, sources = ["py_mc_0shot"], ["reference"]
    assert str(parse_metric("s.core", tasks, sources)) == "s.core"
    m = parse_metric("s.heldout.reference.bpb", tasks, sources)
    assert m.kind == "heldout" and m.lower_is_better
    m = parse_metric("s.py_mc_0shot.p_correct", tasks, sources)
    assert (m.name, m.metric, m.lower_is_better) == ("py_mc_0shot", "p_correct", False)
    with pytest.raises(ValueError, match="unknown task 'py_mc'"):
        parse_metric("s.py_mc.acc", tasks, sources)
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        parse_metric("s.py_mc_0shot.f1", tasks, sources)
    with pytest.raises(ValueError, match="no held-out source of suite"):
        parse_metric("s.heldout.code.bpb", tasks, sources)
