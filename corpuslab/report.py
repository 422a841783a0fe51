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
    for run in exp.runs:
        rs = _read(layout.run_dir(run) / "summary.json")
        ml = _read(layout.run_dir(run) / "mlflow.json")
        ev = _read(layout.eval_dir(run) / "eval.json").get("metrics", {})
        out(
            f"== train/{run}: {rs.get('steps')} steps, {rs.get('tokens_seen')} tokens, "
            f"{rs.get('tokens_per_s', 0):.0f} tokens/s, loss {rs.get('initial_loss', 0):.3f} -> "
            f"{rs.get('final_loss', 0):.3f}, {rs.get('num_params')} params"
            + (f", MFU {rs['mfu']:.2%}" if isinstance(rs.get("mfu"), float) else "")
        )
        for prefix, label in (("eval.bpb.", "final weights"), ("eval_lawa.bpb.", "LAWA average")):
            bpb = ", ".join(
                f"{k.removeprefix(prefix)}={v:.3f}" for k, v in ev.items() if k.startswith(prefix)
            )
            if bpb:
                out(f"== eval/{run} ({label}): held-out bits per byte {bpb}")
        out(f"== MLflow run id: {ml.get('run_id')}")
    out(compare_runs(exp, layout))
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
    """One row per run: its mixture, tokens and held-out bits per byte per domain and worst."""
    rows = []
    domains: list[str] = []
    for run, rdecl in exp.runs.items():
        ev = _read(layout.eval_dir(run) / "eval.json").get("metrics", {})
        rs = _read(layout.run_dir(run) / "summary.json")
        bpb = {
            k.removeprefix("eval.bpb."): v
            for k, v in ev.items()
            if k.startswith("eval.bpb.") and k not in ("eval.bpb.mean", "eval.bpb.worst")
        }
        domains += [d for d in bpb if d not in domains]
        rows.append((run, rdecl.mixture, rs.get("tokens_seen"), bpb, ev.get("eval.bpb.mean"),
                     ev.get("eval.bpb.worst")))  # fmt: skip
    rw = max([len("run"), *(len(r[0]) for r in rows)]) + 2
    mw = max([len("mixture"), *(len(r[1]) for r in rows)]) + 2
    head = f"{'run':<{rw}}{'mixture':<{mw}}{'tokens':>8}" + "".join(f"{d:>11}" for d in domains)
    lines = ["== held-out bits per byte by mixture (same model, same tokens) ==",
             head + f"{'mean':>8}{'worst':>8}"]  # fmt: skip
    for run, mixture, tokens, bpb, mean, worst in rows:
        cells = "".join(f"{bpb[d]:>11.3f}" if d in bpb else f"{'-':>11}" for d in domains)
        lines.append(
            f"{run:<{rw}}{mixture:<{mw}}{tokens or 0:>8}{cells}"
            + (f"{mean:>8.3f}{worst:>8.3f}" if mean is not None else "")
        )
    return "\n".join(lines)
