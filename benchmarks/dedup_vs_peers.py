"""Fuzzy dedup, documents/s and accuracy: corpuslab vs plain datasketch vs datatrove, one thread.

The corpus is real text from this machine: the demo corpus without caps (language reference,
stdlib docstrings and sources, installed packages' READMEs), every license file of the installed
distributions (MIT/BSD/Apache texts that differ in a name or a year: real near-duplicates), and
a deterministic sample of site-packages sources (vendored copies are near-duplicates too).

Systems, all on the same in-memory texts, single-threaded, threshold 0.8, 128 permutations, the
same LSH bands x rows (16 x 8 by default: candidates at Jaccard 0.8 are found with p = 0.95,
where datasketch's optimum for 0.8, 9 x 13, finds them with p = 0.40; a last row shows what
the optimum gives):

- ``corpuslab``: :func:`corpuslab.dedup.compute_signatures` then
  :func:`corpuslab.dedup.find_duplicates_from_signatures` (verify on);
- ``datasketch``: ``MinHash`` per document (``update_batch`` over the same shingle sets, its
  fastest documented path), ``MinHashLSH`` insertion session, a query per document, candidates
  verified by ``jaccard() >= 0.8``, union-find, smallest id kept;
- ``datatrove``: its four MinHash stages (signatures, buckets, clusters, filter) through
  ``LocalPipelineExecutor`` with one worker, its default English word tokenizer (spaCy) and
  xxhash; it does not verify candidates.

Accuracy is measured on the documents each system REMOVES, against exact Jaccard of the shingle
sets (:func:`corpuslab.dedup.shingles`) at 0.8. The exact pairs come from prefix filtering
(AllPairs): with shingles ordered by rarity, two sets with Jaccard >= t must share one of the
first ``|A| - ceil(t |A|) + 1`` shingles of each, so verifying the pairs that do is exhaustive
and exact. A brute-force all-pairs check on a random subset confirms it. Ground truth:
``precision = |removed & has_partner| / |removed|`` where ``has_partner`` are documents with an
exact Jaccard >= 0.8 partner; ``recall = |removed & exact_removed| / |exact_removed|`` where
``exact_removed`` is what exact dedup removes (components of the exact graph, smallest id kept).

Run: ``.venv/bin/python benchmarks/dedup_vs_peers.py --out dedup.json`` (prints a table).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, ClassVar  # noqa: E402

from corpuslab import dedup  # noqa: E402
from corpuslab.ingest.democorpus import build_demo_corpus  # noqa: E402
from corpuslab.ingest.readers import read_raw_shard  # noqa: E402

THRESHOLD = 0.8
NGRAM = 5
NUM_PERM = 128
MAX_SOURCE_BYTES = 200_000  # larger site-packages files are generated tables
LICENSE_FILE = re.compile(r"(^|/)(LICEN[CS]E|COPYING|NOTICE)[^/]*$", re.IGNORECASE)


# ---------------------------------------------------------------- corpus


def demo_records(work: Path) -> list[tuple[str, str]]:
    """The demo corpus with no caps, written as the pipeline writes it and read back."""
    shards = build_demo_corpus(work / "demo", max_docs_per_source=10**9)
    out = []
    for source, paths in shards.items():
        for path in paths:
            table = read_raw_shard(path, source).table
            out += zip(
                table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True
            )
    return out


def license_records() -> list[tuple[str, str]]:
    """License/notice files shipped in the installed distributions' metadata folders."""
    out = {}
    for dist in importlib.metadata.distributions():
        name = str(dist.metadata["Name"] or "").lower()
        for f in dist.files or []:
            if ".dist-info" not in str(f) or not LICENSE_FILE.search(str(f)):
                continue
            try:
                text = Path(dist.locate_file(f)).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if text.strip():
                out[f"licenses/{name}/{Path(str(f)).name}"] = text
    return sorted(out.items())


def site_package_records(n: int) -> list[tuple[str, str]]:
    """A fixed sample (by a hash of the path) of ``n`` site-packages Python sources."""
    root = Path(sysconfig.get_paths()["purelib"])
    files = sorted(
        (hashlib.blake2b(str(p.relative_to(root)).encode(), digest_size=8).digest(), p)
        for p in root.rglob("*.py")
        if 0 < p.stat().st_size <= MAX_SOURCE_BYTES
    )
    out = []
    for _, path in files:
        if len(out) >= n:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            out.append((f"site/{path.relative_to(root).as_posix()}", text))
    return sorted(out)


def build_corpus(work: Path, site_docs: int) -> tuple[list[str], list[str], dict[str, int]]:
    """All documents, ids unique and sorted, with a count per part."""
    parts = {
        "demo": demo_records(work),
        "licenses": license_records(),
        "site-packages": site_package_records(site_docs),
    }
    merged = dict(sorted((i, t) for records in parts.values() for i, t in records))
    return list(merged), list(merged.values()), {k: len(v) for k, v in parts.items()}


# ---------------------------------------------------------------- systems


def run_corpuslab(ids: Sequence[str], texts: Sequence[str], params: dedup.DedupParams) -> set:
    """corpuslab: compiled signatures, then LSH and clusters over all of them."""
    sigs = dedup.compute_signatures(ids, texts, params)
    return dedup.find_duplicates_from_signatures(ids, sigs, params).drop


def run_datasketch(ids: Sequence[str], texts: Sequence[str], params: dedup.DedupParams) -> set:
    """Plain datasketch, as the project used it before: per-document MinHash + MinHashLSH."""
    from datasketch import LeanMinHash, MinHash, MinHashLSH

    sets = (dedup.shingles(t, params.ngram) for t in texts)
    minhashes = MinHash.generator(sets, num_perm=params.num_perm, seed=params.seed)
    sigs = {i: LeanMinHash(m) for i, m in zip(ids, minhashes, strict=True)}
    lsh = MinHashLSH(
        threshold=params.threshold, num_perm=params.num_perm, params=params.lsh_params()
    )
    order = sorted(sigs)
    with lsh.insertion_session() as session:
        for doc_id in order:
            session.insert(doc_id, sigs[doc_id], check_duplication=False)
    pairs = set()
    for doc_id in order:
        for other in lsh.query(sigs[doc_id]):
            if other != doc_id and sigs[doc_id].jaccard(sigs[other]) >= params.threshold:
                pairs.add((min(doc_id, other), max(doc_id, other)))
    return _removed_by_components(ids, pairs)


class _MemoryReader:
    """datatrove first step: the benchmark's documents, from memory (a class attribute, so the
    executor's per-task deepcopy of the pipeline does not copy the texts)."""

    texts: ClassVar[list[str]] = []


class _KeptIds:
    kept: ClassVar[list[str]] = []


DATATROVE_STAGE_SECONDS: dict[str, float] = {}  # of the last datatrove run


def run_datatrove(ids: Sequence[str], texts: Sequence[str], bands: int, rows: int) -> set:
    """datatrove's four MinHash stages, one local worker each, in a scratch folder."""
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )

    class Reader(PipelineStep):
        name = "memory reader"

        def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Any:
            for i, text in enumerate(_MemoryReader.texts):
                yield Document(text=text, id=str(i))

    class Collect(PipelineStep):
        name = "collect kept ids"

        def run(self, data: Any, rank: int = 0, world_size: int = 1) -> Any:
            for doc in data:
                _KeptIds.kept.append(doc.id)
            yield from ()

    _MemoryReader.texts = list(texts)
    _KeptIds.kept = []
    config = MinhashConfig(n_grams=NGRAM, num_buckets=bands, hashes_per_bucket=rows, seed=1)
    with tempfile.TemporaryDirectory(prefix="datatrove-") as tmp, open(os.devnull, "w") as null:
        base = Path(tmp)
        stages = [
            LocalPipelineExecutor(
                [Reader(), MinhashDedupSignature(output_folder=f"{base}/sigs", config=config)],
                tasks=1,
                workers=1,
                logging_dir=f"{base}/logs/1",
            ),
            LocalPipelineExecutor(
                [MinhashDedupBuckets(f"{base}/sigs", f"{base}/buckets", config=config)],
                tasks=bands,
                workers=1,
                logging_dir=f"{base}/logs/2",
            ),
            LocalPipelineExecutor(
                [MinhashDedupCluster(f"{base}/buckets", f"{base}/remove", config=config)],
                tasks=1,
                workers=1,
                logging_dir=f"{base}/logs/3",
            ),
            LocalPipelineExecutor(
                [Reader(), MinhashDedupFilter(input_folder=f"{base}/remove"), Collect()],
                tasks=1,
                workers=1,
                logging_dir=f"{base}/logs/4",
            ),
        ]
        with contextlib.redirect_stderr(null):
            for number, stage in enumerate(stages, start=1):
                t0 = time.perf_counter()
                stage.run()
                DATATROVE_STAGE_SECONDS[f"stage {number}"] = time.perf_counter() - t0
    kept = {int(i) for i in _KeptIds.kept}
    return {doc_id for i, doc_id in enumerate(ids) if i not in kept}


def _removed_by_components(ids: Sequence[str], pairs: set[tuple[str, str]]) -> set[str]:
    """Members of connected components of ``pairs`` other than each component's smallest id."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            lo, hi = sorted((ra, rb))
            parent[hi] = lo
            parent.setdefault(lo, lo)
    return {x for x in parent if find(x) != x}


# ---------------------------------------------------------------- ground truth


def exact_pairs(sets: list[set[int]], threshold: float) -> set[tuple[int, int]]:
    """Every pair with Jaccard >= threshold, by prefix filtering (exhaustive, then verified)."""
    df: dict[int, int] = defaultdict(int)
    for s in sets:
        for tok in s:
            df[tok] += 1
    index: dict[int, list[int]] = defaultdict(list)
    candidates: set[tuple[int, int]] = set()
    for i, s in enumerate(sets):
        ordered = sorted(s, key=lambda tok: (df[tok], tok))
        # overlap needed >= ceil(t |A|); the 1e-9 slack only lengthens the prefix (safe side)
        prefix = len(ordered) - math.ceil(threshold * len(ordered) - 1e-9) + 1
        for tok in ordered[:prefix]:
            for j in index[tok]:
                candidates.add((j, i))
            index[tok].append(i)
    out = set()
    for i, j in candidates:
        a, b = sets[i], sets[j]
        inter = len(a & b)
        if inter / (len(a) + len(b) - inter) >= threshold:
            out.add((i, j))
    return out


def brute_force_pairs(sets: list[set[int]], subset: list[int], threshold: float) -> set:
    """All pairs of ``subset`` compared directly (the check of the prefix filter)."""
    out = set()
    for x, i in enumerate(subset):
        for j in subset[x + 1 :]:
            a, b = sets[i], sets[j]
            inter = len(a & b)
            if inter / (len(a) + len(b) - inter) >= threshold:
                out.add((min(i, j), max(i, j)))
    return out


def ground_truth(ids: Sequence[str], texts: Sequence[str], check_docs: int) -> dict[str, Any]:
    """Exact-Jaccard duplicates on the shingle sets, and a brute-force check on a subset."""
    vocab: dict[bytes, int] = {}
    sets = [{vocab.setdefault(s, len(vocab)) for s in dedup.shingles(t, NGRAM)} for t in texts]
    pairs = exact_pairs(sets, THRESHOLD)
    subset = sorted(random.Random(0).sample(range(len(sets)), min(check_docs, len(sets))))
    in_subset = set(subset)
    expected = {p for p in pairs if p[0] in in_subset and p[1] in in_subset}
    brute = brute_force_pairs(sets, subset, THRESHOLD)
    id_pairs = {(min(ids[i], ids[j]), max(ids[i], ids[j])) for i, j in pairs}
    return {
        "pairs": id_pairs,
        "has_partner": {d for p in id_pairs for d in p},
        "removed": _removed_by_components(ids, id_pairs),
        "distinct_shingles": len(vocab),
        "brute_force_docs": len(subset),
        "brute_force_pairs": len(brute),
        "brute_force_agrees": brute == expected,
    }


def accuracy(removed: set[str], truth: dict[str, Any]) -> dict[str, float]:
    """Precision of removed docs (have an exact partner) and recall of exact dedup's removals."""
    tp_partner = len(removed & truth["has_partner"])
    return {
        "removed": len(removed),
        "precision": tp_partner / len(removed) if removed else 1.0,
        "recall": len(removed & truth["removed"]) / len(truth["removed"])
        if truth["removed"]
        else 1.0,
        "precision_vs_exact_removed": len(removed & truth["removed"]) / len(removed)
        if removed
        else 1.0,
    }


# ---------------------------------------------------------------- timing and report


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (datatrove's manager)."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], set], repeats: int) -> tuple[float, float, set]:
    """Best wall and CPU seconds over ``repeats`` runs, and the (identical) result."""
    walls, cpus, result = [], [], set()
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), cpu_seconds()
        result = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(cpu_seconds() - c0)
    return min(walls), min(cpus), result


def package_version(pkg: str) -> str:
    """The installed version of a distribution, or "absent"."""
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("numpy", "numba", "scipy", "datasketch", "datatrove", "spacy", "xxhash"):
        out[pkg] = package_version(pkg)
    return out


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    """Build the corpus, time the three systems, score them, print and save the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--site-docs", type=int, default=4000, help="site-packages sources")
    parser.add_argument("--repeats", type=int, default=2, help="runs per system; best counts")
    parser.add_argument("--check-docs", type=int, default=600, help="brute-force subset size")
    parser.add_argument("--skip", action="append", default=[], choices=["datasketch", "datatrove"])
    parser.add_argument("--bands", type=int, default=16, help="LSH bands (all systems)")
    parser.add_argument("--rows", type=int, default=8, help="LSH rows per band")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as tmp:
        ids, texts, parts = build_corpus(Path(tmp), args.site_docs)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    params = dedup.DedupParams(
        ngram=NGRAM, num_perm=NUM_PERM, threshold=THRESHOLD, bands=args.bands, rows=args.rows
    )
    default = dedup.DedupParams(ngram=NGRAM, num_perm=NUM_PERM, threshold=THRESHOLD)
    bands, rows = params.lsh_params()
    print(f"corpus: {len(ids)} docs, {n_bytes / 1e6:.1f} MB ({parts}); LSH {bands}x{rows}")

    t0 = time.perf_counter()
    dedup.compute_signatures(ids[:8], texts[:8], params)  # compile or load the numba cache
    warmup = time.perf_counter() - t0
    truth = ground_truth(ids, texts, args.check_docs)
    print(
        f"ground truth: {len(truth['pairs'])} exact pairs >= {THRESHOLD}, "
        f"{len(truth['removed'])} removable; brute force on {truth['brute_force_docs']} docs "
        f"agrees: {truth['brute_force_agrees']}",
        flush=True,
    )

    db, dr = default.lsh_params()
    systems: dict[str, tuple[Callable[[], set], int]] = {
        "corpuslab": (lambda: run_corpuslab(ids, texts, params), args.repeats),
        "datasketch": (lambda: run_datasketch(ids, texts, params), args.repeats),
        "datatrove": (lambda: run_datatrove(ids, texts, bands, rows), 1),  # minutes: once
        f"corpuslab, default {db}x{dr}": (lambda: run_corpuslab(ids, texts, default), 1),
    }
    results: dict[str, dict[str, Any]] = {}
    removed_by: dict[str, set] = {}
    for name, (fn, repeats) in systems.items():
        if name in args.skip:
            continue
        wall, cpu, removed = timed(fn, repeats)
        removed_by[name] = removed
        results[name] = {
            "seconds": wall,
            "cpu_seconds": cpu,
            "docs_per_s": len(ids) / wall,
            "runs": repeats,
            **accuracy(removed, truth),
        }
        if name == "datatrove":
            results[name]["stage_seconds"] = dict(DATATROVE_STAGE_SECONDS)
        print(f"{name}: {wall:.2f} s wall, {cpu:.2f} s CPU, {len(removed)} removed", flush=True)
    ours = results["corpuslab"]
    for res in results.values():
        res["corpuslab_speedup"] = res["seconds"] / ours["seconds"]
        res["corpuslab_cpu_speedup"] = res["cpu_seconds"] / ours["cpu_seconds"]
    # same signatures, same LSH, same verification: the same documents go
    same = removed_by["corpuslab"] == removed_by["datasketch"] if "datasketch" in results else None

    print()
    print(
        "| system | docs/s | wall s | CPU s | corpuslab faster (wall / CPU) | removed "
        "| precision | recall |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['docs_per_s']:,.0f} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} "
            f"| {r['corpuslab_speedup']:.1f}x / {r['corpuslab_cpu_speedup']:.1f}x "
            f"| {r['removed']} | {r['precision']:.3f} | {r['recall']:.3f} |"
        )
    print(f"\ncorpuslab removes exactly what datasketch removes: {same}")
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "versions": versions(),
        "corpus": {"docs": len(ids), "bytes": n_bytes, "parts": parts},
        "params": params.model_dump(),
        "corpuslab_warmup_seconds": warmup,
        "ground_truth": {
            k: v for k, v in truth.items() if k not in ("pairs", "has_partner", "removed")
        }
        | {
            "exact_pairs": len(truth["pairs"]),
            "has_partner": len(truth["has_partner"]),
            "removable": len(truth["removed"]),
        },
        "results": results,
        "corpuslab_equals_datasketch": same,
        "repeats": args.repeats,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
