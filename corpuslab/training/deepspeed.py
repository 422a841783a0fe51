"""DeepSpeed glue: fill a config's ``"auto"`` fields from the run, and start the process group.

Configs live in ``infra/deepspeed/`` (one JSON a ZeRO stage, batch fields ``"auto"``, as axolotl
keeps them); the trainer fills them from :func:`~corpuslab.training.runspec.batch_layout`.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol, cast

from corpuslab.training.runspec import RunSpec, batch_layout

AUTO = "auto"

# DeepSpeed's documented config keys (https://www.deepspeed.ai/docs/config-json/), as DeepSpeed
# 0.19 reads them: the top level from runtime/config.py, the sections DeepSpeed validates with
# pydantic models (extra keys forbidden there too) from those models' fields and aliases.
# tests/corpuslab/training/test_deepspeed_keys.py checks each against the installed DeepSpeed.
DOCUMENTED_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({
        "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
        "optimizer", "scheduler", "communication_data_type", "prescale_gradients",
        "gradient_predivide_factor", "gradient_allreduce_op", "sparse_gradients", "fp16", "bf16",
        "amp", "torch_autocast", "gradient_clipping", "zero_optimization",
        "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer",
        "activation_checkpointing", "aio", "steps_per_print", "wall_clock_breakdown",
        "dump_state", "memory_breakdown", "disable_allgather", "disable_python_gc",
        "flops_profiler", "autotuning", "comms_logger", "tensorboard", "wandb", "csv_monitor",
        "comet", "elasticity", "compression_training", "data_efficiency",
        "curriculum_learning", "checkpoint", "data_types", "sparse_attention", "pipeline",
        "seq_parallel_communication_data_type", "dataloader_drop_last",
        "use_data_before_expert_parallelism", "nebula", "eigenvalue", "progressive_layer_drop",
        "quantize_training", "timers", "hybrid_engine", "graph_harvesting", "mics_shard_size",
        "mics_hierarchical_params_gather", "use_node_local_storage", "log_level",
    }),
    "zero_optimization": frozenset({
        "stage", "contiguous_gradients", "reduce_scatter", "reduce_bucket_size",
        "use_multi_rank_bucket_allreduce", "allgather_partitions", "allgather_bucket_size",
        "overlap_comm", "load_from_fp32_weights", "elastic_checkpoint", "offload_param",
        "offload_optimizer", "sub_group_size", "cpu_offload_param", "cpu_offload_use_pin_memory",
        "cpu_offload", "prefetch_bucket_size", "stage3_prefetch_bucket_size",
        "param_persistence_threshold", "stage3_param_persistence_threshold",
        "model_persistence_threshold", "stage3_model_persistence_threshold",
        "max_live_parameters", "stage3_max_live_parameters", "max_reuse_distance",
        "stage3_max_reuse_distance", "gather_16bit_weights_on_model_save",
        "stage3_gather_16bit_weights_on_model_save", "stage3_gather_fp16_weights_on_model_save",
        "module_granularity_threshold", "stage3_module_granularity_threshold",
        "use_all_reduce_for_fetch_params", "stage3_use_all_reduce_for_fetch_params",
        "allgather_sequential", "stage3_allgather_sequential", "ignore_unused_parameters",
        "legacy_stage1", "round_robin_gradients", "zero_hpz_partition_size",
        "zero_quantized_weights", "zero_quantized_nontrainable_weights",
        "zero_quantized_gradients", "memory_efficient_linear", "pipeline_loading_checkpoint",
        "override_module_apply", "log_trace_cache_warnings", "enable_sanity_checks",
        "compute_grad_norm", "leaf_module", "parameter_alignment", "zenflow",
        "save_muon_momentum_buffer_in_memory",
    }),
    "zero_optimization.offload_optimizer": frozenset({
        "device", "nvme_path", "buffer_count", "pin_memory", "pipeline_read", "pipeline_write",
        "fast_init", "ratio", "cpuadam_cores_perc", "super_offload",
    }),
    "zero_optimization.offload_param": frozenset({
        "device", "nvme_path", "buffer_count", "buffer_size", "max_in_cpu", "pin_memory",
    }),
    "fp16": frozenset({
        "enabled", "auto_cast", "loss_scale", "initial_scale_power", "loss_scale_window",
        "hysteresis", "consecutive_hysteresis", "min_loss_scale", "fp16_master_weights_and_grads",
    }),
    "bf16": frozenset({
        "enabled", "immediate_grad_update", "check_grad_overflow",
        "bf16_master_weights_and_grads", "bf16_optimizer_states",
    }),
}  # fmt: skip


def unknown_override_keys(base: dict[str, Any], overrides: dict[str, Any]) -> list[str]:
    """Override keys neither in the base config nor among DeepSpeed's documented keys.

    Checked at the top level and inside the sections of :data:`DOCUMENTED_KEYS` (whose keys
    DeepSpeed itself validates); other sections (``optimizer.params``...) are free-form. Each
    entry is ``dotted.key`` with the nearest allowed keys, so a typo reads as one.
    """
    import difflib

    out: list[str] = []
    stack: list[tuple[str, dict[str, Any], dict[str, Any]]] = [("", overrides, base)]
    while stack:
        prefix, node, known = stack.pop()
        allowed = set(known) | DOCUMENTED_KEYS.get(prefix, frozenset())
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            if key not in allowed:
                near = difflib.get_close_matches(str(key), sorted(allowed), n=3)
                out.append(path + (f" (did you mean {', '.join(near)}?)" if near else ""))
            elif isinstance(value, dict) and path in DOCUMENTED_KEYS:
                sub = known.get(key)
                stack.append((path, value, sub if isinstance(sub, dict) else {}))
    return sorted(out)


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


def ensure_distributed_env() -> None:
    """Let a plain ``python`` process train as a world of one (a launcher sets these itself).

    Its rendezvous store listens on 127.0.0.1 only (see :mod:`corpuslab.training.launch`).
    """
    from corpuslab.training.launch import local_world_of_one

    local_world_of_one()


def skip_cpu_shm_comm_build() -> None:
    """Stop DeepSpeed's CPU backend from JIT-compiling its shared-memory allreduce op.

    On the CPU accelerator ``deepspeed.comm`` builds ``deepspeed_shm_comm`` (a C++ extension,
    ~90 s on two cores) when it first initializes; training communicates through gloo and never
    needs it. DeepSpeed consults the cached ``deepspeed.ops.__compatible_ops__`` dict before
    building, so marking the op incompatible there skips the build.
    """
    import deepspeed.ops

    if _accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def comm_backend() -> str:
    acc = _accelerator()
    return "gloo" if acc.device_name() == "cpu" else acc.communication_backend_name()


class _Accelerator(Protocol):
    """The part of DeepSpeed's accelerator interface used here."""

    def device_name(self, device_index: int | None = None) -> str: ...

    def communication_backend_name(self) -> str: ...


def _accelerator() -> _Accelerator:
    """DeepSpeed's accelerator (``DS_ACCELERATOR``, else detected), chosen on first call."""
    from deepspeed.accelerator import get_accelerator

    # DeepSpeed's accelerator code is unannotated: get_accelerator() is inferred Optional (it
    # caches in a global that starts as None, but always returns one or raises), and the
    # abstract device_name() requires the index that every implementation defaults.
    return cast(_Accelerator, get_accelerator())
