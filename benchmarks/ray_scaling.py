"""Per-shard work of one recipe on Ray (1 and 2 workers) and in local processes (1 and 2).

The work: every shard of the demo corpus (default caps, 100 documents a shard) normalized to
Parquet (``materialize_corpus_shard``) and run through the ``dclm`` recipe's per-document
steps (``materialize_pool_shard``: language ID, Gopher, C4, exact and paragraph dedup), one
task a shard, the same stage functions the assets call. Modes, in the same script:

- ``local-N``: a process pool of N forked workers (``concurrent.futures``), the shape of
  Dagster's multiprocess executor running N shard steps at once;
- ``ray-N``: a local Ray head with N CPUs (``corpuslab.compute.local_ray_head``), the tasks
  through :class:`corpuslab.compute.RayCompute`, as the ``compute`` resource submits them.

Each pool or head is started and warmed with one shard first (not timed; Ray's head start-up
and its first task are reported apart), then the whole corpus is timed, with the CPU seconds
the tasks themselves spent; modes alternate over ``--repeats`` rounds and the best wall time
of each counts. On a shared machine the task CPU time is the stable figure: wall time minus
task CPU time per worker is waiting (for a core, or on the engine). Reported: scaling efficiency
``T(1) / (2 T(2))`` for each engine, and Ray's overhead ``T(ray-N) / T(local-N)``. Every mode
must write the same pool bytes (checked).

    .venv/bin/python benchmarks/ray_scaling.py --out ray_scaling.json [--repeats 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from corpuslab.compute import RayCompute, local_ray_head  # noqa: E402

Job = tuple[Path, Path, str, str]  # (experiments folder, home, source, shard)

EXPERIMENT = """
sources:
  docstrings: {path: raw/docstrings}
  code: {path: raw/code}
  packages: {path: raw/packages}
recipes:
  dclm:
    sources: [docstrings, code, packages]
    steps:
      - language_id: {languages: [en], min_score: 0.65}
      - gopher_repetition: {}
      - gopher_quality: {min_alpha_words_ratio: 0.6}
      - c4_quality: {filter_no_terminal_punct: false}
      - exact_dedup: {}
      - paragraph_dedup: {}
"""


def shard_work(job: Job) -> tuple[str, float]:
    """Corpus then pool of one shard (what the two per-shard assets run): the pool's digest and
    the CPU seconds the task's process spent on it (a worker runs one task at a time)."""
    from corpuslab.declarations import load_experiment
    from corpuslab.layout import Layout
    from corpuslab.stages.corpus import materialize_corpus_shard
    from corpuslab.stages.pool import materialize_pool_shard

    cpu = time.process_time()
    exp_dir, home, source, shard = job
    exp, layout = load_experiment(exp_dir), Layout(home)
    materialize_corpus_shard(exp, layout, source, shard)
    digest = materialize_pool_shard(exp, layout, "dclm", source, shard)["data_version"]
    return digest, time.process_time() - cpu


def jobs_for(exp_dir: Path, home: Path) -> list[Job]:
    from corpuslab.declarations import load_experiment
    from corpuslab.layout import Layout
    from corpuslab.stages.corpus import source_shards

    exp, layout = load_experiment(exp_dir), Layout(home)
    return [
        (exp_dir, home, source, shard)
        for source in exp.sources
        for shard in sorted(source_shards(exp, layout, source))
    ]


def fresh_home(raw: Path, root: Path, name: str) -> Path:
    home = root / name
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(raw, home / "raw")
    return home


def time_local(workers: int, jobs: list[Job]) -> tuple[float, list[tuple[str, float]]]:
    """A warmed pool of ``workers`` forked processes over every job: (seconds, digests)."""
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        list(pool.map(shard_work, [jobs[0]] * workers))
        t0 = time.perf_counter()
        digests = list(pool.map(shard_work, jobs))
        return time.perf_counter() - t0, digests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--docs-per-shard", type=int, default=100)
    args = parser.parse_args()

    from corpuslab.ingest.democorpus import build_demo_corpus

    load_start = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    try:
        raw = root / "raw"
        build_demo_corpus(
            raw, docs_per_shard=args.docs_per_shard, sources=["docstrings", "code", "packages"]
        )
        exp_dir = root / "exp"
        exp_dir.mkdir()
        (exp_dir / "e.yaml").write_text(textwrap.dedent(EXPERIMENT))
        times: dict[str, list[float]] = {}
        task_cpu: dict[str, list[float]] = {}
        startup: dict[str, list[float]] = {}
        outputs: dict[str, str] = {}

        def record(mode: str, seconds: float, results: list[tuple[str, float]]) -> None:
            times.setdefault(mode, []).append(seconds)
            task_cpu.setdefault(mode, []).append(sum(c for _, c in results))
            outputs[mode] = hashlib.sha256("".join(d for d, _ in results).encode()).hexdigest()

        n_jobs = 0
        for _ in range(args.repeats):
            for workers in (1, 2):
                home = fresh_home(raw, root, f"local-{workers}")
                jobs = jobs_for(exp_dir, home)
                n_jobs = len(jobs)
                seconds, digests = time_local(workers, jobs)
                record(f"local-{workers}", seconds, digests)
            for workers in (1, 2):
                home = fresh_home(raw, root, f"ray-{workers}")
                jobs = jobs_for(exp_dir, home)
                t0 = time.perf_counter()
                with local_ray_head(num_cpus=workers) as head:
                    compute = RayCompute(head.address)
                    compute.connect()
                    t1 = time.perf_counter()
                    compute.map(shard_work, [jobs[0]] * workers)  # start and warm the workers
                    t2 = time.perf_counter()
                    digests = compute.map(shard_work, jobs)
                    t3 = time.perf_counter()
                    compute.close()
                startup.setdefault(f"ray-{workers}", []).append(round(t1 - t0, 2))
                startup.setdefault(f"ray-{workers} first tasks", []).append(round(t2 - t1, 2))
                record(f"ray-{workers}", t3 - t2, digests)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    load_end = os.getloadavg()
    best = {m: min(v) for m, v in times.items()}
    cpu_best = {m: task_cpu[m][times[m].index(best[m])] for m in best}
    same = len(set(outputs.values())) == 1
    eff = {e: best[f"{e}-1"] / (2 * best[f"{e}-2"]) for e in ("local", "ray")}
    overhead = {n: best[f"ray-{n}"] / best[f"local-{n}"] for n in (1, 2)}
    print(f"{n_jobs} shards (corpus + pool each), best of {args.repeats}; same outputs: {same}")
    print("| mode | wall s (best) | task CPU s (that run) | all runs' wall s |")
    print("|---|---:|---:|---|")
    for m in ("local-1", "local-2", "ray-1", "ray-2"):
        runs = ", ".join(f"{t:.2f}" for t in times[m])
        print(f"| {m} | {best[m]:.2f} | {cpu_best[m]:.2f} | {runs} |")
    print(f"scaling efficiency 1->2 workers: local {eff['local']:.2f}, ray {eff['ray']:.2f}")
    print(f"ray / local processes: 1 worker {overhead[1]:.2f}x, 2 workers {overhead[2]:.2f}x")
    print(f"ray start-up (not timed above): {json.dumps(startup)}")
    print(f"load average at start {load_start}, at end {load_end} (2 cores shared)")
    if args.out:
        import ray

        args.out.write_text(
            json.dumps(
                {
                    "command": " ".join(sys.argv),
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                    "load_average_start": load_start,
                    "load_average_end": load_end,
                    "task_cpu_s": task_cpu,
                    "ray": ray.__version__,
                    "shards": n_jobs,
                    "times": times,
                    "best": best,
                    "scaling_efficiency": eff,
                    "ray_over_local": overhead,
                    "startup": startup,
                    "same_outputs": same,
                },
                indent=2,
            )
        )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
