"""Model FLOPs utilization: the peak FLOP/s of a device and the optimizer state a rank holds.

MFU = ``flops_per_token x tokens_per_s / (peak_flops x world_size)``, with ``flops_per_token =
6N + 12 L H Q T`` (:meth:`ModelDims.flops_per_token`) and the peak per device declared
(``train.peak_flops``), looked up for known GPUs (:data:`PEAK_FLOPS`, dense bf16) or, on CPU,
this machine's fp32 matmul throughput with the rank's threads, measured once and cached
(``$CORPUSLAB_CACHE``, default ``~/.cache/corpuslab``). A peak measured afresh at every run
would move with the load: a busier machine would report a lower peak and so a higher MFU.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from corpuslab.fileio import atomic_path
from corpuslab.training.runspec import PEAK_FLOPS, TrainConfig


def measure_matmul_flops(seconds: float = 3.0, n: int = 512, trials: int = 10) -> float:
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
    return cpu_peak_flops()


def _cache_dir() -> Path:
    from corpuslab.layout import cache_root

    return cache_root()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_peak_flops(remeasure: bool = False) -> tuple[float, str]:
    """This machine's fp32 matmul peak with torch's current threads: measured once, cached."""
    key = f"{_cpu_model()}|cores={os.cpu_count()}|threads={torch.get_num_threads()}"
    key += f"|torch={torch.__version__}"
    path = _cache_dir() / "cpu_peak_flops.json"
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    if remeasure or key not in cache:
        cache[key] = {"flops": measure_matmul_flops(), "measured_at": time.time()}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(cache, indent=2, sort_keys=True))
    when = time.strftime("%Y-%m-%d", time.gmtime(cache[key]["measured_at"]))
    return float(cache[key]["flops"]), f"cpu fp32 matmul peak, measured {when}, cached in {path}"


def optimizer_state_numel(engine: Any) -> int:
    """Elements of optimizer state (AdamW moments) this rank holds: ZeRO shrinks it per rank."""
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    return sum(
        t.numel()
        for state in base.state.values()
        for key, t in state.items()
        if torch.is_tensor(t) and key != "step"
    )
