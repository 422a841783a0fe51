"""The training loop: DeepSpeed engine, resume, DoReMi's proxy, LAWA and the run summary.

Orchestration-agnostic: the entry point (``infra/entrypoints/train.py``) loads a
:class:`~corpuslab.training.runspec.RunSpec` and passes a reporter callback; nothing here knows
who launched it. Runs under torchrun with DeepSpeed on CPU (``DS_ACCELERATOR=cpu``, gloo) or on
GPUs with the same code.

The optimizer is a client ``torch.optim.AdamW`` handed to ``deepspeed.initialize``: DeepSpeed's
own Adam (an ``"optimizer"`` section without ``"torch_adam": true``) is FusedAdam or CPUAdam,
which are C++/CUDA ops that DeepSpeed JIT-compiles on first use.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import torch

from corpuslab.eval.bpb import sequence_loss
from corpuslab.fileio import atomic_path, write_json
from corpuslab.lmdata.tokenfile import TokenFile
from corpuslab.progress import EVERY_S
from corpuslab.training import checkpoints as ckpt
from corpuslab.training import store as run_store
from corpuslab.training.data import BatchSampler, DomainBalancedSampler, get_batch
from corpuslab.training.deepspeed import (
    comm_backend,
    ensure_distributed_env,
    fill_deepspeed_config,
    skip_cpu_shm_comm_build,
)
from corpuslab.training.doremi import GroupDRO, initial_alpha, load_reference
from corpuslab.training.mfu import optimizer_state_numel, peak_flops_per_device
from corpuslab.training.model import GPT, GPTConfig, inherit_weights
from corpuslab.training.optim import AdaGC, optimizer_groups
from corpuslab.training.runspec import (
    DoReMiSpec,
    InitFrom,
    ModelDims,
    RunSpec,
    fingerprint_differences,
    make_plan,
    resume_fingerprint,
)
from corpuslab.training.schedule import get_lr
from corpuslab.training.tracking import MlflowLogger

Reporter = Callable[[int, dict[str, float]], None]
log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
DOREMI_REPORT = "doremi.json"  # a DoReMi proxy's weights, trajectory and per-domain losses


@runtime_checkable
class _ParamGroups(Protocol):
    """What the loop needs of the engine's optimizer (torch's, or DeepSpeed's ZeRO wrapper)."""

    @property
    def param_groups(self) -> list[dict[str, Any]]: ...


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or a loss spike)."""


class ResumeError(RuntimeError):
    """``out_dir`` holds a checkpoint of a run that differs from the spec in what it trains."""


def _group_dro(dcfg: DoReMiSpec, mc: ModelDims, data: TokenFile, device: Any) -> GroupDRO:
    """DoReMi's proxy state: the reference model and the weights over the file's domains."""
    reference = load_reference(dcfg.reference_run_dir, device)
    rc = reference.config
    if rc.vocab_size != mc.vocab_size or rc.seq_len < mc.seq_len:
        raise ValueError(
            f"DoReMi reference {dcfg.reference_run_dir} (vocab {rc.vocab_size}, seq_len "
            f"{rc.seq_len}) does not fit the proxy (vocab {mc.vocab_size}, seq_len {mc.seq_len})"
        )
    domains = list(data.meta.domains)
    return GroupDRO(
        reference=reference,
        domains=domains,
        eta=dcfg.eta,
        smoothing=dcfg.smoothing,
        alpha=initial_alpha(domains, dcfg.initial_weights),
    )


def _inherit(model: GPT, init: InitFrom) -> list[str]:
    """Load a parent run and copy its first blocks into ``model`` (Inheritune)."""
    parent = Path(init.run_dir)
    pcfg = GPTConfig(**json.loads((parent / "model_config.json").read_text()))
    state = torch.load(parent / "model.pt", map_location="cpu", weights_only=True)
    return inherit_weights(model, state, pcfg, init.layers)


def resume_point(
    spec: RunSpec, world_size: int, data: TokenFile | None = None
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(filled DeepSpeed config, resume fingerprint, checkpoint tag to resume from or None).

    Raises :class:`ResumeError` naming every differing field when ``out_dir`` holds a
    checkpoint whose training-relevant settings (model, optimization, data, DeepSpeed config,
    world size; not logging, checkpoint cadence or the spike guard) differ from ``spec``.
    """
    data = data or TokenFile.open(spec.tokens_dir)
    template = json.loads(Path(spec.deepspeed_config).read_text())
    ds_config = fill_deepspeed_config(template, spec, world_size=world_size)
    fingerprint = resume_fingerprint(spec, ds_config, asdict(data.meta), world_size)
    ckpt_dir = Path(spec.out_dir) / CHECKPOINTS
    tag = ckpt.latest_tag(ckpt_dir)
    if tag is not None:
        saved = ckpt.read_run_info(ckpt_dir / tag)["fingerprint"]
        diffs = fingerprint_differences(saved, fingerprint)
        if diffs:
            raise ResumeError(
                f"{ckpt_dir / tag} belongs to a different run than spec {spec.name!r}; use "
                "another out_dir or restore the spec. Differences: " + "; ".join(diffs)
            )
    return ds_config, fingerprint, tag


def train(spec: RunSpec, reporter: Reporter | None = None) -> dict[str, Any]:
    """Train ``spec``'s model with DeepSpeed and return the run summary.

    Must run under torchrun (or as a single plain process). Resumes from the checkpoint that
    ``out_dir/checkpoints/latest`` names when the spec matches it (else :class:`ResumeError`
    lists what differs). Rank 0 reports metrics every ``log_every`` steps to ``reporter`` and
    MLflow and, at the end, writes ``model.pt`` (final fp32 weights), ``model_lawa.pt`` (with
    ``lawa_k``), ``model_config.json`` and ``summary.json`` under ``out_dir``. Raises
    :class:`TrainingError` on a non-finite loss or a declared loss spike, before any checkpoint
    of that step is written.
    """
    import deepspeed
    import torch.distributed as dist

    tc = spec.train
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    ensure_distributed_env()
    skip_cpu_shm_comm_build()
    deepspeed.init_distributed(dist_backend=comm_backend(), verbose=False)
    rank, world = dist.get_rank(), dist.get_world_size()
    if spec.store is not None:  # an s3:// home: each machine's first rank brings what it reads
        if int(os.environ.get("LOCAL_RANK", rank)) == 0:
            got = run_store.pull_inputs(spec)
            log.info("run %s: %s", spec.name, got.describe("pulled"))
        dist.barrier()

    data = TokenFile.open(spec.tokens_dir)
    mc = spec.model
    if mc.seq_len > data.meta.seq_len:
        raise ValueError(f"model seq_len={mc.seq_len} > token file seq_len={data.meta.seq_len}")
    if mc.vocab_size < data.meta.vocab_size:
        raise ValueError(f"model vocab_size={mc.vocab_size} < tokenizer's {data.meta.vocab_size}")
    n_train = len(data) - tc.heldout_sequences
    if n_train < 1:
        raise ValueError(f"heldout_sequences={tc.heldout_sequences} leaves no training rows")
    plan = make_plan(spec, world)
    out = Path(spec.out_dir)
    ckpt_dir = out / CHECKPOINTS
    ds_config, fingerprint, resume_tag = resume_point(spec, world, data)
    dist.barrier()  # every rank has read latest before rank 0 cleans up
    if rank == 0:
        ckpt.remove_stale(ckpt_dir)

    torch.manual_seed(tc.seed)
    model = GPT(GPTConfig.from_dims(mc))
    inherited: list[str] = []
    if spec.init_from is not None and resume_tag is None:
        inherited = _inherit(model, spec.init_from)
    # Counted before DeepSpeed wraps the model: ZeRO-3 leaves each rank only a shard.
    num_params, flops_per_token = model.num_params(), mc.flops_per_token()
    groups = optimizer_groups(model, tc.weight_decay)
    if "optimizer" in ds_config:  # the config asked for DeepSpeed's optimizer: let it build one
        # deepspeed annotates model_parameters as a Module, but documents and iterates it as
        # what it is: tensors or param-group dicts
        params = cast(Any, groups)
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    else:
        optimizer = torch.optim.AdamW(
            groups, lr=get_lr(0, tc, plan.steps), betas=tc.betas, eps=tc.eps
        )
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    device = engine.device
    net, engine_optimizer = engine.module, engine.optimizer
    assert isinstance(net, GPT), "deepspeed.initialize wraps the GPT it was given in place"
    assert isinstance(engine_optimizer, _ParamGroups), "initialize was given or built one"
    adagc = None
    if tc.adagc is not None:
        adagc = AdaGC(tc.adagc, [p for p in net.parameters() if p.requires_grad], tc.grad_clip)

    dro = _group_dro(spec.doremi, mc, data, device) if spec.doremi is not None else None
    row_domains = np.asarray(data.domains()) if dro is not None else None
    n_domains = len(data.meta.domains)

    start_step, first_loss = 0, float("nan")
    window: collections.deque[float] = collections.deque(maxlen=tc.spike_window)
    if resume_tag is not None:
        client, rank_state = ckpt.load_checkpoint(engine, ckpt_dir, resume_tag)
        start_step, first_loss = int(client["step"]), float(client["initial_loss"])
        window.extend(client["loss_window"])
        if adagc is not None:
            adagc.load_state_dict(client["adagc"])
        if dro is not None:
            dro.load_state_dict(client["doremi"])
        ckpt.set_rng_state(rank_state["rng"])

    if dro is None:
        sampler = BatchSampler(
            n_train, plan.micro_batch_size, plan.grad_accum_steps, world, tc.seed
        )
    else:
        assert row_domains is not None, "read with dro, above"
        sampler = DomainBalancedSampler(
            row_domains[:n_train], plan.micro_batch_size, plan.grad_accum_steps, world, tc.seed
        )
    accum = plan.grad_accum_steps
    peak, peak_source = peak_flops_per_device(tc)
    tracker = MlflowLogger(spec.mlflow_tracking_uri, spec.mlflow_run_id) if rank == 0 else None
    uploader = None
    if rank == 0 and spec.store is not None:
        uploader = run_store.CheckpointUploader(spec)
    last_saved = start_step if resume_tag is not None else -1

    def save(step: int) -> dict[str, torch.Tensor]:
        client_state = {
            "step": step,
            "initial_loss": first_loss,
            "loss_window": list(window),
            "adagc": adagc.state_dict() if adagc is not None else None,
            "doremi": dro.state_dict() if dro is not None else None,
        }
        rank_state = {
            "rng": ckpt.rng_state(),
            "data": {
                "next_step": step,
                "rows_consumed": step * sampler.global_batch,
                "seed": tc.seed,
                "n_rows": n_train,
            },
        }
        info = {"step": step, "fingerprint": fingerprint, "spec": spec.model_dump(mode="json")}
        if uploader is not None:  # one push in flight: it never sees a save or a rotation
            uploader.wait()
        state = ckpt.save_checkpoint(
            engine, ckpt_dir, step, client_state, rank_state, info, keep=tc.keep_checkpoints
        )
        if uploader is not None:  # the store gets the checkpoint while training goes on
            uploader.submit()
        return state

    engine.train()
    loss_value = window[-1] if window else float("nan")
    start = last_log_t = last_report = time.perf_counter()
    last_log_step = start_step
    try:
        for step in range(start_step, plan.steps):
            lr = get_lr(step, tc, plan.steps)
            for group in engine_optimizer.param_groups:
                group["lr"] = lr
            rows = sampler.rank_rows(step, rank)
            sums = torch.zeros(2, dtype=torch.float64, device=device)  # (loss, z-term)
            clipped_frac = None
            if dro is not None:
                assert row_domains is not None, "read with dro"
                counts = np.bincount(row_domains[sampler.global_rows(step)], minlength=n_domains)
                dro.begin_step(torch.from_numpy(counts * mc.seq_len))
            for m in range(accum):
                x, y = get_batch(data.tokens, rows[m], mc.seq_len)
                if dro is None:
                    _, loss = engine(x.to(device), y.to(device), z_loss=tc.z_loss)
                    sums[0] += loss.detach()
                    if net.last_z_loss is not None:
                        sums[1] += net.last_z_loss
                else:  # DoReMi proxy: the loss is domain-weighted, the logged loss is not
                    assert row_domains is not None, "read with dro"
                    doms = torch.from_numpy(row_domains[np.sort(rows[m])].astype(np.int64))
                    loss, ce, z = dro.loss(
                        engine, x.to(device), y.to(device), doms, tc.z_loss, accum * world
                    )
                    sums[0] += ce + z
                    sums[1] += z
                engine.backward(loss)  # DeepSpeed divides by the accumulation steps itself
                if adagc is not None and m == accum - 1:
                    clipped_frac = adagc.clip(engine, step)
                engine.step()  # the optimizer steps only at the accumulation boundary
            if dro is not None:
                dro.end_step(world, device)
            if world > 1:  # every rank sees the same values, so all stop together
                dist.all_reduce(sums)
            total_loss, z_value = (sums / (accum * world)).tolist()
            loss_value = total_loss - z_value  # the cross-entropy alone
            done = step + 1
            if not math.isfinite(total_loss):
                raise TrainingError(
                    f"non-finite loss {total_loss} at step {done} of {spec.name}; last good "
                    f"checkpoint: {ckpt.latest_tag(ckpt_dir) or 'none'}"
                )
            if (
                tc.spike_factor is not None
                and step >= tc.warmup_steps
                and len(window) == tc.spike_window
                and loss_value > tc.spike_factor * (mean := sum(window) / len(window))
            ):
                raise TrainingError(
                    f"loss spike at step {done} of {spec.name}: loss {loss_value:.4f} > "
                    f"{tc.spike_factor} x {mean:.4f} (mean of the previous {len(window)} steps); "
                    f"last good checkpoint: {ckpt.latest_tag(ckpt_dir) or 'none'}"
                )
            window.append(loss_value)
            if step == 0:
                first_loss = loss_value
            if rank == 0 and (done % tc.log_every == 0 or done == plan.steps):
                now = time.perf_counter()
                tokens_per_s = (done - last_log_step) * plan.tokens_per_step / (now - last_log_t)
                metrics = {
                    "loss": loss_value,
                    "lr": lr,
                    "tokens_per_s": tokens_per_s,
                    "mfu": flops_per_token * tokens_per_s / (peak * world),
                    "tokens_seen": float(done * plan.tokens_per_step),
                    # ZeRO skips an update whose gradients hold inf/NaN, even in fp32: count them.
                    "skipped_steps": float(engine.skipped_steps),
                }
                if tc.z_loss > 0:
                    metrics["z_loss"] = z_value
                grad_norm = engine.get_global_grad_norm()
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                if clipped_frac is not None:
                    metrics["adagc_clipped_fraction"] = clipped_frac
                if dro is not None:
                    metrics |= dro.metrics()
                last_log_t = last_report = now
                last_log_step = done
                if reporter is not None:
                    reporter(done, metrics | _progress(done, plan.steps, start_step, start))
                if tracker is not None:  # rank 0 has one
                    tracker.log(done, metrics)
            elif (
                rank == 0 and reporter is not None and time.perf_counter() - last_report >= EVERY_S
            ):
                # between metric reports, a progress line at least every EVERY_S seconds
                last_report = time.perf_counter()
                reporter(
                    done, {"loss": loss_value} | _progress(done, plan.steps, start_step, start)
                )
            if tc.checkpoint_every and done % tc.checkpoint_every == 0 and done < plan.steps:
                save(done)
                last_saved = done
        wall_s = time.perf_counter() - start
        steps_here = plan.steps - start_step
        final_state = save(plan.steps) if last_saved != plan.steps else None
    finally:
        if tracker is not None:
            tracker.close()
        if uploader is not None:  # a failing run still leaves its last checkpoint in the store
            uploader.wait(raise_errors=False)

    if final_state is None:  # resumed from the final checkpoint: nothing left to train
        final_state = torch.load(
            ckpt_dir / ckpt.tag_for(plan.steps) / ckpt.MODEL, map_location="cpu", weights_only=True
        )
    summary: dict[str, Any] = {
        "run": spec.name,
        "final_loss": loss_value,
        "initial_loss": first_loss,
        "tokens_seen": plan.total_tokens,
        "tokens_per_s": steps_here * plan.tokens_per_step / wall_s if steps_here else 0.0,
        "steps": plan.steps,
        "resumed_from_step": start_step if resume_tag is not None else None,
        "skipped_steps": engine.skipped_steps,
        "num_params": num_params,
        "flops_per_token": flops_per_token,
        "peak_flops_per_device": peak,
        "peak_flops_source": peak_source,
        "world_size": world,
        "micro_batch_size": plan.micro_batch_size,
        "grad_accum_steps": accum,
        "global_batch_tokens": plan.tokens_per_step,
        "zero_stage": engine.zero_optimization_stage(),
        "wall_s": wall_s,
        "inherited_tensors": inherited,
    }
    summary["mfu"] = flops_per_token * summary["tokens_per_s"] / (peak * world)
    numel = torch.tensor([optimizer_state_numel(engine)], dtype=torch.int64)
    gathered = [torch.zeros_like(numel) for _ in range(world)]
    dist.all_gather(gathered, numel)
    summary["optimizer_state_numel_per_rank"] = [int(t) for t in gathered]
    if dro is not None:
        summary["doremi_weights"] = dict(zip(dro.domains, dro.average, strict=True))
    if rank == 0:
        if dro is not None:
            write_json(dro.report(), out / DOREMI_REPORT)
        _finish(spec, out, ckpt_dir, final_state, data, n_train, summary)
        if uploader is not None:  # final weights, then summary.json: the run is done
            uploader.submit()
            uploader.wait()
    dist.barrier()
    return summary


def _progress(done: int, steps: int, start_step: int, start: float) -> dict[str, float]:
    """Steps done and planned, and the seconds left at this run's pace (for progress lines)."""
    elapsed = time.perf_counter() - start
    rate = (done - start_step) / elapsed if elapsed > 0 else 0.0
    eta_s = (steps - done) / rate if rate > 0 else float("nan")
    return {"step": float(done), "steps": float(steps), "eta_s": eta_s}


def _finish(
    spec: RunSpec,
    out: Path,
    ckpt_dir: Path,
    final_state: dict[str, torch.Tensor],
    data: TokenFile,
    n_train: int,
    summary: dict[str, Any],
) -> None:
    """Rank 0: write the final and LAWA weights, their held-out losses and the summary."""
    tc = spec.train
    with atomic_path(out / "model.pt") as tmp:
        torch.save(final_state, tmp)
    write_json(asdict(GPTConfig.from_dims(spec.model)), out / "model_config.json")
    heldout = data.tokens[n_train:, : spec.model.seq_len + 1]
    model = GPT(GPTConfig.from_dims(spec.model))
    if len(heldout):
        model.load_state_dict(final_state)
        summary["heldout_loss"] = sequence_loss(model, heldout)
        summary["heldout_sequences"] = len(heldout)
    if tc.lawa_k:
        tags = ckpt.complete_tags(ckpt_dir)[-tc.lawa_k :]
        lawa = ckpt.average_checkpoints([ckpt_dir / t for t in tags])
        with atomic_path(out / "model_lawa.pt") as tmp:
            torch.save(lawa, tmp)
        summary["lawa_checkpoints"] = tags
        if len(heldout):
            model.load_state_dict(lawa)
            summary["heldout_loss_lawa"] = sequence_loss(model, heldout)
    write_json(summary, out / "summary.json")
