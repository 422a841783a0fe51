"""The CPU peak behind MFU does not move with the load: theoretical (clock x vector FLOPs per
cycle), or declared; the matmul probe beside it is measured once per machine and cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpuslab.training import mfu
from corpuslab.training.runspec import TrainConfig


def test_cpu_peak_is_measured_once_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORPUSLAB_CACHE", str(tmp_path))
    calls = []
    real = mfu.measure_matmul_flops

    def measured(*args: object, **kwargs: object) -> float:
        calls.append(1)
        return real(seconds=0.2, trials=4)

    monkeypatch.setattr(mfu, "measure_matmul_flops", measured)
    peak, source = mfu.cpu_peak_flops()
    assert peak > 1e8 and len(calls) == 1  # a real measurement: > 0.1 GFLOP/s on any CPU
    assert str(tmp_path / "cpu_peak_flops.json") in source  # $CORPUSLAB_CACHE is the folder
    again, _ = mfu.cpu_peak_flops()
    assert again == peak and len(calls) == 1  # read back: a busy machine reports the same peak
    # the run's MFU divides by the theoretical peak unless the run declares its own: it bounds
    # what any matmul reaches (so no MFU above 100%), and the load does not change it
    theoretical, how = mfu.peak_flops_per_device(TrainConfig(steps=1))
    assert how.startswith("theoretical cpu fp32 peak") and theoretical >= peak
    assert mfu.peak_flops_per_device(TrainConfig(steps=1))[0] == theoretical
    assert mfu.peak_flops_per_device(TrainConfig(steps=1, peak_flops=5e11)) == (5e11, "declared")
    fresh, _ = mfu.cpu_peak_flops(remeasure=True)
    assert len(calls) == 2 and fresh > 1e8
