"""A study of runs on one suite: statistics for every metric, the decision, a readable report.

:func:`analyze` turns the runs' per-item scores (``eval.json`` of each replicate) into
:class:`~corpuslab.eval.stats.Comparison` objects for the study's headline metric and for every
other metric of the suite (CORE, mean gold bpb, each task's accuracy, centered accuracy, gold
bpb and, for choice tasks, probability of the right choice and its margin, and each held-out
source's bpb). :func:`decision` states the outcome plainly: which run is ahead, by how much,
with what interval and flip probability, and "not significant at this scale" when the
interval holds zero or the difference is within the seed-to-seed spread. :func:`write_report`
writes ``report.md`` and a self-contained ``report.html`` (plots inlined as PNG data URIs).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from corpuslab.eval.metrics import MetricPath
from corpuslab.eval.stats import BootstrapPlan, Comparison, RunScores, compare

ITEM_FIELDS = ("acc", "acc_sum", "acc_char", "p_correct", "margin", "gold_nll", "gold_bytes")
REPORT_TASK_METRICS = ("centered", "acc", "bpb", "p_correct", "margin")


def run_scores(evals: Sequence[Mapping[str, Any]], suite: str, weights: str = "eval") -> RunScores:
    """One run's :class:`RunScores` from its replicates' ``eval.json`` contents."""
    if not evals:
        raise ValueError("a run needs at least one evaluated replicate")
    results = []
    for e in evals:
        if suite not in e.get("suites", {}) or weights not in e["suites"][suite]:
            raise ValueError(
                f"run {e.get('run')!r} seed {e.get('seed')!r} has no {weights!r} scores on "
                f"suite {suite!r}: materialize its eval asset"
            )
        results.append(e["suites"][suite][weights])
    versions = {e["suites"][suite]["evalset"] for e in evals}
    if len(versions) > 1:
        raise ValueError(
            f"run {evals[0].get('run')!r}: its seeds were scored on different versions of "
            f"evalset/{suite} ({sorted(versions)}): re-evaluate them"
        )
    scores = RunScores(seeds=[e.get("seed") for e in evals])
    first = results[0]
    for task, entry in first["tasks"].items():
        ids = [it["id"] for it in entry["items"]]
        per_seed = [r["tasks"][task]["items"] for r in results]
        for items in per_seed:
            if [it["id"] for it in items] != ids:
                raise ValueError(f"task {task!r}: the seeds were scored on different items")
        fields = [f for f in ITEM_FIELDS if all(f in it for it in entry["items"])]
        scores.tasks[task] = {
            f: np.array([[float(it[f]) for it in items] for items in per_seed]) for f in fields
        }
        scores.baselines[task] = float(entry["metrics"]["random_baseline"])
        scores.ids[f"task:{task}"] = ids
    for source, entry in first["heldout"].items():
        docs = [r["heldout"][source]["docs"] for r in results]
        scores.heldout[source] = {
            "nll": np.array([[d["nll"] for d in ds] for ds in docs]),
            "bytes": np.array([[float(d["bytes"]) for d in ds] for ds in docs]),
        }
        scores.ids[f"heldout:{source}"] = [d["id"] for d in entry["docs"]]
    return scores


def suite_metric_paths(suite: str, run: RunScores) -> list[MetricPath]:
    """Every metric of the suite a study reports (see the module docstring)."""
    paths = []
    if run.tasks:
        paths += [MetricPath(suite, "core"), MetricPath(suite, "bpb")]
    for task, fields in run.tasks.items():
        for metric in REPORT_TASK_METRICS:
            if metric in ("centered", "bpb") or metric in fields:
                paths.append(MetricPath(suite, "task", task, metric))
    paths += [MetricPath(suite, "heldout", source) for source in run.heldout]
    return paths


def analyze(
    runs: Mapping[str, RunScores], baseline: str, headline: MetricPath, plan: BootstrapPlan
) -> dict[str, Comparison]:
    """Comparisons for the headline metric (first) and every other metric of the suite."""
    out = {str(headline): compare(runs, baseline, headline, plan)}
    for path in suite_metric_paths(headline.suite, runs[baseline]):
        if str(path) not in out:
            out[str(path)] = compare(runs, baseline, path, plan)
    return out


def _fmt(x: float) -> str:
    return f"{x:+.4f}" if abs(x) < 10 else f"{x:+.2f}"


def decision(c: Comparison, confidence: float) -> dict[str, Any]:
    """The study's verdict on its headline metric, in words and numbers."""
    pct = f"{confidence:.0%}"
    direction = "lower" if c.lower_is_better else "higher"
    spread = max(e.seed_sd for e in c.estimates.values())
    lines = []
    verdicts = {}
    for run, d in c.differences.items():
        better = (d.value < 0) if c.lower_is_better else (d.value > 0)
        if d.value == 0:
            verb = "ties"
        elif d.significant:
            verb = "beats" if better else "trails"
        else:  # no winner is named without a significant difference
            verb = "scores above" if better else "scores below"
        text = (
            f"{run} {verb} {c.baseline} on {c.metric} ({direction} is better): difference "
            f"{_fmt(d.value)}, {pct} interval [{_fmt(d.low)}, {_fmt(d.high)}], flip probability "
            f"{d.flip_probability:.2f}"
        )
        if not d.significant:
            text += " — not significant at this scale (the interval holds zero)"
        elif abs(d.value) < spread:
            text += (
                f" — the interval excludes zero, but the difference is within the seed-to-seed "
                f"spread ({spread:.4f}): treat it as a hint, not a decision"
            )
        else:
            text += " — significant"
        lines.append(text + ".")
        verdicts[run] = {
            "difference": d.value,
            "interval": [d.low, d.high],
            "flip_probability": d.flip_probability,
            "significant": d.significant,
            "better": better and d.value != 0,
        }
    best = c.ranking[0]
    lines.append(
        f"Ranking ({direction} is better): {' > '.join(c.ranking)}; probability the ranking "
        f"flips under resampling of items and seeds: {c.ranking_flip_probability:.2f}."
    )
    return {
        "metric": c.metric,
        "best": best,
        "ranking": c.ranking,
        "ranking_flip_probability": c.ranking_flip_probability,
        "versus_baseline": verdicts,
        "statement": " ".join(lines),
        "lines": lines,
    }


def comparison_json(c: Comparison) -> dict[str, Any]:
    return {
        "metric": c.metric,
        "lower_is_better": c.lower_is_better,
        "baseline": c.baseline,
        "ranking": c.ranking,
        "ranking_flip_probability": c.ranking_flip_probability,
        "estimates": {r: asdict(e) | {"seed_sd": e.seed_sd} for r, e in c.estimates.items()},
        "differences": {
            r: asdict(d) | {"significant": d.significant} for r, d in c.differences.items()
        },
    }


def _table(c: Comparison, pct: str) -> list[str]:
    rows = [
        f"| run | seeds | {c.metric} | {pct} interval | items only | seeds only | seed sd "
        f"| diff vs {c.baseline} | {pct} interval | flip prob. |",
        "|---|---:|---:|---|---|---|---:|---:|---|---:|",
    ]
    for run, e in c.estimates.items():
        d = c.differences.get(run)
        diff = (
            f"{_fmt(d.value)} | [{_fmt(d.low)}, {_fmt(d.high)}] | {d.flip_probability:.2f}"
            if d
            else "(baseline) | | "
        )
        rows.append(
            f"| {run} | {e.n_seeds} | {e.value:.4f} | [{e.low:.4f}, {e.high:.4f}] | "
            f"[{e.items_low:.4f}, {e.items_high:.4f}] | [{e.seeds_low:.4f}, {e.seeds_high:.4f}] "
            f"| {e.seed_sd:.4f} | {diff} |"
        )
    return rows


def _per_metric_table(comparisons: Mapping[str, Comparison], runs: Sequence[str]) -> list[str]:
    rows = ["| metric | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for name, c in comparisons.items():
        cells = []
        for run in runs:
            e = c.estimates[run]
            mark = ""
            d = c.differences.get(run)
            if d is not None and d.significant:
                mark = " ▲" if ((d.value < 0) == c.lower_is_better) else " ▼"
            cells.append(f"{e.value:.4f} [{e.low:.4f}, {e.high:.4f}]{mark}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def plots(
    comparisons: Mapping[str, Comparison],
    runs: Sequence[str],
    suite: str,
    loss_curves: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    out_dir: Path,
) -> dict[str, Path]:
    """PNG plots: per-task bars with intervals, held-out bpb per source, loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def bars(names: list[str], title: str, ylabel: str, key: str) -> None:
        if not names:
            return
        fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(names) * max(1, len(runs)) / 2), 4))
        width = 0.8 / len(runs)
        for j, run in enumerate(runs):
            vals = [comparisons[n].estimates[run].value for n in names]
            lo = [v - comparisons[n].estimates[run].low for v, n in zip(vals, names, strict=True)]
            hi = [comparisons[n].estimates[run].high - v for v, n in zip(vals, names, strict=True)]
            x = np.arange(len(names)) + (j - (len(runs) - 1) / 2) * width
            ax.bar(x, vals, width, label=run, color=colors[j % len(colors)], alpha=0.85)
            ax.errorbar(x, vals, yerr=[lo, hi], fmt="none", ecolor="black", capsize=3, lw=1)
        labels = [n.removeprefix(f"{suite}.") for n in names]
        ax.set_xticks(np.arange(len(names)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files[key] = path

    centered = [n for n in comparisons if n.endswith(".centered")]
    core = [f"{suite}.core"] if f"{suite}.core" in comparisons else []
    bars(core + centered, "Centered accuracy per task (95% intervals)", "centered acc", "tasks")
    gold = [n for n in comparisons if n.endswith(".bpb") and ".heldout." not in n]
    bars(gold, "Gold-continuation bits per byte (lower is better)", "bits/byte", "gold_bpb")
    held = [n for n in comparisons if ".heldout." in n]
    bars(held, "Held-out bits per byte per source (lower is better)", "bits/byte", "heldout")
    if any(loss_curves.values()):
        fig, ax = plt.subplots(figsize=(7, 4))
        for j, run in enumerate(runs):
            color = colors[j % len(colors)]
            for k, (_, curve) in enumerate(sorted(loss_curves.get(run, {}).items())):
                if curve:
                    steps, losses = zip(*curve, strict=True)
                    ax.plot(steps, losses, color=color, lw=1, alpha=0.7,
                            label=run if k == 0 else None)  # fmt: skip
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats/token)")
        ax.set_title("Training loss, every seed of every run")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / "loss.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files["loss"] = path
    return files


def write_report(
    out_dir: Path,
    study: str,
    headline: str,
    comparisons: Mapping[str, Comparison],
    verdict: Mapping[str, Any],
    plan: BootstrapPlan,
    context: Mapping[str, Any],
    plot_files: Mapping[str, Path],
) -> tuple[Path, Path]:
    """``report.md`` (plots as files beside it) and a self-contained ``report.html``."""
    from corpuslab.fileio import atomic_path

    pct = f"{plan.confidence:.0%}"
    c = comparisons[headline]
    runs = list(c.estimates)
    md = [
        f"# Study `{study}`: {headline}",
        "",
        "## Decision",
        "",
        *[f"- {line}" for line in verdict["lines"]],
        "",
        f"## {headline} per run",
        "",
        *_table(c, pct),
        "",
        f"Intervals: {pct} percentile bootstrap, {plan.n_boot} replicates (seed {plan.seed}), "
        "resampling the suite's items (the same draw for every run, so differences are paired) "
        "and each run's seeds; *items only* and *seeds only* resample one source of noise. "
        "The flip probability is the share of replicates in which the difference has the "
        "other sign.",
        "",
        "## Every metric of the suite",
        "",
        f"Value [{pct} interval]; ▲/▼: significantly better/worse than the baseline "
        f"`{c.baseline}`.",
        "",
        *_per_metric_table(comparisons, runs),
        "",
        "## What was compared",
        "",
    ]
    for run, info in context.get("runs", {}).items():
        md.append(
            f"- `{run}`: seeds {info.get('seeds')}, mixture `{info.get('mixture')}`, recipe "
            f"`{info.get('recipe')}`, MLflow runs {', '.join(info.get('mlflow_run_ids', []))}"
        )
    if "evalset" in context:
        ev = context["evalset"]
        md.append(
            f"- eval set `{ev.get('suite')}` version {ev.get('version')} (digest "
            f"{ev.get('data_version')}): "
            + ", ".join(f"{t} {v['items']} items" for t, v in ev.get("tasks", {}).items())
            + "; held-out "
            + ", ".join(f"{s} {v['documents']} docs" for s, v in ev.get("heldout", {}).items())
        )
    if "decontamination" in context:
        dc = context["decontamination"]
        md.append(
            f"- exclusion check: {'passed' if dc.get('passed') else 'FAILED'}; "
            f"{dc.get('texts_with_any_overlap')} of {dc.get('eval_texts')} eval texts share any "
            f"{dc.get('ngram')}-gram with training (largest share {dc.get('max_fraction')}, "
            f"allowed {dc.get('max_overlap')})"
        )
    md += ["", "## Plots", ""]
    md += [f"![{k}]({p.name})" for k, p in plot_files.items()]
    md_path = out_dir / "report.md"
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(md) + "\n")
    html_path = out_dir / "report.html"
    with atomic_path(html_path) as tmp:
        tmp.write_text(_html(study, md, plot_files))
    return md_path, html_path


def _html(study: str, md: Sequence[str], plot_files: Mapping[str, Path]) -> str:
    """A minimal Markdown-to-HTML rendering of the report (headings, lists, tables, images)."""
    body: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if table:
            rows = [r.strip("|").split("|") for r in table if not set(r) <= set("|-: ")]
            out = ["<table>"]
            for i, cells in enumerate(rows):
                tag = "th" if i == 0 else "td"
                out.append(
                    "<tr>" + "".join(f"<{tag}>{html.escape(x.strip())}</{tag}>" for x in cells)
                )
            body.append("\n".join(out) + "</table>")
            table.clear()

    images = {f"![{k}]({p.name})": p for k, p in plot_files.items()}
    for line in md:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line in images:
            data = base64.b64encode(images[line].read_bytes()).decode()
            body.append(
                f'<p><img alt="{html.escape(line)}" src="data:image/png;base64,{data}"></p>'
            )
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:72em;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;"
        "padding:0.2em 0.5em;text-align:right}th{background:#f3f3f3}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Study {html.escape(study)}"
        f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
