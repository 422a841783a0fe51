"""Checkpoint bookkeeping without DeepSpeed: complete tags, ``latest``, leftovers, LAWA means."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from corpuslab.training.checkpoints import (
    CheckpointError,
    average_checkpoints,
    complete_tags,
    latest_tag,
    remove_stale,
)
from corpuslab.training.model import GPT, GPTConfig


def test_average_checkpoints_is_the_elementwise_mean_and_keeps_ties(tmp_path: Path) -> None:
    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        state = GPT(
            GPTConfig(vocab_size=50, seq_len=8, n_layer=1, n_head=2, d_model=16)
        ).state_dict()
        folder = tmp_path / f"step{seed}"
        folder.mkdir()
        torch.save(state, folder / "model.pt")
        states.append(state)
    mean = average_checkpoints(
        [tmp_path / "step0", tmp_path / "step1", tmp_path / "step2/model.pt"]
    )
    assert mean.keys() == states[0].keys()
    for k, v in mean.items():
        assert v.dtype == torch.float32
        assert torch.allclose(v, (states[0][k] + states[1][k] + states[2][k]) / 3, atol=1e-7)
    assert mean["lm_head.weight"] is mean["transformer.wte.weight"]  # tied stays tied
    model = GPT(GPTConfig(vocab_size=50, seq_len=8, n_layer=1, n_head=2, d_model=16))
    model.load_state_dict(mean)  # a loadable model
    assert torch.equal(
        average_checkpoints([tmp_path / "step1"])["transformer.wpe.weight"],
        states[1]["transformer.wpe.weight"],
    )
    with pytest.raises(ValueError, match="at least one"):
        average_checkpoints([])


def test_average_checkpoints_rejects_different_models(tmp_path: Path) -> None:
    torch.save(GPT(GPTConfig(50, 8, 1, 2, 16)).state_dict(), tmp_path / "a.pt")
    torch.save(GPT(GPTConfig(50, 8, 2, 2, 16)).state_dict(), tmp_path / "b.pt")
    torch.save(GPT(GPTConfig(60, 8, 1, 2, 16)).state_dict(), tmp_path / "c.pt")
    with pytest.raises(ValueError, match="other tensors"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])
    with pytest.raises(ValueError, match="shape"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "c.pt"])


def test_latest_names_only_complete_checkpoints_and_leftovers_are_removed(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step10").mkdir(parents=True)
    (ckpts / "step10" / "run.json").write_text("{}")
    (ckpts / ".tmp-step20").mkdir()  # a save killed half-way
    (ckpts / "latest").write_text("step10")
    assert latest_tag(ckpts) == "step10" and complete_tags(ckpts) == ["step10"]
    assert remove_stale(ckpts) == [".tmp-step20"] and not (ckpts / ".tmp-step20").exists()
    (ckpts / "latest").write_text("step20")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        latest_tag(ckpts)
    shutil.rmtree(ckpts)
    assert latest_tag(ckpts) is None
