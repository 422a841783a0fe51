"""The DeepSpeed trainer: config filling, batch order, AdaGC, MFU, resume, LAWA and the loop.

Orchestration-agnostic: the entry point (``infra/entrypoints/train.py``) loads a :class:`RunSpec`
(declared in :mod:`corpuslab.runspec`, re-exported here) and passes a reporter callback; nothing
here knows who launched it. Runs under torchrun with DeepSpeed on CPU (``DS_ACCELERATOR=cpu``,
gloo) or on GPUs with the same code.

The optimizer is a client ``torch.optim.AdamW`` handed to ``deepspeed.initialize``: DeepSpeed's
own Adam (an ``"optimizer"`` section without ``"torch_adam": true``) is FusedAdam or CPUAdam,
which are C++/CUDA ops that DeepSpeed JIT-compiles on first use.

MFU (model FLOPs utilization) = ``flops_per_token x tokens_per_s / (peak_flops x world_size)``,
with ``flops_per_token = 6N + 12 L H Q T`` (:meth:`ModelDims.flops_per_token`) and the peak per
device declared (``train.peak_flops``), looked up for known GPUs (:data:`PEAK_FLOPS`, dense
bf16) or, on CPU, measured at start as this rank's fp32 matmul throughput with its threads.
"""

from __future__ import annotations

import collections
import copy
import json
import math
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from corpuslab import checkpoints as ckpt
from corpuslab.doremi import GroupDRO, initial_alpha, load_reference
from corpuslab.evaluate import sequence_loss
from corpuslab.layout import atomic_path
from corpuslab.model import GPT, GPTConfig, inherit_weights
from corpuslab.runspec import (
    PEAK_FLOPS,
    AdaGCConfig,
    InitFrom,
    ModelDims,
    RunSpec,
    TrainConfig,
    TrainPlan,
    batch_layout,
    fingerprint_differences,
    get_lr,
    make_plan,
    resume_fingerprint,
)
from corpuslab.tokenfile import TokenFile

__all__ = [
    "AdaGC", "AdaGCConfig", "BatchSampler", "DomainBalancedSampler", "InitFrom", "ModelDims",
    "Reporter", "ResumeError",
    "RunSpec", "TrainConfig", "TrainPlan", "TrainingError", "average_checkpoints",
    "fill_deepspeed_config", "get_batch", "get_lr", "make_plan", "optimizer_groups",
    "resume_point", "train",
]  # fmt: skip

average_checkpoints = ckpt.average_checkpoints
Reporter = Callable[[int, dict[str, float]], None]
AUTO = "auto"
CHECKPOINTS = "checkpoints"
DOREMI_REPORT = "doremi.json"  # a DoReMi proxy's weights, trajectory and per-domain losses


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or a loss spike)."""


class ResumeError(RuntimeError):
    """``out_dir`` holds a checkpoint of a run that differs from the spec in what it trains."""


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in, dicts recursively, other values replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _find_autos(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every value still equal to ``"auto"`` in a nested config."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _find_autos(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == AUTO else []


def fill_deepspeed_config(template: dict, spec: RunSpec, world_size: int = 1) -> dict:
    """A copy of a DeepSpeed config, with the spec's overrides merged and ``"auto"`` filled.

    The batch fields come from :func:`~corpuslab.runspec.batch_layout` (so a global batch in
    tokens that does not divide raises ``ValueError``); clipping is the spec's ``grad_clip``,
    or 0 under AdaGC, which clips itself. Explicit values in the template win over the spec;
    the three batch sizes must then agree (``train_batch_size == micro * accum * world_size``).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    cfg = deep_merge(template, spec.deepspeed_overrides)
    tc = spec.train

    def take(key: str, default: Any) -> Any:
        value = cfg.get(key, AUTO)
        cfg[key] = default if value == AUTO else value
        return cfg[key]

    spec_micro, spec_accum = batch_layout(tc, spec.model.seq_len, world_size)
    micro = take("train_micro_batch_size_per_gpu", spec_micro)
    accum = take("gradient_accumulation_steps", spec_accum)
    total = take("train_batch_size", micro * accum * world_size)
    if total != micro * accum * world_size:
        raise ValueError(
            f"DeepSpeed config contradicts itself: train_batch_size={total} but "
            f"train_micro_batch_size_per_gpu={micro} x gradient_accumulation_steps={accum} x "
            f"world_size={world_size} = {micro * accum * world_size}"
        )
    clip = take("gradient_clipping", 0.0 if tc.adagc else tc.grad_clip)
    if tc.adagc and clip:
        raise ValueError(f"AdaGC clips per parameter: the DeepSpeed config's clipping={clip} != 0")
    params = cfg.get("optimizer", {}).get("params")
    if isinstance(params, dict):
        fills = {"lr": tc.lr, "weight_decay": tc.weight_decay, "betas": list(tc.betas)}
        for key, value in (fills | {"eps": tc.eps}).items():
            if params.get(key) == AUTO:
                params[key] = value
    left = _find_autos(cfg)
    if left:
        raise ValueError(f"DeepSpeed config has 'auto' fields the run spec cannot fill: {left}")
    return cfg


class BatchSampler:
    """Deterministic row order: each step takes the next ``global_batch`` rows of a stream.

    The stream concatenates one seeded permutation of all rows per epoch, so the rows of a step
    depend only on (seed, step, global batch), not on the world size: the data position of a
    run is its step. A step's rows are laid out as (accum, world, micro) and rank ``r`` takes
    ``[:, r, :]``: the ranks' slices are disjoint and together cover the global batch.
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


class DomainBalancedSampler(BatchSampler):
    """DoReMi's proxy batches: rows sampled uniformly over domains (Algorithm 1 samples from
    the uniform domain mixture and lets the weights act on the loss).

    Position ``p`` of the stream (``step * global_batch + i``) takes domain ``p % k`` and that
    domain's ``p // k``-th row in its own stream of seeded per-epoch permutations, so every
    domain fills an equal share of each batch (within one row) whatever its size, small
    domains are revisited as needed, and a step's rows do not depend on the world size.
    """

    def __init__(
        self, domains: np.ndarray, micro: int, accum: int, world_size: int, seed: int
    ) -> None:
        super().__init__(len(domains), micro, accum, world_size, seed)
        doms = np.asarray(domains)
        present = np.unique(doms)
        self.by_domain = [np.flatnonzero(doms == d) for d in present]
        self.k = len(self.by_domain)

    def global_rows(self, step: int) -> np.ndarray:
        positions = np.arange(step * self.global_batch, (step + 1) * self.global_batch)
        rows = np.empty(self.global_batch, dtype=np.int64)
        for d, members in enumerate(self.by_domain):
            mask = positions % self.k == d
            index = positions[mask] // self.k
            n = len(members)
            out = np.empty(len(index), dtype=np.int64)
            for epoch in np.unique(index // n):
                sel = index // n == epoch
                perm = np.random.default_rng([self.seed, d, int(epoch)]).permutation(n)
                out[sel] = members[perm[index[sel] % n]]
            rows[mask] = out
        return rows


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


class AdaGC:
    """Adaptive per-parameter gradient clipping (see :class:`~corpuslab.runspec.AdaGCConfig`).

    Call :meth:`clip` after the backward pass of an optimizer step's last micro-batch and before
    ``engine.step()``. It works on the gradients DeepSpeed is about to apply, whatever the ZeRO
    stage: stage 0 holds full averaged gradients in ``param.grad``; under ZeRO-1/2 each rank
    holds the averaged gradient of its slice of the flat partition (DeepSpeed's ``_hp_mapping``
    fragments, the ones ``safe_get_full_grad`` assembles); under ZeRO-3 each rank holds its
    partition of each parameter (``safe_get_local_grad``). Squared norms of the local pieces
    are summed across ranks with one all-reduce, so every rank computes the same full-gradient
    norms and scales, and scales only what it holds: no gradient is gathered.
    """

    def __init__(self, cfg: AdaGCConfig, params: list[torch.nn.Parameter], global_clip: float):
        self.cfg = cfg
        self.params = params
        self.global_clip = global_clip
        self.ema = torch.full((len(params),), math.inf, dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ema = torch.tensor(state["ema"], dtype=torch.float64)
        if ema.shape != self.ema.shape:
            raise ValueError(f"AdaGC state holds {ema.numel()} norms, model {self.ema.numel()}")
        self.ema = ema

    def scales(self, norms: torch.Tensor, step: int) -> torch.Tensor:
        """Per-parameter factors (<= 1) for the full-gradient ``norms`` at 0-based ``step``.

        Updates the EMA. Pure in the norms: the rule the paper states, testable without an
        engine.
        """
        norms = norms.to(torch.float64)
        if step < self.cfg.warmup_steps:
            total = float(norms.square().sum().sqrt())
            h = min(1.0, self.global_clip / total) if self.global_clip > 0 and total > 0 else 1.0
            scales = torch.full_like(norms, h)
            self.ema = torch.minimum(self.ema, norms * scales)
            return scales
        limit = self.cfg.threshold * self.ema
        scales = torch.where(norms > limit, limit / norms, torch.ones_like(norms))
        clipped = norms * scales
        b = self.cfg.beta
        self.ema = torch.where(self.ema.isinf(), clipped, b * self.ema + (1 - b) * clipped)
        return scales

    def clip(self, engine: Any, step: int) -> float:
        """Clip the engine's pending gradients in place; returns the fraction of params clipped."""
        import torch.distributed as dist

        stage = engine.zero_optimization_stage()
        pieces = [_local_grad(p, stage) for p in self.params]
        sq = torch.stack(
            [
                g.detach().float().square().sum().cpu() if g is not None else torch.zeros(())
                for g in pieces
            ]
        ).to(torch.float64)
        if stage > 0 and dist.get_world_size() > 1:
            sq = sq.to(engine.device)
            dist.all_reduce(sq)
            sq = sq.cpu()
        scales = self.scales(sq.sqrt(), step)
        for p, g, s in zip(self.params, pieces, scales.tolist(), strict=True):
            if g is None or s >= 1.0:
                continue
            if stage == 3:
                from deepspeed.utils import safe_set_local_grad

                safe_set_local_grad(p, g * s)
            else:
                g.mul_(s)
        return float((scales < 1.0).double().mean())


def _local_grad(param: torch.nn.Parameter, stage: int) -> torch.Tensor | None:
    """The piece of ``param``'s averaged gradient this rank holds (None: nothing here)."""
    if stage == 3:
        from deepspeed.utils import safe_get_local_grad

        return safe_get_local_grad(param)
    if stage == 0 or not hasattr(param, "_hp_mapping"):
        return param.grad
    mapping = param._hp_mapping
    if mapping is None:
        return None
    piece = mapping.get_lp_grad_fragment(param._index_in_param_group)
    address = mapping.lp_fragment_address
    if piece.numel() == param.numel() and address.numel != param.numel():
        piece = piece.view(-1).narrow(0, address.start, address.numel)  # full-size buffer
    return piece


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
    """Logs step metrics into an existing MLflow run from a background thread.

    A no-op without a run id. Logging to a database takes milliseconds per batch; the queue
    keeps that off the training step. :meth:`close` drains the queue and re-raises the first
    error the thread met.
    """

    def __init__(self, tracking_uri: str | None, run_id: str | None) -> None:
        self.run_id = run_id
        self.client = None
        self._queue: queue.Queue[tuple[int, dict[str, float]] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if run_id:
            from mlflow.tracking import MlflowClient  # heavy import, only when tracking

            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.client.get_run(run_id)  # fail at start, not after an hour, if it is missing
            self._thread = threading.Thread(target=self._work, name="mlflow-logger", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        from mlflow.entities import Metric

        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            step, metrics = item
            now = int(time.time() * 1000)
            batch = [Metric(key=k, value=v, timestamp=now, step=step) for k, v in metrics.items()]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except BaseException as exc:  # surfaced by close()
                self._error = exc

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._thread is not None:
            self._queue.put((step, {k: float(v) for k, v in metrics.items()}))

    def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise RuntimeError(f"MLflow logging failed: {self._error}") from self._error


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


def _comm_backend() -> str:
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    return "gloo" if acc.device_name() == "cpu" else acc.communication_backend_name()


def measure_matmul_flops(seconds: float = 0.3, n: int = 512, trials: int = 6) -> float:
    """FLOP/s of fp32 ``n x n`` matmuls on the CPU with torch's current threads.

    The best of ``trials`` short windows, so a moment of contention from another process does
    not lower the peak (an MFU above 1 would be the symptom).
    """
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    a @ b  # warm the kernels
    best = 0.0
    for _ in range(trials):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / trials:
            a @ b
            count += 1
        best = max(best, 2 * n**3 * count / elapsed)
    return best


def peak_flops_per_device(tc: TrainConfig) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from) for MFU."""
    if tc.peak_flops is not None:
        return tc.peak_flops, "declared"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name().lower()
        key = next(
            (k for k in ("h200", "a100") if k in name),
            ("h100-pcie" if "pcie" in name else "h100-sxm") if "h100" in name else None,
        )
        if key is not None:
            return PEAK_FLOPS[key], key
    return measure_matmul_flops(), "measured: cpu fp32 matmul"


def _write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def optimizer_state_numel(engine: Any) -> int:
    """Elements of optimizer state (AdamW moments) this rank holds: ZeRO shrinks it per rank."""
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    return sum(
        t.numel()
        for state in base.state.values()
        for key, t in state.items()
        if torch.is_tensor(t) and key != "step"
    )


def _group_dro(spec: RunSpec, data: TokenFile, device: Any) -> GroupDRO:
    """DoReMi's proxy state: the reference model and the weights over the file's domains."""
    dcfg = spec.doremi
    reference = load_reference(dcfg.reference_run_dir, device)
    rc, mc = reference.config, spec.model
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
    _ensure_distributed_env()
    _skip_cpu_shm_comm_build()
    deepspeed.init_distributed(dist_backend=_comm_backend(), verbose=False)
    rank, world = dist.get_rank(), dist.get_world_size()

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
        engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config)
    else:
        optimizer = torch.optim.AdamW(
            groups, lr=get_lr(0, tc, plan.steps), betas=tc.betas, eps=tc.eps
        )
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    device = engine.device
    adagc = None
    if tc.adagc is not None:
        adagc = AdaGC(
            tc.adagc, [p for p in engine.module.parameters() if p.requires_grad], tc.grad_clip
        )

    dro = _group_dro(spec, data, device) if spec.doremi is not None else None
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
        sampler = DomainBalancedSampler(
            row_domains[:n_train], plan.micro_batch_size, plan.grad_accum_steps, world, tc.seed
        )
    accum = plan.grad_accum_steps
    peak, peak_source = peak_flops_per_device(tc)
    tracker = _MlflowLogger(spec.mlflow_tracking_uri, spec.mlflow_run_id) if rank == 0 else None
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
        return ckpt.save_checkpoint(
            engine, ckpt_dir, step, client_state, rank_state, info, keep=tc.keep_checkpoints
        )

    engine.train()
    loss_value = window[-1] if window else float("nan")
    start = last_log_t = time.perf_counter()
    last_log_step = start_step
    try:
        for step in range(start_step, plan.steps):
            lr = get_lr(step, tc, plan.steps)
            for group in engine.optimizer.param_groups:
                group["lr"] = lr
            rows = sampler.rank_rows(step, rank)
            sums = torch.zeros(2, dtype=torch.float64, device=device)  # (loss, z-term)
            clipped_frac = None
            if dro is not None:
                counts = np.bincount(row_domains[sampler.global_rows(step)], minlength=n_domains)
                dro.begin_step(torch.from_numpy(counts * mc.seq_len))
            for m in range(accum):
                x, y = get_batch(data.tokens, rows[m], mc.seq_len)
                if dro is None:
                    _, loss = engine(x.to(device), y.to(device), z_loss=tc.z_loss)
                    sums[0] += loss.detach()
                    if engine.module.last_z_loss is not None:
                        sums[1] += engine.module.last_z_loss
                else:  # DoReMi proxy: the loss is domain-weighted, the logged loss is not
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
                last_log_t, last_log_step = now, done
                if reporter is not None:
                    reporter(done, metrics)
                tracker.log(done, metrics)
            if tc.checkpoint_every and done % tc.checkpoint_every == 0 and done < plan.steps:
                save(done)
                last_saved = done
        wall_s = time.perf_counter() - start
        steps_here = plan.steps - start_step
        final_state = save(plan.steps) if last_saved != plan.steps else None
    finally:
        if tracker is not None:
            tracker.close()

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
            _write_json(out / DOREMI_REPORT, dro.report())
        _finish(spec, out, ckpt_dir, final_state, data, n_train, summary)
    dist.barrier()
    return summary


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
    _write_json(out / "model_config.json", asdict(GPTConfig.from_dims(spec.model)))
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
    _write_json(out / "summary.json", summary)
