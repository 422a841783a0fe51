"""Evaluation scoring throughput: corpuslab's scorer vs a bare loop over the same forward
passes vs lm-evaluation-harness's evaluator through the adapter, in one process.

Inputs are the built-in suite's multiple-choice tasks, generated from text on this machine:
``signature_docstring`` (C callables' signatures and docstring summaries) and ``next_sentence``
(over the half of the Python language-reference sections the demo holds out), 4 choices each,
0-shot. The model is the demo's run shape (4 layers, d_model 128, 4 heads, 128-token window)
over a byte-level BPE of 4,096 ids trained on the other half of the reference and the stdlib
docstrings; its weights are random (scoring cost does not depend on them).

- ``corpuslab``: :func:`corpuslab.eval.scoring.score_task` per task from strings: prompt
  building, tokenization (a fresh encoder cache each run), packing each context with its four
  continuations into one row, the forward passes, the item metrics;
- ``bare loop``: the same packed rows as ready tensors, and a loop doing only what the
  scorer's forward passes do (hidden states, output head at the predicting positions, the
  target's logit minus the log-sum-exp): the floor for this packing;
- ``unpacked loop``: one padded row per (context, choice), full-width output head and
  log-softmax, as a plain per-request scorer (and lm-eval's HF backend) runs: what packing saves;
- ``lm-eval``: ``lm_eval.simple_evaluate`` on the same items as two local multiple-choice
  tasks (``datasets`` JSON loading, its request building and metrics) with the model behind
  :class:`corpuslab.eval.lm_eval_adapter.CorpuslabLM` (whose log-likelihoods come from the same
  packed scorer).

One torch thread for every system (the machine is shared; small models do not scale across
threads). Systems alternate ``--repeats`` rounds; reported are the best wall time, the median
over rounds of the wall-time ratio to the bare loop *within* a round (same load), and the best
CPU time of the process (single-threaded work: far less sensitive to other jobs on a shared
machine than wall time). Items/s counts items (not choices); tokens/s counts the request tokens
(context + continuation of every choice: what a per-request scorer feeds the model). Target:
corpuslab / bare loop <= 1.2.

Run: ``.venv/bin/python benchmarks/eval_throughput.py --out eval_throughput.json``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup_vs_peers import machine, package_version  # noqa: E402

from corpuslab.eval.scoring import Encoder, _batch_tensors, pack_requests, score_task  # noqa: E402
from corpuslab.eval.suite import (  # noqa: E402
    next_sentence_items,
    reserved,
    signature_docstring_items,
)
from corpuslab.eval.tasks import Item, TaskDecl, prompts  # noqa: E402
from corpuslab.ingest.democorpus import docstring_records, reference_records  # noqa: E402
from corpuslab.lmdata.tokenize import EOS, train_tokenizer  # noqa: E402
from corpuslab.training.model import GPT, GPTConfig  # noqa: E402

BATCH = 32


def setup(tmp: Path, n_items: int) -> tuple[GPT, Path, dict[str, tuple[TaskDecl, list[Item]]]]:
    """The model, its tokenizer and the two tasks (see the module docstring)."""
    refs = list(reference_records())
    held = [(r["id"], r["text"]) for r in refs if reserved(r["id"], 0.5)]
    train_text = [r["text"] for r in refs if not reserved(r["id"], 0.5)]
    train_text += [r["text"] for r in docstring_records()]
    tok_path = tmp / "tokenizer.json"
    tok = train_tokenizer(train_text, 4096, 2, tok_path, eos_token=EOS)
    torch.manual_seed(0)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    model = GPT(GPTConfig(vocab_size=vocab, seq_len=128, n_layer=4, n_head=4, d_model=128)).eval()
    decl = dict(icl_task_type="multiple_choice", random_baseline=0.25, dataset_uri="-")
    tasks = {
        "signature_docstring": (
            TaskDecl(label="sig", continuation_delimiter="\n\n", **decl),
            signature_docstring_items(n_items),
        ),
        "next_sentence": (TaskDecl(label="next", **decl), next_sentence_items(held, n_items)),
    }
    return model, tok_path, tasks


def run_ours(model: GPT, tok_path: Path, tasks: dict) -> float:
    encoder = Encoder.from_file(tok_path)  # a fresh cache: tokenization is part of the cost
    for decl, items in tasks.values():
        score_task(model, encoder, decl, items, 0, BATCH)
    return 0.0


def packed_batches(model: GPT, tok_path: Path, tasks: dict) -> list[tuple]:
    """The scorer's own rows, as ready tensors and gather indices (built outside the timer)."""
    encoder = Encoder.from_file(tok_path)
    out = []
    for decl, items in tasks.values():
        requests = encoder.pairs([p for alts in prompts(decl, items, 0) for p in alts])
        rows = pack_requests(requests, model.config.seq_len)
        rows.sort(key=lambda r: len(r.tokens), reverse=True)
        for start in range(0, len(rows), BATCH):
            chunk = rows[start : start + BATCH]
            ids, pos, mask = _batch_tensors(chunk)
            width = ids.shape[1]
            flat = torch.tensor([b * width + p for b, r in enumerate(chunk) for _, p, _ in r.preds])
            tgt = torch.tensor([t for r in chunk for _, _, t in r.preds])
            out.append((ids, pos, mask, flat, tgt))
    return out


@torch.inference_mode()
def run_bare(model: GPT, batches: list[tuple]) -> float:
    total = 0.0
    for ids, pos, mask, flat, tgt in batches:
        h = model.hidden_states(ids, pos, mask)
        logits = model.lm_head(h.reshape(-1, h.shape[-1])[flat]).float()
        picked = logits.gather(1, tgt[:, None]).squeeze(1)
        total += float((picked - torch.logsumexp(logits, -1)).sum())
    return total


def unpacked_batches(model: GPT, tok_path: Path, tasks: dict) -> list[tuple]:
    """One right-padded row per (context, choice), with its continuation's target positions."""
    encoder = Encoder.from_file(tok_path)
    seq_len = model.config.seq_len
    seqs = []
    for decl, items in tasks.values():
        for req in encoder.pairs([p for alts in prompts(decl, items, 0) for p in alts]):
            full = [*req.context, *req.continuation][-(seq_len + 1) :]
            # a continuation longer than the window keeps its last seq_len tokens here (the
            # scorer scores all of it in chunks; 2 of the 1,600 choices are that long)
            seqs.append((full[:-1], full[1:], min(len(req.continuation), seq_len)))
    seqs.sort(key=lambda s: len(s[0]), reverse=True)
    out = []
    for start in range(0, len(seqs), BATCH):
        chunk = seqs[start : start + BATCH]
        width = max(len(x) for x, _, _ in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        tgt = torch.zeros((len(chunk), width), dtype=torch.long)
        keep = torch.zeros((len(chunk), width), dtype=torch.bool)
        for b, (x, y, n) in enumerate(chunk):
            ids[b, : len(x)] = torch.tensor(x)
            tgt[b, : len(y)] = torch.tensor(y)
            keep[b, len(y) - n : len(y)] = True
        out.append((ids, tgt, keep))
    return out


@torch.inference_mode()
def run_unpacked(model: GPT, batches: list[tuple]) -> float:
    total = 0.0
    for ids, tgt, keep in batches:
        logits, _ = model(ids)
        lp = F.log_softmax(logits.float(), -1).gather(2, tgt[..., None]).squeeze(-1)
        total += float(lp[keep].sum())
    return total


def lm_eval_folder(tmp: Path, tasks: dict) -> Path:
    folder = tmp / "lm_eval_tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (decl, items) in tasks.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(i.to_json("multiple_choice")) + "\n" for i in items))
        (folder / f"{name}.yaml").write_text(
            f"task: bench_{name}\ndataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
            "test_split: test\noutput_type: multiple_choice\n"
            "doc_to_text: query\ndoc_to_choice: choices\ndoc_to_target: gold\n"
            f"target_delimiter: {json.dumps(decl.continuation_delimiter)}\n"
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
        )
    return folder


def run_lm_eval(model: GPT, tok_path: Path, folder: Path, names: list[str]) -> float:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from corpuslab.eval.lm_eval_adapter import CorpuslabLM

    lm = CorpuslabLM(model=model, tokenizer=tok_path, batch_size=BATCH)
    lm_eval.simple_evaluate(
        model=lm,
        tasks=[f"bench_{n}" for n in names],
        task_manager=TaskManager(include_path=str(folder)),
        log_samples=False,
        bootstrap_iters=0,
        verbosity="ERROR",
    )
    return 0.0


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--items", type=int, default=200, help="items per task")
    parser.add_argument("--repeats", type=int, default=3, help="runs per system; best counts")
    parser.add_argument("--skip", action="append", default=[], help="lm-eval and/or unpacked")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        os.environ.setdefault("HF_HOME", str(tmp / "hf"))
        model, tok_path, tasks = setup(tmp, args.items)
        encoder = Encoder.from_file(tok_path)
        n_items = sum(len(items) for _, items in tasks.values())
        requests = [
            r
            for decl, items in tasks.values()
            for r in encoder.pairs([p for alts in prompts(decl, items, 0) for p in alts])
        ]
        request_tokens = sum(len(r.context) + len(r.continuation) for r in requests)
        packed = packed_batches(model, tok_path, tasks)
        unpacked = unpacked_batches(model, tok_path, tasks)
        systems: dict[str, Callable[[], Any]] = {
            "corpuslab": lambda: run_ours(model, tok_path, tasks),
            "bare loop": lambda: run_bare(model, packed),
        }
        if "unpacked" not in args.skip:
            systems["unpacked loop"] = lambda: run_unpacked(model, unpacked)
        if "lm-eval" not in args.skip:
            folder = lm_eval_folder(tmp, tasks)
            systems["lm-eval"] = lambda: run_lm_eval(model, tok_path, folder, list(tasks))
        # agreement: the bare loop sums the very log-likelihoods the scorer reports
        enc2 = Encoder.from_file(tok_path)
        ours_total = sum(
            sum(r["ll"][i] for i in range(len(r["ll"])))
            for decl, items in tasks.values()
            for r in score_task(model, enc2, decl, items, 0, BATCH)
        )
        bare_total = run_bare(model, packed)
        unpacked_total = run_unpacked(model, unpacked)
        for fn in systems.values():  # warm-up: imports, allocator, lm-eval's task index
            fn()
        wall: dict[str, list[float]] = {name: [] for name in systems}
        cpu: dict[str, list[float]] = {name: [] for name in systems}
        for _ in range(args.repeats):
            for name, fn in systems.items():
                w, c = timed(fn)
                wall[name].append(w)
                cpu[name].append(c)
    best = {name: min(t) for name, t in wall.items()}
    best_cpu = {name: min(t) for name, t in cpu.items()}

    def paired(name: str) -> float:
        """Median over rounds of this system's wall time over the bare loop's in that round."""
        ratios = [a / b for a, b in zip(wall[name], wall["bare loop"], strict=True)]
        return float(statistics.median(ratios))

    rows = {
        name: {
            "seconds": best[name],
            "cpu_seconds": best_cpu[name],
            "items_per_s": n_items / best[name],
            "request_tokens_per_s": request_tokens / best[name],
            "vs_bare_loop": best[name] / best["bare loop"],
            "vs_bare_loop_cpu": best_cpu[name] / best_cpu["bare loop"],
            "vs_bare_loop_paired_median": paired(name),
            "all_seconds": wall[name],
            "all_cpu_seconds": cpu[name],
        }
        for name in systems
    }
    result = {
        "machine": machine(),
        "versions": {p: package_version(p) for p in ("torch", "lm-eval", "datasets", "tokenizers")},
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "items": n_items,
        "requests": len(requests),
        "request_tokens": request_tokens,
        "forward_tokens_packed": sum(int(b[0].numel()) for b in packed),
        "forward_tokens_unpacked": sum(int(b[0].numel()) for b in unpacked),
        "loglikelihood_sum": {
            "corpuslab": ours_total,
            "bare": bare_total,
            "unpacked": unpacked_total,
        },  # fmt: skip
        "systems": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{n_items} items ({len(requests)} choices, {request_tokens} request tokens; packed rows "
        f"{result['forward_tokens_packed']} tokens, unpacked {result['forward_tokens_unpacked']})"
    )
    print(
        "| system | best wall s | items/s | request tokens/s | vs bare (best wall) "
        "| vs bare (median paired wall) | best CPU s | vs bare (CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['seconds']:.2f} | {r['items_per_s']:.0f} | "
            f"{r['request_tokens_per_s']:.0f} | {r['vs_bare_loop']:.2f}x | "
            f"{r['vs_bare_loop_paired_median']:.2f}x | {r['cpu_seconds']:.2f} | "
            f"{r['vs_bare_loop_cpu']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
