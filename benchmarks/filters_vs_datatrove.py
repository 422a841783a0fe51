"""Gopher quality + Gopher repetition + C4 rules: corpuslab against datatrove, one core.

Both sides run in this process on the same real text: the demo corpus without caps (every
stdlib module's docstrings and source, the language reference, installed packages'
descriptions) plus the Markdown/reST/text files shipped in the installed packages. Each rule set
is timed alone and as a chain (repetition -> quality -> C4, FineWeb's order), with keep/drop
agreement and confusion counts per rule set. datatrove's language filter downloads a model, so
it is left out; only the offline rules are compared.

    .venv/bin/python benchmarks/filters_vs_datatrove.py --out results.json [--max-mb 2]

datatrove, spaCy and orjson are benchmark peers, not project dependencies:
``.venv/bin/pip install datatrove spacy orjson``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: set before numpy loads

import argparse  # noqa: E402
import gc  # noqa: E402
import gzip  # noqa: E402
import importlib.metadata  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import zstandard  # noqa: E402

from corpuslab import filters  # noqa: E402
from corpuslab.filters import words  # noqa: E402
from corpuslab.ingest.democorpus import build_demo_corpus  # noqa: E402

# our reason -> datatrove's, where the names differ
REASON_TO_DATATROVE = {"gopher_too_few_stop_words": "gopher_enough_stop_words"}
SITE_DOC_SUFFIXES = (".md", ".rst", ".txt")
MAX_SITE_DOC_BYTES = 200_000
RULE_SETS = ("gopher_repetition", "gopher_quality", "c4_quality")


def pin_one_core() -> int | None:
    """Restrict this process to one CPU so 'per core' means one core."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def read_jsonl_texts(path: Path) -> list[str]:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    elif path.name.endswith(".zst"):
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    return [json.loads(line)["text"] for line in raw.decode("utf-8").splitlines() if line]


def site_docs(limit_bytes: int) -> list[str]:
    """Text files that installed packages ship (READMEs, licences, changelogs), sorted by path."""
    root = Path(sysconfig.get_paths()["purelib"])
    texts = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in SITE_DOC_SUFFIXES or not path.is_file():
            continue
        if path.stat().st_size > limit_bytes or "entry_points" in path.name:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text.split()) >= 20:
            texts.append(text)
    return texts


def build_corpus(workdir: Path, with_site_docs: bool) -> dict[str, list[str]]:
    shards = build_demo_corpus(workdir, max_docs_per_source=10**9)
    corpus = {src: [t for p in paths for t in read_jsonl_texts(p)] for src, paths in shards.items()}
    if with_site_docs:
        corpus["site_docs"] = site_docs(MAX_SITE_DOC_BYTES)
    return corpus


def cap(corpus: dict[str, list[str]], max_mb: float | None) -> list[str]:
    """All texts, or an even slice of every source up to ``max_mb`` MB in all."""
    texts = [t for src in sorted(corpus) for t in corpus[src]]
    if max_mb is None:
        return texts
    total = sum(len(t.encode()) for t in texts)
    keep = max(1, int(len(texts) * min(1.0, max_mb * 1e6 / total)))
    step = len(texts) / keep
    return [texts[int(i * step)] for i in range(keep)]


# ---------------------------------------------------------------- the two sides


def datatrove_filters() -> dict[str, Any]:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return {
        "gopher_repetition": GopherRepetitionFilter(),
        "gopher_quality": GopherQualityFilter(),
        "c4_quality": C4QualityFilter(),
    }


def run_datatrove(
    flts: Sequence[Any], texts: Sequence[str]
) -> tuple[list[str | None], list[str], float]:
    """Per text: None (kept) or 'rule:reason'; the final text; seconds."""
    from datatrove.data import Document

    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    out: list[str | None] = []
    gc.collect()
    t0 = time.process_time()
    for doc in docs:
        decision = None
        for flt in flts:
            res = flt.filter(doc)
            kept, why = (res, None) if not isinstance(res, tuple) else res
            if not kept:
                decision = f"{flt.name}:{why}"
                break
        out.append(decision)
    seconds = time.process_time() - t0
    return out, [d.text for d in docs], seconds


def fresh_ours() -> None:
    """Empty our word caches (the splitter's rules stay compiled, like spaCy's loaded model)."""
    words.spacy_splitter().clear()


def run_ours(
    pipe: filters.Pipeline, texts: Sequence[str]
) -> tuple[list[str | None], list[str], float]:
    """Per text: None (kept) or 'step:reason'; the final text; CPU seconds."""
    gc.collect()
    t0 = time.process_time()
    result = pipe.run(texts)
    seconds = time.process_time() - t0
    decisions = [None if d is None else f"{d[0]}:{d[1]}" for d in result.decisions]
    return decisions, result.texts, seconds


def warm_up(texts: Sequence[str]) -> None:
    """Load spaCy and build our splitter outside the timings (both are one-time setup)."""
    sample = [t for t in texts if len(t) > 2000][:1] or list(texts[:1])
    run_datatrove(list(datatrove_filters().values()), sample)
    run_ours(filters.Pipeline.from_decls(list(RULE_SETS)), sample)


# ---------------------------------------------------------------- comparison


def agreement(
    ours: Sequence[str | None], theirs: Sequence[str | None], examples: int = 5
) -> dict[str, Any]:
    """Keep/drop confusion, reason agreement among shared drops, and a few disagreements."""
    both_keep = both_drop = ours_only = theirs_only = same_reason = 0
    diffs: list[dict[str, Any]] = []
    reason_pairs: Counter[str] = Counter()
    for i, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        if o is None and t is None:
            both_keep += 1
            continue
        if o is not None and t is not None:
            both_drop += 1
            o_reason = o.split(":", 1)[1]
            o_reason = REASON_TO_DATATROVE.get(o_reason, o_reason)
            if o_reason == t.split(":", 1)[1]:
                same_reason += 1
            else:
                reason_pairs[f"{o} vs {t}"] += 1
            continue
        if o is not None:
            ours_only += 1
        else:
            theirs_only += 1
        if len(diffs) < examples:
            diffs.append({"doc": i, "ours": o, "datatrove": t})
    n = len(ours)
    return {
        "documents": n,
        "agreement": (both_keep + both_drop) / n if n else 1.0,
        "both_keep": both_keep,
        "both_drop": both_drop,
        "dropped_by_ours_only": ours_only,
        "dropped_by_datatrove_only": theirs_only,
        "same_reason_among_both_drop": same_reason,
        "reason_mismatches": dict(reason_pairs.most_common(10)),
        "examples": diffs,
    }


def timing(seconds: float, texts: Sequence[str]) -> dict[str, float]:
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    return {"seconds": seconds, "docs_per_s": len(texts) / seconds, "mb_per_s": mb / seconds}


def compare(
    label: str,
    ours_names: Sequence[str],
    dt_flts: Sequence[Any],
    texts: Sequence[str],
    log: Callable[[str], None],
    slices: int,
) -> dict[str, Any]:
    """Both sides on the same texts, slice by slice in alternating order, CPU time summed.

    Other work on the machine then slows both sides alike. Our word cache starts empty and
    fills over the run, as it would over a shard.
    """
    pipe = filters.Pipeline.from_decls(list(ours_names))
    fresh_ours()
    theirs: list[str | None] = []
    ours: list[str | None] = []
    their_texts: list[str] = []
    our_texts: list[str] = []
    t_dt = t_ours = 0.0
    edges = [round(i * len(texts) / slices) for i in range(slices + 1)]
    for k, (a, b) in enumerate(itertools.pairwise(edges)):
        part = texts[a:b]
        for side in ("dt", "ours") if k % 2 == 0 else ("ours", "dt"):
            if side == "dt":
                d, t, s = run_datatrove(dt_flts, part)
                theirs += d
                their_texts += t
                t_dt += s
            else:
                d, t, s = run_ours(pipe, part)
                ours += d
                our_texts += t
                t_ours += s
    log(f"{label}: datatrove {t_dt:.1f} s, corpuslab {t_ours:.2f} s ({t_dt / t_ours:.1f}x)")
    row = {
        "rules": label,
        "datatrove": timing(t_dt, texts),
        "corpuslab": timing(t_ours, texts),
        "speedup": t_dt / t_ours,
        **agreement(ours, theirs),
    }
    kept_both = [i for i, (o, t) in enumerate(zip(ours, theirs, strict=True)) if o is t is None]
    if kept_both:
        same = sum(our_texts[i] == their_texts[i] for i in kept_both)
        row["same_output_text_among_both_keep"] = same / len(kept_both)
    return row


def machine() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "missing"

    return {
        "cpu": cpu,
        "cpus_visible": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {d: version(d) for d in ("datatrove", "spacy", "numpy", "corpuslab")},
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| rules | datatrove docs/s | MB/s | corpuslab docs/s | MB/s | speedup | agreement "
        "| both keep | both drop | ours only drop | datatrove only drop |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['rules']} | {r['datatrove']['docs_per_s']:.1f} | {r['datatrove']['mb_per_s']:.3f} "
        f"| {r['corpuslab']['docs_per_s']:.1f} | {r['corpuslab']['mb_per_s']:.2f} "
        f"| {r['speedup']:.1f}x | {100 * r['agreement']:.2f}% | {r['both_keep']} "
        f"| {r['both_drop']} | {r['dropped_by_ours_only']} | {r['dropped_by_datatrove_only']} |"
        for r in rows
    ]
    return head + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--max-mb", type=float, default=None, help="use an even slice (quick run)")
    parser.add_argument("--no-site-docs", action="store_true", help="demo corpus only")
    parser.add_argument(
        "--chain-only", action="store_true", help="skip the per-rule-set timings (faster)"
    )
    parser.add_argument("--slices", type=int, default=20, help="alternation slices (see compare)")
    args = parser.parse_args(argv)
    try:
        import datatrove  # noqa: F401
        import spacy  # noqa: F401
    except ImportError as exc:
        print(
            f"this benchmark compares against datatrove, which is not installed ({exc}).\n"
            "install the peers into the venv: .venv/bin/pip install datatrove spacy orjson",
            file=sys.stderr,
        )
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    cpu = pin_one_core()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_corpus(Path(tmp), with_site_docs=not args.no_site_docs)
    texts = cap(corpus, args.max_mb)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    log(f"corpus: {len(texts)} documents, {mb:.2f} MB (pinned to cpu {cpu})")
    warm_up(texts)
    dt = datatrove_filters()
    chain = [dt[n] for n in RULE_SETS]
    rows = [compare("all three (chain)", RULE_SETS, chain, texts, log, args.slices)]
    if not args.chain_only:
        rows += [compare(n, [n], [dt[n]], texts, log, args.slices) for n in RULE_SETS]
    # the same chain with the word cache already filled (as for a shard's later documents)
    warm_pipe = filters.Pipeline.from_decls(list(RULE_SETS))
    run_ours(warm_pipe, texts)
    _, _, t_warm = run_ours(warm_pipe, texts)
    warm = timing(t_warm, texts)
    log(f"corpuslab chain, word cache warm: {t_warm:.2f} s, {warm['mb_per_s']:.2f} MB/s")
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "pinned_cpu": cpu,
        "corpus": {
            "documents": len(texts),
            "mb": mb,
            "per_source": {s: len(v) for s, v in corpus.items()},
        },
        "results": rows,
        "corpuslab_chain_warm_cache": warm,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
