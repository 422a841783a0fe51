"""Training tokens/s: the project's trainer against a bare DeepSpeed loop and a plain PyTorch loop.

Same GPT (~7M parameters), same real data (Python's help topics and standard-library
docstrings, BPE-encoded here), same batch, z-loss, clipping, lr schedule and threads in every
loop, one rank on CPU (DeepSpeed with gloo, fp32):

- ``trainer-zeroN``: ``corpuslab.training.loop.train`` as a run uses it: token file on disk, batch
  sampler, z-loss, the reporter on every ``--log-every`` steps and MLflow step metrics into a
  SQLite store in a temp folder; ZeRO stage N from ``infra/deepspeed/zeroN.json``.
- ``bare-zeroN``: the same filled DeepSpeed config and client AdamW, a loop with nothing else
  (batches pre-built in memory, no logging, no loss read-back).
- ``plain``: ``torch.optim.AdamW`` and ``clip_grad_norm_``, no DeepSpeed.

Each (mode, repeat) runs in a fresh process, modes interleaved per repeat; tokens/s is timed
over the steps after ``--warmup`` (the trainer's through its reporter's timestamps; the final
checkpoint and the start-up are outside the window), both by the wall clock and by the
process's CPU time. On a machine other processes share, the CPU-time rate is the one that
isolates each loop's own cost (with one thread, waiting for a core is not counted; the MLflow
thread's work is). Reports the median per mode and the ratios trainer/bare and trainer/plain.

    .venv/bin/python benchmarks/train_throughput.py --out results.json [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODES = (
    "plain", "bare-zero1", "trainer-zero1", "bare-zero2", "trainer-zero2", "bare-zero3",
    "trainer-zero3",
)  # fmt: skip
SEQ_LEN = 128
VOCAB = 4096
DIMS = {"n_layer": 8, "n_head": 8, "d_model": 256}


def build_tokens(root: Path) -> Path:
    """A token directory from Python's help topics and stdlib docstrings (real English + code)."""
    import pydoc
    import sys as _sys
    from pydoc_data.topics import topics

    import numpy as np

    from corpuslab.lmdata.tokenfile import write_token_file
    from corpuslab.lmdata.tokenize import EOS, train_tokenizer

    texts = [topics[k] for k in sorted(topics)]
    for name in sorted(_sys.stdlib_module_names):
        if name.startswith("_") or name in {"antigravity", "this", "idlelib", "tkinter", "turtle"}:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated modules say so on import
                module = __import__(name)
        except Exception:  # modules that need a platform or a display
            continue
        doc = pydoc.getdoc(module)
        if len(doc) > 200:
            texts.append(doc)
    tok = train_tokenizer(texts, VOCAB, 0, root / "tokenizer.json")
    eos = tok.token_to_id(EOS)
    ids = [i for enc in tok.encode_batch(texts) for i in [*enc.ids, eos]]
    n = len(ids) // (SEQ_LEN + 1)
    rows = np.array(ids[: n * (SEQ_LEN + 1)]).reshape(n, SEQ_LEN + 1)
    rows = rows[np.random.default_rng(0).permutation(n)]
    domains = np.zeros(n, dtype=np.int64)
    vocab = tok.get_vocab_size()
    write_token_file(root / "tokens", rows, domains, vocab, eos, ["all"], root / "tokenizer.json")
    return root / "tokens"


def make_spec(args: argparse.Namespace, stage: int, out_dir: Path, tokens: Path) -> Any:
    from corpuslab.training.runspec import ModelDims, RunSpec, TrainConfig

    return RunSpec(
        name="bench",
        tokens_dir=tokens,
        out_dir=out_dir,
        model=ModelDims(vocab_size=VOCAB, seq_len=SEQ_LEN, **DIMS),
        train=TrainConfig(
            steps=args.warmup + args.steps,
            micro_batch_size=args.micro,
            grad_accum_steps=args.accum,
            lr=1e-3,
            min_lr=1e-4,
            warmup_steps=args.warmup,
            z_loss=1e-4,
            grad_clip=1.0,
            log_every=args.log_every,
            checkpoint_every=0,
            threads=args.threads,
            seed=0,
        ),
        deepspeed_config=REPO / "infra" / "deepspeed" / f"zero{stage}.json",
    )


def run_trainer(args: argparse.Namespace, stage: int, tmp: Path, tokens: Path) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from corpuslab.training.loop import train

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("bench")).info.run_id
    spec = make_spec(args, stage, tmp / "run", tokens).model_copy(
        update={"mlflow_tracking_uri": uri, "mlflow_run_id": run_id}
    )
    stamps: dict[int, tuple[float, float]] = {}

    def reporter(step: int, metrics: dict[str, float]) -> None:
        stamps[step] = (time.perf_counter(), time.process_time())
        print(json.dumps({"step": step, **metrics}), file=sys.stderr, flush=True)

    summary = train(spec, reporter)
    end = args.warmup + args.steps
    wall = stamps[end][0] - stamps[args.warmup][0]
    cpu = stamps[end][1] - stamps[args.warmup][1]
    result = rates(args, wall, cpu, summary["final_loss"])
    result["mlflow_points"] = len(client.get_metric_history(run_id, "loss"))
    return result


def rates(args: argparse.Namespace, wall: float, cpu: float, loss: float) -> dict[str, Any]:
    tokens = args.steps * tokens_per_step(args)
    return {"tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu, "final_loss": loss}


def tokens_per_step(args: argparse.Namespace) -> int:
    return args.micro * args.accum * SEQ_LEN


def _batches(args: argparse.Namespace, tokens: Path) -> list[list[tuple[Any, Any]]]:
    """Every step's micro-batches, built up front: the same rows the trainer reads."""
    from corpuslab.lmdata.tokenfile import TokenFile
    from corpuslab.training.loop import BatchSampler, get_batch

    data = TokenFile.open(tokens)
    sampler = BatchSampler(len(data), args.micro, args.accum, 1, seed=0)
    steps = args.warmup + args.steps
    return [
        [get_batch(data.tokens, sampler.rank_rows(s, 0)[m], SEQ_LEN) for m in range(args.accum)]
        for s in range(steps)
    ]


def run_bare(args: argparse.Namespace, stage: int, tokens: Path) -> dict[str, Any]:
    import deepspeed
    import torch

    from corpuslab.training.deepspeed import (
        ensure_distributed_env,
        fill_deepspeed_config,
        skip_cpu_shm_comm_build,
    )
    from corpuslab.training.model import GPT, GPTConfig
    from corpuslab.training.optim import optimizer_groups
    from corpuslab.training.schedule import get_lr

    spec = make_spec(args, stage, Path(tempfile.gettempdir()), tokens)
    torch.set_num_threads(args.threads)
    ensure_distributed_env()
    skip_cpu_shm_comm_build()
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    template = json.loads(spec.deepspeed_config.read_text())
    config = fill_deepspeed_config(template, spec, world_size=1)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dims(spec.model))
    groups = optimizer_groups(model, spec.train.weight_decay)
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    batches = _batches(args, tokens)
    engine.train()
    start = start_cpu = 0.0
    for step, micro in enumerate(batches):
        if step == args.warmup:
            start, start_cpu = time.perf_counter(), time.process_time()
        for group in engine.optimizer.param_groups:
            group["lr"] = get_lr(step, spec.train)
        last_ce = []  # the final step's cross-entropy, as the trainer reports it
        for x, y in micro:
            _, loss = engine(x, y, z_loss=1e-4)
            engine.backward(loss)
            engine.step()
            last_ce.append(loss.detach() - engine.module.last_z_loss)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return rates(args, wall, cpu, float(sum(last_ce)) / len(last_ce))


def run_plain(args: argparse.Namespace, tokens: Path) -> dict[str, Any]:
    import torch

    from corpuslab.training.loop import optimizer_groups
    from corpuslab.training.model import GPT, GPTConfig
    from corpuslab.training.schedule import get_lr

    spec = make_spec(args, 1, Path(tempfile.gettempdir()), tokens)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dims(spec.model))
    groups = optimizer_groups(model, spec.train.weight_decay)
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))
    batches = _batches(args, tokens)
    model.train()
    start = start_cpu = 0.0
    for step, micro in enumerate(batches):
        if step == args.warmup:
            start, start_cpu = time.perf_counter(), time.process_time()
        for group in opt.param_groups:
            group["lr"] = get_lr(step, spec.train)
        last_ce = []  # the final step's cross-entropy, as the trainer reports it
        for x, y in micro:
            _, loss = model(x, y, z_loss=1e-4)
            (loss / args.accum).backward()
            last_ce.append(loss.detach() - model.last_z_loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return rates(args, wall, cpu, float(sum(last_ce)) / len(last_ce))


def worker(args: argparse.Namespace) -> None:
    tokens = Path(args.tokens)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if args.worker == "plain":
            result = run_plain(args, tokens)
        elif args.worker.startswith("bare-zero"):
            result = run_bare(args, int(args.worker[-1]), tokens)
        else:
            result = run_trainer(args, int(args.worker[-1]), Path(tmp), tokens)
    print("RESULT " + json.dumps(result), flush=True)


def machine() -> dict[str, Any]:
    versions = {p: importlib.metadata.version(p) for p in ("torch", "deepspeed", "mlflow")}
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **versions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5, help="steps excluded from timing")
    parser.add_argument("--steps", type=int, default=40, help="timed steps")
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    if args.warmup % args.log_every or args.steps % args.log_every:
        parser.error("--warmup and --steps must be multiples of --log-every")
    modes = args.modes.split(",")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    env = os.environ | {"DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="bench-tokens-") as tmp:
        tokens = build_tokens(Path(tmp))
        for repeat in range(args.repeats):
            order = modes[repeat % len(modes) :] + modes[: repeat % len(modes)]  # rotate
            for mode in order:
                cmd = [sys.executable, __file__, "--worker", mode, "--tokens", str(tokens)]
                for flag in ("warmup", "steps", "micro", "accum", "threads", "log_every"):
                    cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not lines:
                    sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
                result = json.loads(lines[0].removeprefix("RESULT "))
                runs[mode].append(result)
                wall, cpu = result["tokens_per_s"], result["tokens_per_cpu_s"]
                print(
                    f"repeat {repeat} {mode:14s} {wall:8.0f} tokens/s {cpu:8.0f} tokens/cpu-s",
                    flush=True,
                )
    report = {
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: getattr(args, k) for k in SETTINGS}
        | {"seq_len": SEQ_LEN, "vocab": VOCAB, **DIMS, "tokens_per_step": tokens_per_step(args)},
        "runs": runs,
    }
    for key in ("tokens_per_s", "tokens_per_cpu_s"):
        median = {m: statistics.median(r[key] for r in rs) for m, rs in runs.items()}
        report[f"median_{key}"] = median
        report[f"ratios_{key}"] = ratios(median)
    summary = {k: v for k, v in report.items() if k.startswith(("median", "ratios"))}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


SETTINGS = ("repeats", "warmup", "steps", "micro", "accum", "threads", "log_every")


def ratios(median: dict[str, float]) -> dict[str, float]:
    """trainer / bare and trainer / plain (and bare / plain) per ZeRO stage, where measured."""
    out = {}
    for stage in (1, 2, 3):
        t, b = f"trainer-zero{stage}", f"bare-zero{stage}"
        for num, den in ((t, b), (t, "plain"), (b, "plain")):
            if num in median and den in median:
                out[f"{num} / {den}"] = median[num] / median[den]
    return out


if __name__ == "__main__":
    main()
