"""Training library: typed run specs, the lr schedule, DeepSpeed config filling and the loop.

Orchestration-agnostic: the entry point (``infra/entrypoints/train.py``) loads a :class:`RunSpec`
and passes a reporter callback; nothing here knows who launched it. Runs under torchrun with
DeepSpeed on CPU (``DS_ACCELERATOR=cpu``, gloo, fp32) or on GPUs with the same code.

The optimizer is a client ``torch.optim.AdamW`` handed to ``deepspeed.initialize``: DeepSpeed's
own Adam (an ``"optimizer"`` section without ``"torch_adam": true``) is FusedAdam or CPUAdam,
which are C++/CUDA ops that DeepSpeed JIT-compiles on first use.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from corpuslab.layout import atomic_path
from corpuslab.model import GPT, GPTConfig
from corpuslab.tokenfile import TokenFile

Reporter = Callable[[int, dict[str, float]], None]
AUTO = "auto"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


class TrainConfig(BaseModel):
    """Optimization settings of one run; batch sizes are per rank (micro) and per step (accum)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    steps: int = Field(100, ge=1, description="optimizer steps")
    micro_batch_size: int = Field(8, ge=1, description="sequences per rank per forward pass")
    grad_accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    min_lr: float = Field(1e-4, ge=0, description="lr at the end of the cosine decay")
    warmup_steps: int = Field(10, ge=0, description="linear warmup length in steps")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decay on matrices only")
    grad_clip: float = Field(1.0, ge=0, description="global gradient-norm clip; 0 disables")
    seed: int = 1337
    log_every: int = Field(10, ge=1, description="steps between metric reports")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0: end only")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads per rank")

    @model_validator(mode="after")
    def _check_lr(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} exceeds lr={self.lr}")
        return self


class RunSpec(BaseModel):
    """Everything one training process needs; written as JSON and passed to the entry point."""

    model_config = ConfigDict(extra="forbid")

    name: str
    tokens_dir: Path
    out_dir: Path
    model: GPTConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    deepspeed_config: Path
    mlflow_tracking_uri: str | None = None
    mlflow_run_id: str | None = None  # an existing run to log into; runs are never created here


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Learning rate of 0-based ``step``: linear warmup to ``lr``, cosine decay to ``min_lr``.

    Warmup reaches the peak at step ``warmup_steps - 1``; the decay starts at the peak at step
    ``warmup_steps`` and lands exactly on ``min_lr`` at the last step ``steps - 1``.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = cfg.steps - 1 - cfg.warmup_steps
    if decay_steps <= 0:
        return cfg.lr
    ratio = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def _find_autos(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every value still equal to ``"auto"`` in a nested config."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _find_autos(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == AUTO else []


def fill_deepspeed_config(template: dict, spec: RunSpec, world_size: int = 1) -> dict:
    """A copy of a DeepSpeed config with its ``"auto"`` fields filled from the run spec.

    Explicit values in the template win over the spec; the three batch sizes must then agree
    (``train_batch_size == micro * accum * world_size``), otherwise this raises ``ValueError``
    rather than letting DeepSpeed fail later with a less clear message.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    cfg = copy.deepcopy(template)
    tc = spec.train

    def take(key: str, default: Any) -> Any:
        value = cfg.get(key, AUTO)
        cfg[key] = default if value == AUTO else value
        return cfg[key]

    micro = take("train_micro_batch_size_per_gpu", tc.micro_batch_size)
    accum = take("gradient_accumulation_steps", tc.grad_accum_steps)
    total = take("train_batch_size", micro * accum * world_size)
    if total != micro * accum * world_size:
        raise ValueError(
            f"DeepSpeed config contradicts itself: train_batch_size={total} but "
            f"train_micro_batch_size_per_gpu={micro} x gradient_accumulation_steps={accum} x "
            f"world_size={world_size} = {micro * accum * world_size}"
        )
    take("gradient_clipping", tc.grad_clip)
    params = cfg.get("optimizer", {}).get("params")
    if isinstance(params, dict):
        for key, value in (("lr", tc.lr), ("weight_decay", tc.weight_decay)):
            if params.get(key) == AUTO:
                params[key] = value
    left = _find_autos(cfg)
    if left:
        raise ValueError(f"DeepSpeed config has 'auto' fields the run spec cannot fill: {left}")
    return cfg


class BatchSampler:
    """Deterministic row order: each step takes the next ``global_batch`` rows of a stream.

    The stream concatenates one seeded permutation of all rows per epoch, so the rows of a step
    depend only on (seed, step, global batch), not on the world size. A step's rows are laid
    out as (accum, world, micro) and rank ``r`` takes ``[:, r, :]``: the ranks' slices are
    disjoint and together cover the global batch.
    """

    def __init__(self, n_rows: int, micro: int, accum: int, world_size: int, seed: int) -> None:
        if n_rows < 1:
            raise ValueError("the token file has no sequences")
        self.n_rows = n_rows
        self.micro, self.accum, self.world_size = micro, accum, world_size
        self.global_batch = micro * accum * world_size
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {
                epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
            }
        return self._perms[epoch]

    def global_rows(self, step: int) -> np.ndarray:
        """Row indices of the whole global batch of ``step`` (0-based), in stream order."""
        positions = np.arange(step * self.global_batch, (step + 1) * self.global_batch)
        rows = np.empty(self.global_batch, dtype=np.int64)
        for epoch in np.unique(positions // self.n_rows):
            mask = positions // self.n_rows == epoch
            rows[mask] = self._perm(int(epoch))[positions[mask] % self.n_rows]
        return rows

    def rank_rows(self, step: int, rank: int) -> np.ndarray:
        """Rows for ``rank`` at ``step``, shape (accum, micro): one line per micro-batch."""
        grid = self.global_rows(step).reshape(self.accum, self.world_size, self.micro)
        return grid[:, rank, :]


def get_batch(tokens: np.ndarray, rows: np.ndarray, seq_len: int) -> tuple[torch.Tensor, ...]:
    """Inputs and targets (each (len(rows), seq_len), int64) for the given token-file rows."""
    block = torch.from_numpy(np.asarray(tokens[np.sort(rows)], dtype=np.int64))
    return block[:, :seq_len], block[:, 1 : seq_len + 1]


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """nanoGPT's AdamW groups: decay matrices (weights, embeddings), not biases or norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def _ensure_distributed_env() -> None:
    """Let a plain ``python`` process train as a world of one (torchrun sets these itself)."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


class _MlflowLogger:
    """Logs step metrics into an existing MLflow run; a no-op without a run id."""

    def __init__(self, tracking_uri: str | None, run_id: str | None) -> None:
        self.run_id = run_id
        self.client = None
        if run_id:
            from mlflow.tracking import MlflowClient  # heavy import, only when tracking

            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.client.get_run(run_id)  # fail at start, not after an hour, if it is missing

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(key=k, value=float(v), timestamp=now, step=step) for k, v in metrics.items()
        ]
        self.client.log_batch(self.run_id, metrics=batch)


def _skip_cpu_shm_comm_build() -> None:
    """Stop DeepSpeed's CPU backend from JIT-compiling its shared-memory allreduce op.

    On the CPU accelerator ``deepspeed.comm`` builds ``deepspeed_shm_comm`` (a C++ extension,
    ~90 s on two cores) when it first initializes; training communicates through gloo and never
    needs it. DeepSpeed consults the cached ``deepspeed.ops.__compatible_ops__`` dict before
    building, so marking the op incompatible there skips the build.
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def _full_state_dict(engine: Any) -> dict[str, torch.Tensor]:
    """The unwrapped model's full fp32 state dict (gathering the shards under ZeRO-3).

    With ZeRO stage <= 2 every rank holds all parameters, so the module's own state is complete.
    Collective under ZeRO-3: every rank must call it.
    """
    import deepspeed

    module = engine.module
    if engine.zero_optimization_stage() == 3:
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


def train(spec: RunSpec, reporter: Reporter | None = None) -> dict[str, Any]:
    """Train ``spec``'s model with DeepSpeed and return the run summary.

    Must run under torchrun (or as a single plain process). Rank 0 reports metrics every
    ``log_every`` steps to ``reporter`` and MLflow and writes ``model.pt``,
    ``model_config.json`` and ``summary.json`` under ``spec.out_dir``; all ranks save DeepSpeed
    checkpoints under ``out_dir/checkpoints``. Raises :class:`TrainingError` on a non-finite
    loss.
    """
    import deepspeed
    import torch.distributed as dist

    tc = spec.train
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    _ensure_distributed_env()
    _skip_cpu_shm_comm_build()
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    rank, world = dist.get_rank(), dist.get_world_size()

    data = TokenFile.open(spec.tokens_dir)
    mc = spec.model
    if mc.seq_len > data.meta.seq_len:
        raise ValueError(f"model seq_len={mc.seq_len} > token file seq_len={data.meta.seq_len}")
    if mc.vocab_size < data.meta.vocab_size:
        raise ValueError(f"model vocab_size={mc.vocab_size} < tokenizer's {data.meta.vocab_size}")

    template = json.loads(Path(spec.deepspeed_config).read_text())
    ds_config = fill_deepspeed_config(template, spec, world_size=world)
    model = GPT(mc)
    # Counted before DeepSpeed wraps the model: ZeRO-3 leaves each rank only a shard.
    num_params, flops_per_token = model.num_params(), model.estimate_flops_per_token()
    groups = optimizer_groups(model, tc.weight_decay)
    if "optimizer" in ds_config:  # the config asked for DeepSpeed's optimizer: let it build one
        engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config)
    else:
        optimizer = torch.optim.AdamW(groups, lr=get_lr(0, tc), betas=(0.9, 0.95))
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)

    micro = ds_config["train_micro_batch_size_per_gpu"]
    accum = ds_config["gradient_accumulation_steps"]
    sampler = BatchSampler(len(data), micro, accum, world, tc.seed)
    tokens_per_step = sampler.global_batch * mc.seq_len
    tracker = _MlflowLogger(spec.mlflow_tracking_uri, spec.mlflow_run_id) if rank == 0 else None
    ckpt_dir = Path(spec.out_dir) / "checkpoints"
    saved_at = -1

    engine.train()
    start = last_log_t = time.perf_counter()
    last_log_step, first_loss, loss_value = 0, float("nan"), float("nan")
    for step in range(tc.steps):
        lr = get_lr(step, tc)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        rows = sampler.rank_rows(step, rank)
        step_loss = torch.zeros(())
        for m in range(accum):
            x, y = get_batch(data.tokens, rows[m], mc.seq_len)
            _, loss = engine(x, y)
            engine.backward(loss)  # DeepSpeed divides by the accumulation steps itself
            engine.step()  # the optimizer steps only at the accumulation boundary
            step_loss += loss.detach().float() / accum
        dist.all_reduce(step_loss)  # every rank sees the same value, so all stop together
        loss_value = step_loss.item() / world
        if not math.isfinite(loss_value):
            raise TrainingError(f"non-finite loss {loss_value} at step {step + 1} of {spec.name}")
        if step == 0:
            first_loss = loss_value
        done = step + 1
        if rank == 0 and (done % tc.log_every == 0 or done == tc.steps):
            now = time.perf_counter()
            metrics = {
                "loss": loss_value,
                "lr": lr,
                "tokens_per_s": (done - last_log_step) * tokens_per_step / (now - last_log_t),
                "tokens_seen": float(done * tokens_per_step),
                # ZeRO skips an update whose gradients hold inf/NaN, even in fp32: count them.
                "skipped_steps": float(engine.skipped_steps),
            }
            grad_norm = engine.get_global_grad_norm()
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm)
            last_log_t, last_log_step = now, done
            if reporter is not None:
                reporter(done, metrics)
            tracker.log(done, metrics)
        if tc.checkpoint_every and done % tc.checkpoint_every == 0:
            engine.save_checkpoint(
                str(ckpt_dir), tag=f"step{done}", client_state=_ckpt_state(spec, done)
            )
            saved_at = done
    wall_s = time.perf_counter() - start

    if saved_at != tc.steps:
        engine.save_checkpoint(
            str(ckpt_dir), tag=f"step{tc.steps}", client_state=_ckpt_state(spec, tc.steps)
        )
    state = _full_state_dict(engine)
    summary = {
        "run": spec.name,
        "final_loss": loss_value,
        "initial_loss": first_loss,
        "tokens_seen": tc.steps * tokens_per_step,
        "tokens_per_s": tc.steps * tokens_per_step / wall_s,
        "steps": tc.steps,
        "skipped_steps": engine.skipped_steps,
        "num_params": num_params,
        "flops_per_token": flops_per_token,
        "world_size": world,
        "wall_s": wall_s,
    }
    if rank == 0:
        out = Path(spec.out_dir)
        with atomic_path(out / "model.pt") as tmp:
            torch.save(state, tmp)
        _write_json(out / "model_config.json", asdict(mc))
        _write_json(out / "summary.json", summary)
    dist.barrier()
    return summary


def _ckpt_state(spec: RunSpec, step: int) -> dict[str, Any]:
    """Client state stored in each DeepSpeed checkpoint: the step and the full run spec."""
    return {"step": step, "spec": spec.model_dump(mode="json")}
