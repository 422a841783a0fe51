"""Model FLOPs utilization: the peak FLOP/s of a device and the optimizer state a rank holds.

MFU = ``flops_per_token x tokens_per_s / (peak_flops x world_size)``, with ``flops_per_token =
6N + 12 L H Q T`` (:meth:`ModelDims.flops_per_token`) and the peak per device declared
(``train.peak_flops``), looked up for known GPUs (:data:`PEAK_FLOPS`, dense bf16, the vendors'
theoretical figures) or, on CPU, the theoretical fp32 peak of the rank's threads (clock x FLOPs
per cycle of the widest vector FMA the CPU has, :func:`cpu_theoretical_peak`), as PaLM defines
MFU. A *measured* peak moves with the load: measured on a busy machine it comes out low and the
MFU above 100% (the matmul probe, :func:`cpu_peak_flops`, measured once and cached in
``$CORPUSLAB_CACHE``, stays for comparison and for a CPU whose clock cannot be read).
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
    _ = a @ b  # warm the kernels
    best = 0.0
    for _ in range(trials):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / trials:
            _ = a @ b
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
    return cpu_theoretical_peak(torch.get_num_threads())


# fp32 FLOPs per cycle per core of the widest FMA: 2 units x (16 lanes AVX-512 / 8 lanes AVX2)
# x 2 (multiply and add). Two FMA units is the server-part figure; a part with one has half
# this peak, so its MFU reads low, never above 100%.
FLOPS_PER_CYCLE = (("avx512f", 64), ("avx2", 32), ("avx", 16), ("sse2", 8))


def _cpu_flags_and_clock() -> tuple[set[str], float]:
    flags: set[str] = set()
    mhz = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("cpu MHz"):
                mhz = max(mhz, float(line.split(":", 1)[1]))
    except (OSError, ValueError):
        pass
    try:  # the highest clock the cores may run at, where the kernel says
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        mhz = max(mhz, int(khz) / 1000)
    except (OSError, ValueError):
        pass
    return flags, mhz * 1e6


def cpu_theoretical_peak(threads: int) -> tuple[float, str]:
    """(fp32 FLOP/s of ``threads`` cores at full vector width and clock, how it was computed)."""
    flags, hz = _cpu_flags_and_clock()
    if not hz:
        return cpu_peak_flops()  # no clock to compute from: the measured probe, said so
    isa, per_cycle = next(((f, n) for f, n in FLOPS_PER_CYCLE if f in flags), ("scalar", 2))
    peak = threads * hz * per_cycle
    return peak, (
        f"theoretical cpu fp32 peak: {threads} thread(s) x {hz / 1e9:.2f} GHz x {per_cycle} "
        f"FLOP/cycle ({isa}, 2 FMA units)"
    )


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
