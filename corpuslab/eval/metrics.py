"""Task and suite metrics from per-item results: accuracy, centered accuracy, CORE, gold bpb.

Centered accuracy is ``(acc - rb) / (1 - rb)`` with the task's declared random baseline ``rb``:
0 at chance, 1 when every item is right, negative below chance. A suite's ``core`` is the
mean centered accuracy over its tasks, as DCLM's CORE averages 22 tasks (Li et al. 2024; the
baselines were corrected in CORE v2, dclm PR #115, which is why ``rb`` is declared per task).
Its ``bpb`` is the mean over tasks of each task's gold-continuation bits per byte (DataDecide's
continuous metric, predictable at far smaller scale than accuracy), and
``heldout.<source>.bpb`` the bits per byte of each held-out source.

Metric names, as MLflow and studies spell them (after ``eval.`` in MLflow):
``<suite>.core``, ``<suite>.bpb``, ``<suite>.heldout.<source>.bpb`` and
``<suite>.<task>.<metric>`` with ``<task>`` = ``<label>_<k>shot`` and ``<metric>`` one of
:data:`TASK_METRICS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

# acc: mean log-likelihood per token (CORE's); acc_sum / acc_char: summed / per byte;
# centered: acc centered on the random baseline; bpb: gold continuation bits per byte;
# p_correct / margin: DataDecide's probability of the right choice and its margin.
TASK_METRICS = ("acc", "acc_sum", "acc_char", "centered", "bpb", "p_correct", "margin")
LOWER_IS_BETTER = frozenset({"bpb"})
_MEAN_FIELDS = ("acc_sum", "acc_char", "p_correct", "margin")


def gold_bpb(results: Sequence[Mapping[str, Any]]) -> float:
    """Bits per byte of the right continuations: summed nats over summed bytes, in bits."""
    nll = sum(r["gold_nll"] for r in results)
    nbytes = sum(r["gold_bytes"] for r in results)
    return nll / (math.log(2) * nbytes) if nbytes else float("nan")


_Acc = TypeVar("_Acc", float, np.ndarray)  # one accuracy, or per seed/item arrays


def centered_accuracy(acc: _Acc, random_baseline: float) -> _Acc:
    """``(acc - rb) / (1 - rb)``: 0 at chance, 1 at perfect (DCLM's CORE centering)."""
    if not 0.0 <= random_baseline < 1.0:
        raise ValueError(f"random baseline must lie in [0, 1), got {random_baseline}")
    return (acc - random_baseline) / (1.0 - random_baseline)


def task_metrics(results: Sequence[Mapping[str, Any]], random_baseline: float) -> dict[str, Any]:
    """A task's metrics from its items' results (fields a task type lacks are left out)."""
    if not results:
        raise ValueError("a task needs at least one scored item")
    acc = float(np.mean([r["acc"] for r in results]))
    out: dict[str, Any] = {
        "acc": acc,
        "centered": centered_accuracy(acc, random_baseline),
        "bpb": gold_bpb(results),
        "items": len(results),
        "random_baseline": random_baseline,
    }
    for field in _MEAN_FIELDS:
        if all(field in r for r in results):
            out[field] = float(np.mean([r[field] for r in results]))
    categories = sorted({r["category"] for r in results if "category" in r})
    if categories:
        out["categories"] = {
            c: float(np.mean([r["acc"] for r in results if r.get("category") == c]))
            for c in categories
        }
    return out


def suite_metrics(
    tasks: Mapping[str, Mapping[str, Any]], heldout: Mapping[str, Mapping[str, Any]]
) -> dict[str, float]:
    """``core`` (mean centered accuracy), ``bpb`` (mean gold bpb) and held-out bpb per source."""
    out: dict[str, float] = {}
    if tasks:
        out["core"] = float(np.mean([t["centered"] for t in tasks.values()]))
        out["bpb"] = float(np.mean([t["bpb"] for t in tasks.values()]))
    for source, h in heldout.items():
        out[f"heldout.{source}.bpb"] = float(h["bpb"])
    return out


def flat_metrics(
    suite: str, tasks: Mapping[str, Mapping[str, Any]], summary: Mapping[str, float]
) -> dict[str, float]:
    """``<suite>.<task>.<metric>`` and the suite's own metrics as one flat mapping."""
    out = {f"{suite}.{k}": v for k, v in summary.items()}
    for task, m in tasks.items():
        for metric in TASK_METRICS:
            if metric in m and isinstance(m[metric], int | float) and math.isfinite(m[metric]):
                out[f"{suite}.{task}.{metric}"] = float(m[metric])
    return out


@dataclass(frozen=True)
class MetricPath:
    """A parsed metric name: the suite and what to compute."""

    suite: str
    kind: str  # "core", "bpb", "heldout" or "task"
    name: str | None = None  # the task or the held-out source
    metric: str | None = None  # a TASK_METRICS entry, for "task"

    @property
    def lower_is_better(self) -> bool:
        return self.kind in ("bpb", "heldout") or self.metric in LOWER_IS_BETTER

    def __str__(self) -> str:
        if self.kind in ("core", "bpb"):
            return f"{self.suite}.{self.kind}"
        if self.kind == "heldout":
            return f"{self.suite}.heldout.{self.name}.bpb"
        return f"{self.suite}.{self.name}.{self.metric}"


def parse_metric(path: str, tasks: Sequence[str], sources: Sequence[str]) -> MetricPath:
    """Parse a metric name against a suite's task names and held-out sources (ValueError)."""
    parts = path.split(".")
    allowed = (
        "<suite>.core, <suite>.bpb, <suite>.heldout.<source>.bpb or <suite>.<task>.<metric> "
        f"with <metric> one of {', '.join(TASK_METRICS)}"
    )
    if len(parts) == 2 and parts[1] in ("core", "bpb"):
        return MetricPath(parts[0], parts[1])
    if len(parts) == 4 and parts[1] == "heldout" and parts[3] == "bpb":
        if parts[2] not in sources:
            raise ValueError(
                f"{path}: {parts[2]!r} is no held-out source of suite {parts[0]!r}; "
                f"allowed: {', '.join(sources) or '(none)'}"
            )
        return MetricPath(parts[0], "heldout", parts[2])
    if len(parts) == 3:
        if parts[1] not in tasks:
            raise ValueError(
                f"{path}: unknown task {parts[1]!r} of suite {parts[0]!r}; "
                f"allowed: {', '.join(tasks) or '(none)'}"
            )
        if parts[2] not in TASK_METRICS:
            raise ValueError(f"{path}: unknown metric {parts[2]!r}; allowed: {allowed}")
        return MetricPath(parts[0], "task", parts[1], parts[2])
    raise ValueError(f"{path}: not a metric name; allowed: {allowed}")
