"""DeepSpeed glue: fill a config's ``"auto"`` fields from the run, and start the process group.

Configs live in ``infra/deepspeed/`` (one JSON a ZeRO stage, batch fields ``"auto"``, as axolotl
keeps them); the trainer fills them from :func:`~corpuslab.training.runspec.batch_layout`.
"""

from __future__ import annotations

import copy
import os
import socket
from typing import Any

from corpuslab.training.runspec import RunSpec, batch_layout

AUTO = "auto"


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
    """Let a plain ``python`` process train as a world of one (torchrun sets these itself)."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


def skip_cpu_shm_comm_build() -> None:
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


def comm_backend() -> str:
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    return "gloo" if acc.device_name() == "cpu" else acc.communication_backend_name()
