"""Trainer state without pickle, and no resume from checkpoint files someone else could write."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from corpuslab.training import checkpoints as ckpt


def _draws() -> tuple[list[float], list[float], list[float]]:
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        list(np.random.rand(3)) + [float(np.random.randn())],
        torch.rand(3).tolist(),
    )


def test_rng_state_round_trips_through_json() -> None:
    """Every generator continues exactly where it was, from a JSON copy of its state."""
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in both Python's and numpy's state
    np.random.randn()
    saved = json.loads(json.dumps(ckpt.rng_state()))
    expected = _draws()
    _draws()  # move every generator on
    ckpt.set_rng_state(saved)
    assert _draws() == expected


def _checkpoint(tmp_path: Path) -> Path:
    ckpt_dir = tmp_path / "checkpoints"
    (ckpt_dir / "step4").mkdir(parents=True)
    (ckpt_dir / "step4" / "mp_rank_00_model_states.pt").write_bytes(b"pickled by DeepSpeed")
    (ckpt_dir / "step4" / "run.json").write_text("{}")
    (ckpt_dir / "latest").write_text("step4")
    for p in [ckpt_dir, *ckpt_dir.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return ckpt_dir


def test_a_checkpoint_others_could_write_is_refused(tmp_path: Path) -> None:
    ckpt_dir = _checkpoint(tmp_path)
    ckpt.check_trusted(ckpt_dir, "step4")  # ours, 644/755: fine
    states = ckpt_dir / "step4" / "mp_rank_00_model_states.pt"
    states.chmod(0o646)
    with pytest.raises(ckpt.CheckpointError, match="writable by every user"):
        ckpt.check_trusted(ckpt_dir, "step4")
    states.chmod(0o644)
    (ckpt_dir / "step4").chmod(0o777)
    with pytest.raises(ckpt.CheckpointError, match="step4 is writable by every user"):
        ckpt.check_trusted(ckpt_dir, "step4")
    (ckpt_dir / "step4").chmod(0o755)
    states.unlink()
    states.symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(ckpt.CheckpointError, match="symbolic link"):
        ckpt.check_trusted(ckpt_dir, "step4")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_a_checkpoint_another_user_owns_is_refused(tmp_path: Path) -> None:
    ckpt_dir = _checkpoint(tmp_path)
    os.chown(ckpt_dir / "step4" / "mp_rank_00_model_states.pt", 65534, 65534)  # nobody
    with pytest.raises(ckpt.CheckpointError, match="belongs to uid 65534"):
        ckpt.check_trusted(ckpt_dir, "step4")
