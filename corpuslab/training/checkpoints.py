"""DeepSpeed checkpoints that a killed run can always resume from, and LAWA averaging of them.

Layout of ``<out_dir>/checkpoints``::

    latest                      tag of the newest complete checkpoint (replaced atomically)
    step<N>/                    one complete checkpoint
        mp_rank_00_model_states.pt, *optim_states.pt   DeepSpeed's own files (any ZeRO stage)
        model.pt                consolidated fp32 state dict of the model (LAWA, inspection)
        run.json                step, resume fingerprint and the run spec
        trainer_state_rank<r>.json each rank's RNG states and data position (JSON: no pickle)
    .tmp-step<N>/               a checkpoint being written

Every rank writes into ``.tmp-step<N>``; after a barrier rank 0 renames it to ``step<N>`` and only
then rewrites ``latest`` through a temporary file and ``os.replace``. A process killed at any
moment therefore leaves ``latest`` naming a complete checkpoint (or no ``latest`` at all); the
next start deletes leftover ``.tmp-*`` folders. DeepSpeed's own ``latest`` (``save_latest``) is
not used: it truncates the file in place.

Nothing of ours is unpickled: trainer and RNG state are JSON, weights are read with
``torch.load(weights_only=True)``. DeepSpeed's own resume still unpickles its model-states and
optimizer files (``torch.load(weights_only=False)`` in its checkpoint engine), and unpickling
can run code, so :func:`check_trusted` refuses to resume from a checkpoint that another user
owns or that anyone but its owner's group could have written.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from corpuslab.fileio import atomic_path
from corpuslab.training.model import GPT, GPTConfig

LATEST = "latest"
TMP_PREFIX = ".tmp-"
RUN_INFO = "run.json"
MODEL = "model.pt"
TRAINER_STATE = "trainer_state_rank{rank}.json"
_TAG = re.compile(r"^step(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete, or does not fit the run being resumed."""


def tag_for(step: int) -> str:
    return f"step{step}"


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags of complete checkpoints (renamed into place, with ``run.json``), oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for child in ckpt_dir.iterdir():
        m = _TAG.match(child.name)
        if m and child.is_dir() and (child / RUN_INFO).is_file():
            found.append((int(m.group(1)), child.name))
    return [tag for _, tag in sorted(found)]


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag ``latest`` names, or None when there is no checkpoint to resume from."""
    path = ckpt_dir / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    if not (ckpt_dir / tag / RUN_INFO).is_file():
        raise CheckpointError(f"{path} names {tag!r}, but {ckpt_dir / tag} is not a checkpoint")
    return tag


def read_run_info(tag_dir: Path) -> dict[str, Any]:
    return json.loads((tag_dir / RUN_INFO).read_text())


def remove_stale(ckpt_dir: Path) -> list[str]:
    """Delete ``.tmp-*`` folders left by a save that was killed; returns their names."""
    if not ckpt_dir.is_dir():
        return []
    stale = [p for p in ckpt_dir.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return sorted(p.name for p in stale)


def rng_state() -> dict[str, Any]:
    """Every RNG the training process draws from (python, numpy, torch CPU and CUDA), as JSON.

    Plain lists and numbers (floats round-trip exactly through JSON), so restoring needs no
    unpickling.
    """
    version, words, gauss_next = random.getstate()
    algorithm, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(words), "gauss_next": gauss_next},
        "numpy": {
            "algorithm": algorithm,
            "keys": np.asarray(keys).tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    np.random.set_state(
        (
            npy["algorithm"],
            np.asarray(npy["keys"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def check_trusted(ckpt_dir: Path, tag: str) -> None:
    """Refuse a checkpoint whose files someone else could have written (they get unpickled).

    Every path DeepSpeed reads (the checkpoint folder, ``latest``, the tag folder and its
    files) must be owned by this process's user, be no symbolic link, and not be writable by
    every user. Group write is allowed: a shared group is the operator's trust decision.
    """
    uid = os.geteuid()
    tag_dir = ckpt_dir / tag
    paths = [ckpt_dir, ckpt_dir / LATEST, tag_dir, *sorted(tag_dir.iterdir())]
    for path in paths:
        if not os.path.lexists(path):
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            raise CheckpointError(f"{path} is a symbolic link; refusing to resume from it")
        if st.st_uid != uid:
            raise CheckpointError(
                f"{path} belongs to uid {st.st_uid}, not to this user ({uid}): DeepSpeed "
                "unpickles checkpoint files, which can run code; refusing to resume from it"
            )
        if st.st_mode & stat.S_IWOTH:
            raise CheckpointError(
                f"{path} is writable by every user: DeepSpeed unpickles checkpoint files, "
                f"which can run code; refusing to resume (chmod o-w {path} if you trust it)"
            )


def full_fp32_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's complete fp32 state dict on CPU, from ZeRO's fp32 master weights if any.

    Collective under ZeRO (each parameter is gathered from the ranks' partitions): every rank
    must call it, in the same order. Tied parameters stay one tensor under both names.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    out: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) not in done:
            full = safe_get_full_fp32_param(tensor) if isinstance(tensor, nn.Parameter) else None
            value = tensor.detach() if full is None else full
            done[id(tensor)] = value.float().cpu().clone()
        out[name] = done[id(tensor)]
    return out


def save_checkpoint(
    engine: Any,
    ckpt_dir: Path,
    step: int,
    client_state: dict[str, Any],
    rank_state: dict[str, Any],
    run_info: dict[str, Any],
    keep: int = 0,
) -> dict[str, torch.Tensor]:
    """Write checkpoint ``step<step>`` atomically on every rank; returns the fp32 state dict.

    Collective: all ranks call it. ``client_state`` goes into DeepSpeed's model-states file,
    ``rank_state`` into this rank's ``trainer_state_rank<r>.pt``, ``run_info`` into ``run.json``.
    With ``keep > 0`` only the newest ``keep`` complete checkpoints survive.
    """
    import torch.distributed as dist

    rank = dist.get_rank()
    tag, tmp_tag = tag_for(step), f"{TMP_PREFIX}{tag_for(step)}"
    tmp_dir, final = ckpt_dir / tmp_tag, ckpt_dir / tag
    if rank == 0:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    state = full_fp32_state_dict(engine.module)  # collective: before any rank-0-only work
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
    (tmp_dir / TRAINER_STATE.format(rank=rank)).write_text(json.dumps(rank_state))
    if rank == 0:
        torch.save(state, tmp_dir / MODEL)
        (tmp_dir / RUN_INFO).write_text(json.dumps({"tag": tag, **run_info}, indent=2) + "\n")
    dist.barrier()
    if rank == 0:
        if final.exists():  # left by an attempt that died before updating latest
            shutil.rmtree(final)
        tmp_dir.replace(final)
        with atomic_path(ckpt_dir / LATEST) as tmp:
            tmp.write_text(tag)
        if keep:
            for old in complete_tags(ckpt_dir)[:-keep]:
                shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    dist.barrier()
    return state


def load_checkpoint(engine: Any, ckpt_dir: Path, tag: str) -> tuple[dict, dict]:
    """Restore engine (weights, optimizer partitions) from ``tag``; (client state, rank state)."""
    import torch.distributed as dist

    rank_file = ckpt_dir / tag / TRAINER_STATE.format(rank=dist.get_rank())
    if not rank_file.is_file():
        if (ckpt_dir / tag / f"trainer_state_rank{dist.get_rank()}.pt").is_file():
            raise CheckpointError(
                f"{ckpt_dir / tag} was written by an older corpuslab whose trainer state is "
                "pickled, which is no longer loaded: delete the run folder to start over"
            )
        raise CheckpointError(f"{rank_file} is missing: the checkpoint was saved by fewer ranks")
    check_trusted(ckpt_dir, tag)
    path, client = engine.load_checkpoint(
        str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    return client or {}, json.loads(rank_file.read_text())


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, torch.Tensor]:
    """LAWA: the element-wise mean of several checkpoints' parameters (fp64 sum, fp32 result).

    Each path is a checkpoint folder (its ``model.pt`` is read) or a state-dict file. Tensors
    tied in the first state dict (one storage under two names) stay tied in the result.
    """
    if not paths:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    sums: dict[str, torch.Tensor] = {}
    alias: dict[str, str] = {}
    keys: list[str] = []
    for i, raw in enumerate(paths):
        path = Path(raw)
        file = path / MODEL if path.is_dir() else path
        state = torch.load(file, map_location="cpu", weights_only=True)
        if i == 0:
            keys = list(state)
            first_name: dict[int, str] = {}
            for k, t in state.items():
                alias[k] = first_name.setdefault(t.untyped_storage().data_ptr(), k)
        elif list(state) != keys:
            raise ValueError(f"{file} holds other tensors than {paths[0]}")
        for k in keys:
            if alias[k] != k:
                continue
            t = state[k].detach().to(torch.float64)
            if i == 0:
                sums[k] = t.clone()
            elif t.shape != sums[k].shape:
                raise ValueError(f"{file}: {k} has shape {tuple(t.shape)}, not {sums[k].shape}")
            else:
                sums[k] += t
    means = {k: (v / len(paths)).to(torch.float32) for k, v in sums.items()}
    return {k: means[alias[k]] for k in keys}


def load_model(
    run_dir: str | Path, map_location: str | torch.device = "cpu", weights: str = "model.pt"
) -> GPT:
    """Rebuild a trained model from ``model_config.json`` and a state dict in a run folder.

    ``weights`` picks the state dict: ``model.pt`` (the final weights) or ``model_lawa.pt``
    (the average of the last checkpoints, when the run declared ``lawa_k``).
    """
    run = Path(run_dir)
    config = GPTConfig(**json.loads((run / "model_config.json").read_text()))
    model = GPT(config)
    state = torch.load(run / weights, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model.eval()
