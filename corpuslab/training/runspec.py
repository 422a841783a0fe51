"""Typed declaration of a training run, importable without torch (the YAML loader validates it).

A run declares a model (a named scale from :data:`SCALES` or explicit dims), how long it trains
(steps, tokens, or a Chinchilla multiple of its parameters), its global batch in tokens, the lr
schedule (warmup + cosine, or warmup-stable-decay), regularization (weight decay, z-loss),
clipping (global, or AdaGC), checkpointing with LAWA averaging, loss-spike detection and an
optional inherited initialization. :func:`make_plan` turns a spec and a world size into the
concrete micro-batch x accumulation x ranks layout and the step count.

The ladder's DCLM presets take their dims and recipes from the DCLM repository
(``training/configs/*.json`` and ``training/open_lm_configs/*.json``, mlfoundations/dclm); the
"params" they publish count open_lm's architecture (SwiGLU, untied embeddings), so the same dims
give a somewhat smaller :class:`~corpuslab.model.GPT` here. Tokens for "1x" are 20 x params
(Chinchilla), exactly as DCLM's configs state them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from corpuslab.strict import Strict

CHINCHILLA_TOKENS_PER_PARAM = 20

# Dense bf16 tensor-core peak per device (vendor datasheets, no sparsity), for MFU.
PEAK_FLOPS: dict[str, float] = {
    "a100": 312e12,  # A100 SXM/PCIe, bf16
    "h100-sxm": 989e12,  # H100 SXM5, bf16
    "h100-pcie": 756e12,  # H100 PCIe, bf16
    "h200": 989e12,  # H200 SXM, bf16 (same compute as H100 SXM)
}


class ModelDims(Strict):
    """Resolved shape of the GPT; :class:`~corpuslab.training.model.GPTConfig` is built from these.

    Accepts a ``GPTConfig`` instance too (``from_attributes``), so callers may pass either.
    """

    model_config = ConfigDict(from_attributes=True)

    vocab_size: int = Field(ge=1, description="tokenizer vocabulary size (ids < vocab_size)")
    seq_len: int = Field(ge=1, description="context length; size of the position table")
    n_layer: int = Field(ge=1, description="transformer blocks")
    n_head: int = Field(ge=1, description="attention heads; must divide d_model")
    d_model: int = Field(ge=1, description="residual stream width")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    bias: bool = False

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelDims:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        return self

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters of the GPT with these dims, as ``GPT.num_params`` counts them."""
        d, b = self.d_model, int(self.bias)
        norm = d + b * d
        block = 2 * norm + (3 * d * d + b * 3 * d) + (d * d + b * d)
        block += (4 * d * d + b * 4 * d) + (4 * d * d + b * d)
        total = self.vocab_size * d + self.seq_len * d + self.n_layer * block + norm
        return total - self.seq_len * d if non_embedding else total

    def flops_per_token(self) -> int:
        """Training FLOPs per token: ``6N + 12 * L * H * Q * T`` (PaLM appendix B, nanoGPT)."""
        head_dim = self.d_model // self.n_head
        return 6 * self.num_params() + 12 * self.n_layer * self.n_head * head_dim * self.seq_len


class Scale(Strict):
    """A named model size of the ladder, with the recipe its source trained it with."""

    n_layer: int
    n_head: int
    d_model: int
    seq_len: int
    params: int | None = None  # published count the token budget uses; None: count our GPT
    recipe: dict[str, Any] = Field(default_factory=dict)  # reference hyperparameters
    source: str = ""


_DCLM = "mlfoundations/dclm training/configs/{}.json"
SCALES: dict[str, Scale] = {
    # CPU-sized; the names give the size at a 4096-token vocabulary (the demo tokenizer's).
    "cpu-1m": Scale(n_layer=3, n_head=4, d_model=128, seq_len=128),
    "cpu-5m": Scale(n_layer=5, n_head=4, d_model=256, seq_len=128),
    "cpu-20m": Scale(n_layer=10, n_head=6, d_model=384, seq_len=256),
    # DCLM competition scales (open_lm dims; tokens = 20 x their published params at "1x").
    "dclm-412m": Scale(
        n_layer=24, n_head=8, d_model=1024, seq_len=2048, params=411_616_256,
        recipe={"lr": 3e-3, "min_lr": 3e-5, "weight_decay": 0.033, "warmup_steps": 2000,
                "global_batch_sequences": 512, "z_loss": 1e-4},
        source=_DCLM.format("411m_1x"),
    ),
    "dclm-1.4b": Scale(
        n_layer=24, n_head=16, d_model=2048, seq_len=2048, params=1_439_795_200,
        recipe={"lr": 3e-3, "min_lr": 3e-5, "weight_decay": 0.033, "warmup_steps": 5000,
                "global_batch_sequences": 256, "z_loss": 1e-4},
        source=_DCLM.format("1b_1x_fast"),
    ),
    "dclm-2.8b": Scale(
        n_layer=32, n_head=32, d_model=2560, seq_len=2048, params=2_795_932_160,
        recipe={"lr": 3e-3, "min_lr": 3e-5, "weight_decay": 0.033, "warmup_steps": 5000,
                "global_batch_sequences": 256, "z_loss": 1e-4},
        source=_DCLM.format("3b_1x_fast_3e-3_lr_1e-4_zloss"),
    ),
    "dclm-6.9b": Scale(
        n_layer=32, n_head=32, d_model=4096, seq_len=2048, params=6_889_410_560,
        recipe={"lr": 2e-3, "min_lr": 3e-5, "weight_decay": 0.05, "warmup_steps": 5000,
                "global_batch_sequences": 2048, "z_loss": 5e-6},
        source=_DCLM.format("7b_1x_fast_2e-3_lr_5e-6_zloss"),
    ),
}  # fmt: skip


class ModelSpec(Strict):
    """The model as a run declares it: a ladder ``scale`` or all three explicit dims."""

    scale: str | None = Field(default=None, description=f"one of {sorted(SCALES)}")
    n_layer: int | None = Field(default=None, ge=1)
    n_head: int | None = Field(default=None, ge=1)
    d_model: int | None = Field(default=None, ge=8)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    bias: bool = False

    @model_validator(mode="after")
    def _scale_or_dims(self) -> ModelSpec:
        dims = {"n_layer": self.n_layer, "n_head": self.n_head, "d_model": self.d_model}
        given = sorted(k for k, v in dims.items() if v is not None)
        if self.scale is not None:
            if self.scale not in SCALES:
                raise ValueError(f"unknown scale {self.scale!r}; allowed: {', '.join(SCALES)}")
            if given:
                raise ValueError(f"give either 'scale' or explicit dims, not both (got {given})")
        elif self.n_layer is None or self.n_head is None or self.d_model is None:
            missing = sorted(set(dims) - set(given))
            raise ValueError(f"explicit dims need n_layer, n_head and d_model; missing {missing}")
        elif self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        return self

    def resolve(self, vocab_size: int, seq_len: int) -> ModelDims:
        """Concrete dims for a tokenizer's vocabulary and the token file's sequence length."""
        if self.scale is not None:
            s = SCALES[self.scale]
            layer, head, width = s.n_layer, s.n_head, s.d_model
        else:
            layer, head, width = self.n_layer, self.n_head, self.d_model
            assert layer is not None and head is not None and width is not None, (
                "_scale_or_dims: without a scale all three dims are given"
            )
        return ModelDims(
            vocab_size=vocab_size,
            seq_len=seq_len,
            n_layer=layer,
            n_head=head,
            d_model=width,
            dropout=self.dropout,
            bias=self.bias,
        )

    def budget_params(self, dims: ModelDims) -> int:
        """Parameters the token budget counts: the scale's published count, else all of ours."""
        published = SCALES[self.scale].params if self.scale is not None else None
        return published if published is not None else dims.num_params(non_embedding=False)


class AdaGCConfig(Strict):
    """AdaGC (Wang et al. 2025): per-parameter clipping against an EMA of its own grad norm.

    During the first ``warmup_steps`` optimizer steps gradients are clipped globally at the
    run's ``grad_clip`` and each parameter's threshold tracks the minimum of its clipped norms;
    afterwards a parameter's gradient is scaled down to ``threshold * ema`` when its norm
    exceeds that, and ``ema <- beta * ema + (1 - beta) * clipped_norm``. Defaults are the paper's.
    """

    beta: float = Field(default=0.98, gt=0.0, lt=1.0, description="EMA smoothing of clipped norms")
    threshold: float = Field(
        default=1.05, gt=0.0, description="lambda: clip when norm > lambda * EMA"
    )
    warmup_steps: int = Field(
        default=100, ge=0, description="steps of global clipping before AdaGC"
    )


class TrainConfig(Strict):
    """Optimization settings of one run; all batch sizes are in sequences unless named tokens."""

    # How long: at most one of steps / tokens / token_multiplier; none given means 100 steps.
    steps: int | None = Field(default=None, ge=1, description="optimizer steps")
    tokens: int | None = Field(
        default=None, ge=1, description="training tokens (rounded up to steps)"
    )
    token_multiplier: float | None = Field(
        default=None,
        gt=0,
        description="tokens = multiplier x 20 x params ('1x' is Chinchilla-optimal)",
    )
    # Batch: micro-batch per rank; accumulation given or derived from the global batch.
    micro_batch_size: int = Field(
        default=8, ge=1, description="sequences per rank per forward pass"
    )
    grad_accum_steps: int | None = Field(
        default=None,
        ge=1,
        description="micro-batches per step; derived when global_batch_tokens is set",
    )
    global_batch_tokens: int | None = Field(
        default=None,
        ge=1,
        description="tokens per optimizer step = seq_len x micro x accum x ranks",
    )
    # Schedule.
    lr: float = Field(default=1e-3, gt=0, description="peak learning rate")
    min_lr: float = Field(default=1e-4, ge=0, description="lr at the last step")
    warmup_steps: int = Field(default=10, ge=0, description="linear warmup length in steps")
    schedule: Literal["cosine", "wsd"] = "cosine"
    decay_fraction: float = Field(
        default=0.2, gt=0, le=1, description="wsd: fraction of the steps that decay at the end"
    )
    decay_shape: Literal["linear", "1-sqrt"] = Field(
        default="1-sqrt", description="wsd: shape of the final decay"
    )
    # Optimizer and regularization.
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW decay on matrices only")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(default=1e-8, gt=0)
    z_loss: float = Field(
        default=1e-4, ge=0, description="PaLM z-loss coefficient: coef * log(Z)^2"
    )
    grad_clip: float = Field(default=1.0, ge=0, description="global gradient-norm clip; 0 disables")
    adagc: AdaGCConfig | None = Field(default=None, description="per-parameter clipping instead")
    seed: int = 1337
    # Checkpoints, averaging, evaluation.
    checkpoint_every: int = Field(
        default=0, ge=0, description="steps between checkpoints; 0: end only"
    )
    keep_checkpoints: int = Field(
        default=0, ge=0, description="newest checkpoints kept; 0 keeps all"
    )
    lawa_k: int = Field(default=0, ge=0, description="average the last k checkpoints; 0 disables")
    heldout_sequences: int = Field(
        default=0, ge=0, description="last rows of train.bin kept out of training for held-out loss"
    )
    # Stability guard.
    spike_factor: float | None = Field(
        default=None, gt=1, description="stop when loss > factor x mean of the previous window"
    )
    spike_window: int = Field(default=20, ge=1, description="steps in the spike detector's mean")
    # Reporting and machine (not part of what a resume must match).
    log_every: int = Field(default=10, ge=1, description="steps between metric reports")
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads per rank")
    peak_flops: float | None = Field(
        default=None,
        gt=0,
        description="peak FLOP/s per device for MFU; None: detect (GPU) or measure",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_length(cls, data: Any) -> Any:
        """None of steps / tokens / token_multiplier given: 100 steps."""
        if isinstance(data, dict):
            lengths = ("steps", "tokens", "token_multiplier")
            if not any(data.get(k) is not None for k in lengths):
                data = {**data, "steps": 100}
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        lengths = [k for k in ("steps", "tokens", "token_multiplier") if getattr(self, k)]
        if len(lengths) > 1:
            raise ValueError(f"give only one of steps, tokens, token_multiplier (got {lengths})")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} exceeds lr={self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        if self.keep_checkpoints and self.lawa_k > self.keep_checkpoints:
            raise ValueError(
                f"lawa_k={self.lawa_k} averages more checkpoints than keep_checkpoints="
                f"{self.keep_checkpoints} keeps"
            )
        return self


class Inherit(Strict):
    """Inheritune (Sanyal et al. 2024): how much of a parent model a run starts from."""

    layers: int = Field(ge=1, description="leading transformer blocks to copy")


class InitFrom(Inherit):
    """Start from a trained run's embeddings, first ``layers`` blocks and final norm."""

    run_dir: Path = Field(description="a finished run folder (model.pt + model_config.json)")


class GroupDROParams(Strict):
    """DoReMi's weight update (Xie et al. 2023); defaults are the reference implementation's."""

    eta: float = Field(default=1.0, gt=0, description="step size of the weights' update")
    smoothing: float = Field(
        default=1e-3, ge=0, lt=1, description="mixing toward uniform each update"
    )


class DoReMiSpec(GroupDROParams):
    """Train this run as DoReMi's proxy: Group DRO over the token file's domains."""

    reference_run_dir: Path = Field(description="the finished reference run (same data)")
    initial_weights: dict[str, float] | None = Field(
        default=None, description="domain -> weight to start from; None: uniform"
    )


class StoreSpec(Strict):
    """Where the run folder is mirrored: an ``s3://`` home whose working copy is ``root``.

    Rank 0 pushes each checkpoint there as it completes (:mod:`corpuslab.training.store`).
    No credentials: the training process reaches the store with the standard AWS settings of
    its environment (``AWS_ENDPOINT_URL``, ``AWS_REGION``, the credential chain), as MLflow's S3
    artifact store does.
    """

    root: Path = Field(description="the home's local working copy; out_dir lies below it")
    remote: str = Field(description="the s3://bucket/prefix home")


# Where files are, not what the run is: the same run resumes from another machine's copy of
# its folder (their contents are in the resume fingerprint: token meta, filled DeepSpeed config).
LOCATION_FIELDS = frozenset({"tokens_dir", "out_dir", "deepspeed_config", "store"})


class RunSpec(Strict):
    """Everything one training process needs; written as JSON and passed to the entry point."""

    name: str
    tokens_dir: Path
    out_dir: Path
    model: ModelDims
    train: TrainConfig = Field(default_factory=TrainConfig)
    deepspeed_config: Path
    deepspeed_overrides: dict[str, Any] = Field(
        default_factory=dict, description="deep-merged into the DeepSpeed JSON before filling"
    )
    init_from: InitFrom | None = None
    doremi: DoReMiSpec | None = None
    budget_params: int | None = Field(
        default=None, ge=1, description="params behind token_multiplier; None: the model's total"
    )
    mlflow_tracking_uri: str | None = None
    mlflow_run_id: str | None = None  # an existing run to log into; runs are never created here
    store: StoreSpec | None = None  # an s3:// home: checkpoints pushed there as they complete

    def portable(self) -> dict[str, Any]:
        """The spec as JSON without where its files are: :data:`LOCATION_FIELDS` dropped, the
        runs it reads (``init_from``, DoReMi's reference) relative to ``out_dir``, so the same
        run in another machine's working copy compares equal."""
        out = json.loads(self.model_dump_json(exclude=set(LOCATION_FIELDS)))
        for field, key in (("init_from", "run_dir"), ("doremi", "reference_run_dir")):
            if out.get(field):
                out[field][key] = os.path.relpath(out[field][key], self.out_dir)
        return out


class TrainPlan(Strict):
    """The concrete batch layout and length of a run on a given number of ranks."""

    world_size: int
    micro_batch_size: int
    grad_accum_steps: int
    global_batch_sequences: int
    tokens_per_step: int
    steps: int

    @property
    def total_tokens(self) -> int:
        return self.steps * self.tokens_per_step


def batch_layout(tc: TrainConfig, seq_len: int, world_size: int) -> tuple[int, int]:
    """(micro, accum) per rank; the global batch in tokens must split into whole micro-batches."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    micro = tc.micro_batch_size
    if tc.global_batch_tokens is None:
        return micro, tc.grad_accum_steps or 1
    per_pass = seq_len * micro * world_size
    accum, rest = divmod(tc.global_batch_tokens, per_pass)
    if rest or accum < 1:
        raise ValueError(
            f"global_batch_tokens={tc.global_batch_tokens} is not a positive multiple of "
            f"seq_len={seq_len} x micro_batch_size={micro} x world_size={world_size} "
            f"= {per_pass} tokens"
        )
    if tc.grad_accum_steps is not None and tc.grad_accum_steps != accum:
        raise ValueError(
            f"grad_accum_steps={tc.grad_accum_steps} contradicts global_batch_tokens="
            f"{tc.global_batch_tokens}, which needs {accum} on {world_size} rank(s)"
        )
    return micro, accum


def make_plan(spec: RunSpec, world_size: int) -> TrainPlan:
    """Batch layout and step count of ``spec`` on ``world_size`` ranks."""
    tc, dims = spec.train, spec.model
    micro, accum = batch_layout(tc, dims.seq_len, world_size)
    global_batch = micro * accum * world_size
    tokens_per_step = global_batch * dims.seq_len
    if tc.steps is not None:
        steps = tc.steps
    else:
        params = spec.budget_params or dims.num_params(non_embedding=False)
        if tc.tokens is not None:
            tokens: float = tc.tokens
        else:
            assert tc.token_multiplier is not None, "TrainConfig sets one of the three lengths"
            tokens = tc.token_multiplier * CHINCHILLA_TOKENS_PER_PARAM * params
        steps = max(1, math.ceil(tokens / tokens_per_step))
    return TrainPlan(
        world_size=world_size,
        micro_batch_size=micro,
        grad_accum_steps=accum,
        global_batch_sequences=global_batch,
        tokens_per_step=tokens_per_step,
        steps=steps,
    )


# Fields that change what is trained; a resume must match them (the rest is reporting/machine).
RESUME_IGNORED_TRAIN_FIELDS = frozenset(
    {"log_every", "threads", "peak_flops", "checkpoint_every", "keep_checkpoints", "lawa_k",
     "spike_factor", "spike_window"}
)  # fmt: skip


def resume_fingerprint(
    spec: RunSpec, deepspeed_config: dict[str, Any], token_meta: dict[str, Any], world_size: int
) -> dict[str, Any]:
    """Flat ``{dotted.key: value}`` of everything a checkpoint's continuation depends on."""
    train = {
        k: v
        for k, v in spec.train.model_dump(mode="json").items()
        if k not in RESUME_IGNORED_TRAIN_FIELDS
    }
    ds = {k: v for k, v in deepspeed_config.items() if k not in {"steps_per_print"}}
    portable = spec.portable()  # the parent's and reference's run folders relative to out_dir
    tree = {
        "model": spec.model.model_dump(mode="json"),
        "train": train,
        "deepspeed": ds,
        "init_from": portable.get("init_from"),
        "doremi": portable.get("doremi"),
        "budget_params": spec.budget_params,
        "tokens": {k: token_meta[k] for k in ("dtype", "seq_len", "n_sequences", "vocab_size")},
        "world_size": world_size,
    }
    return _flatten(tree)


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable ``key: checkpoint X, spec Y`` lines for every differing key."""
    keys = sorted(set(saved) | set(current))
    missing = object()
    out = []
    for k in keys:
        a, b = saved.get(k, missing), current.get(k, missing)
        if a != b:
            a_txt = "(absent)" if a is missing else repr(a)
            b_txt = "(absent)" if b is missing else repr(b)
            out.append(f"{k}: checkpoint {a_txt}, spec {b_txt}")
    return out


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    value = list(node) if isinstance(node, tuple) else node
    return {prefix.rstrip("."): value}
