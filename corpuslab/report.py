"""The experiment's report in the terminal: each stage's outcome, read back from its outputs.

Counts per stage and drop reason come from the dbt tables (``stats.duckdb``); the rest from the
stages' own summaries. Nothing here runs a stage.
"""

from __future__ import annotations

import json
from pathlib import Path

from corpuslab.declarations import Experiment
from corpuslab.layout import Layout


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def summary(exp: Experiment, layout: Layout) -> str:
    """The per-stage report, read back from the stage outputs and the dbt statistics."""
    import duckdb

    lines: list[str] = []
    out = lines.append
    con = duckdb.connect(str(layout.duckdb_path), read_only=True)
    rows = con.execute(
        "select stage, recipe, source, documents_in, kept, dropped from stage_summary "
        "order by source, recipe <> '_', recipe, "
        "case stage when 'corpus' then 0 when 'pool' then 1 else 2 end"
    ).fetchall()
    counts = con.execute(
        "select stage, recipe, source, outcome, documents from stage_counts "
        "where outcome <> 'kept' order by stage, recipe, source, documents desc, outcome"
    ).fetchall()
    con.close()
    out("== documents per stage (dbt: stats/stage_summary, stats/stage_counts) ==")
    out(f"{'stage':<9}{'recipe':<10}{'source':<11}{'in':>7}{'kept':>7}{'dropped':>8}  reasons")
    for stage, recipe, source, n_in, kept, dropped in rows:
        reasons = ", ".join(
            f"{o}={n}" for s, r, src, o, n in counts if (s, r, src) == (stage, recipe, source)
        )
        out(f"{stage:<9}{recipe:<10}{source:<11}{n_in:>7}{kept:>7}{dropped:>8}  {reasons}")
    for recipe in exp.recipes:
        out(_dedup_line(exp, layout, recipe))
        out(_quality_line(layout, recipe))
    for mixture, mdecl in exp.mixtures.items():
        if mdecl.doremi is not None:
            dw = _read(layout.doremi_dir(mixture) / "weights.json")
            excess = ", ".join(f"{d}={v:.3f}" for d, v in dw.get("mean_excess_loss", {}).items())
            out(
                f"== doremi/{mixture}: proxy trained {dw.get('steps')} steps against the "
                f"reference on '{mdecl.doremi.reference}'; mean excess loss (nats/token) {excess}"
            )
        mx = _read(layout.mixture_dir(mixture) / "mixture.json")
        tk = _read(layout.tokens_dir(mixture) / "summary.json")
        weights = ", ".join(f"{d}={w:.3f}" for d, w in mx.get("weights", {}).items())
        reps = ", ".join(f"{d}={p['repetition']:.2f}x" for d, p in mx.get("domains", {}).items())
        out(f"== mixture/{mixture} ({mx.get('strategy')}): weights {weights}; repetition {reps}")
        if mx.get("entropy"):
            ent = ", ".join(f"{d}={h:.3f}" for d, h in mx["entropy"].items())
            out(f"   conditional token entropy (bits): {ent}")
        for d, factor in (mx.get("over_repeated") or {}).items():
            out(f"   WARNING: {d} repeated {factor:.1f}x (beyond ~4 epochs repetition hurts)")
        out(
            f"== tokens/{mixture}: {tk.get('sequences')} sequences x {tk.get('seq_len')} = "
            f"{tk.get('tokens')} tokens; per domain {tk.get('tokens_per_domain')}"
        )
    for suite in exp.evals:
        folder = layout.evalset_dir(suite)
        man = _read(folder / "manifest.json")
        dc = _read(folder / "decontamination.json")
        tasks = ", ".join(f"{t} {v['items']}" for t, v in man.get("tasks", {}).items())
        held = ", ".join(f"{s} {v['documents']}" for s, v in man.get("heldout", {}).items())
        out(
            f"== evalset/{suite} (v{man.get('version')}, {man.get('data_version')}): items per "
            f"task {tasks or '-'}; held-out docs {held or '-'} of {man.get('reserved_documents')} "
            "never trained on"
        )
        if dc:
            out(
                f"   exclusion check {'PASSED' if dc['passed'] else 'FAILED'}: "
                f"{len(dc['in_training'])} held-out ids in training, "
                f"{dc['texts_with_any_overlap']} of {dc['eval_texts']} eval texts share a "
                f"{dc['ngram']}-gram with {dc['training_documents']} training documents "
                f"(largest share {dc['max_fraction']}, allowed {dc['max_overlap']})"
            )
    for run, rdecl in exp.runs.items():
        for seed in rdecl.replicates():
            name = run if seed is None else f"{run}/seed{seed}"
            rs = _read(layout.run_dir(run, seed) / "summary.json")
            ml = _read(layout.run_dir(run, seed) / "mlflow.json")
            ev = _read(layout.eval_dir(run, seed) / "eval.json").get("metrics", {})
            out(
                f"== train/{name}: {rs.get('steps')} steps, {rs.get('tokens_seen')} tokens, "
                f"{rs.get('tokens_per_s', 0):.0f} tokens/s, loss {rs.get('initial_loss', 0):.3f} "
                f"-> {rs.get('final_loss', 0):.3f}, {rs.get('num_params')} params"
                + (f", MFU {rs['mfu']:.2%}" if isinstance(rs.get("mfu"), float) else "")
                + f"; MLflow run {ml.get('run_id')}"
            )
            for prefix, label in (("eval.", "final weights"), ("eval_lawa.", "LAWA average")):
                bpb = ", ".join(
                    f"{k.removeprefix(prefix + 'bpb.')}={v:.3f}"
                    for k, v in ev.items()
                    if k.startswith(prefix + "bpb.")
                )
                suites = ", ".join(
                    f"{s} CORE {ev[f'{prefix}{s}.core']:+.3f} gold bpb {ev[f'{prefix}{s}.bpb']:.3f}"
                    for s in rdecl.evals
                    if f"{prefix}{s}.core" in ev
                )
                if bpb or suites:
                    out(
                        f"   eval/{name} ({label}): mixture held-out bpb {bpb or '-'}"
                        + (f"; {suites}" if suites else "")
                    )
    out(compare_runs(exp, layout))
    for suite in exp.evals:
        out(suite_table(exp, layout, suite))
    for study in exp.studies:
        out(study_summary(exp, layout, study))
    return "\n".join(lines)


def _mean_sd(values: list[float], sign: str = "") -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:{sign}.4f}"
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:{sign}.4f} ± {sd:.4f}"


def suite_table(exp: Experiment, layout: Layout, suite: str) -> str:
    """Runs on one suite: CORE, gold bpb and held-out bpb, mean ± sd over seeds."""
    rows = []
    for run, rdecl in exp.runs.items():
        if suite not in rdecl.evals:
            continue
        evs = [
            _read(layout.eval_dir(run, seed) / "eval.json").get("metrics", {})
            for seed in rdecl.replicates()
        ]
        core = [e[f"eval.{suite}.core"] for e in evs if f"eval.{suite}.core" in e]
        gold = [e[f"eval.{suite}.bpb"] for e in evs if f"eval.{suite}.bpb" in e]
        held = [v for e in evs for k, v in e.items() if k.startswith(f"eval.{suite}.heldout.")]
        rows.append((run, rdecl.mixture, len(evs), core, gold, held))
    if not rows:
        return f"== suite {suite}: no run is evaluated on it"
    rw = max(len("run"), *(len(r[0]) for r in rows)) + 2
    mw = max(len("mixture"), *(len(r[1]) for r in rows)) + 2
    lines = [
        f"== suite {suite}: final weights, mean ± sd over seeds (study intervals below) ==",
        f"{'run':<{rw}}{'mixture':<{mw}}{'seeds':>5}  {'CORE':>18}  {'gold bpb':>18}"
        f"  {'held-out bpb':>18}",
    ]
    for run, mixture, n, core, gold, held in rows:
        lines.append(
            f"{run:<{rw}}{mixture:<{mw}}{n:>5}  {_mean_sd(core, '+'):>18}  {_mean_sd(gold):>18}"
            f"  {_mean_sd(held):>18}"
        )
    return "\n".join(lines)


def study_summary(exp: Experiment, layout: Layout, study: str) -> str:
    """A study's decision, in the words of ``compare/<study>``, and where its report is."""
    result = _read(layout.compare_dir(study) / "study.json")
    decl = exp.studies[study]
    head = f"== study {study}: {', '.join(decl.runs)} on {decl.metric}, baseline {decl.baseline}"
    if not result:
        return head + " (not compared yet: materialize compare/" + study + ")"
    lines = [head + " =="]
    est = result["headline"]["estimates"]
    pct = f"{result['confidence']:.0%}"
    for run, e in est.items():
        lines.append(
            f"   {run}: {e['value']:+.4f} ({pct} interval [{e['low']:+.4f}, {e['high']:+.4f}], "
            f"{e['n_seeds']} seed(s), seed sd {e['seed_sd']:.4f})"
        )
    lines += [f"   DECISION: {line}" for line in result["decision"]["lines"]]
    # the continuous metrics, which separate small models long before accuracy does
    suite = decl.suite
    for name in [f"{suite}.bpb", *(k for k in result["metrics"] if ".heldout." in k)]:
        c = result["metrics"].get(name)
        if c is None or name == result["metric"]:
            continue
        for run, d in c["differences"].items():
            verdict = "significant" if d["significant"] else "not significant at this scale"
            lines.append(
                f"   also {name} (lower is better): {run} - {c['baseline']} = {d['value']:+.4f} "
                f"[{d['low']:+.4f}, {d['high']:+.4f}], flip probability "
                f"{d['flip_probability']:.2f}: {verdict}"
            )
    lines.append(f"   report: {result['report']['html']} (also in MLflow, parent run "
                 f"{result.get('mlflow_parent_run_id', '-')})")  # fmt: skip
    return "\n".join(lines)


def _dedup_line(exp: Experiment, layout: Layout, recipe: str) -> str:
    from corpuslab.stages.dedup import dedup_summary

    d = dedup_summary(exp, layout, recipe)
    if not d["documents"]:
        return f"== dedup/{recipe}: not materialized yet =="
    return (
        f"== dedup/{recipe}: {d['documents']} docs, {d['exact_duplicates']} exact and "
        f"{d['near_duplicates']} near duplicates removed in {d['clusters']} clusters =="
    )


def _quality_line(layout: Layout, recipe: str) -> str:
    q = _read(layout.quality_dir(recipe) / "summary.json")
    if not q:
        return f"== quality_model/{recipe}: not materialized yet =="
    if not q.get("enabled"):
        return (
            f"== quality_model/{recipe}: no quality filter declared; every deduplicated "
            "document is kept =="
        )
    m = q["metrics"]
    return (
        f"== quality_model/{recipe}: held-out accuracy {m['accuracy']:.3f}, precision "
        f"{m['precision']:.3f}, recall {m['recall']:.3f}, AUC {m['auc']:.3f} "
        f"({m['n_heldout']} held-out documents); keeps scores >= {q['threshold']:.3g}: "
        f"{q['kept']} of {q['scored']} documents at training time =="
    )


def compare_runs(exp: Experiment, layout: Layout) -> str:
    """One row per run (mean over seeds): its mixture, tokens, and bits per byte on its own
    mixture's held-out split per domain. Comparable between runs of one recipe only: a stricter
    recipe holds out easier text (suites compare across recipes)."""
    rows = []
    domains: list[str] = []
    for run, rdecl in exp.runs.items():
        bpbs: dict[str, list[float]] = {}
        tokens = None
        for seed in rdecl.replicates():
            ev = _read(layout.eval_dir(run, seed) / "eval.json").get("metrics", {})
            tokens = tokens or _read(layout.run_dir(run, seed) / "summary.json").get("tokens_seen")
            for k, v in ev.items():
                if k.startswith("eval.bpb."):
                    bpbs.setdefault(k.removeprefix("eval.bpb."), []).append(v)
        bpb = {d: sum(v) / len(v) for d, v in bpbs.items()}
        domains += [d for d in bpb if d not in domains and d not in ("mean", "worst")]
        rows.append((run, rdecl.mixture, tokens, bpb))
    rw = max([len("run"), *(len(r[0]) for r in rows)]) + 2
    mw = max([len("mixture"), *(len(r[1]) for r in rows)]) + 2
    head = f"{'run':<{rw}}{'mixture':<{mw}}{'tokens':>8}" + "".join(f"{d:>11}" for d in domains)
    lines = ["== own-mixture held-out bits per byte (same model, same tokens; within a recipe) ==",
             head + f"{'mean':>8}{'worst':>8}"]  # fmt: skip
    for run, mixture, tokens, bpb in rows:
        cells = "".join(f"{bpb[d]:>11.3f}" if d in bpb else f"{'-':>11}" for d in domains)
        lines.append(
            f"{run:<{rw}}{mixture:<{mw}}{tokens or 0:>8}{cells}"
            + (f"{bpb['mean']:>8.3f}{bpb['worst']:>8.3f}" if "mean" in bpb else "")
        )
    return "\n".join(lines)
