"""Optimization: nanoGPT's AdamW parameter groups and AdaGC per-parameter clipping."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch

from corpuslab.training.runspec import AdaGCConfig

if TYPE_CHECKING:
    from deepspeed.utils.tensor_fragment import tensor_fragment


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


class _LinkedParam(Protocol):
    """What ZeRO 1/2 attach to a parameter (``deepspeed.utils.mixed_precision_linkage``).

    ``_hp_mapping`` links it to its fp32 partition: None where this rank holds none of it.
    """

    _hp_mapping: tensor_fragment | None
    _index_in_param_group: int


def _local_grad(param: torch.nn.Parameter, stage: int) -> torch.Tensor | None:
    """The piece of ``param``'s averaged gradient this rank holds (None: nothing here)."""
    if stage == 3:
        from deepspeed.utils import safe_get_local_grad

        return safe_get_local_grad(param)
    if stage == 0 or not hasattr(param, "_hp_mapping"):
        return param.grad
    linked = cast(_LinkedParam, param)  # ZeRO 1/2 set these attributes; torch's stubs can't know
    mapping = linked._hp_mapping
    if mapping is None:
        return None
    piece = mapping.get_lp_grad_fragment(linked._index_in_param_group)
    address = mapping.lp_fragment_address
    if piece.numel() == param.numel() and address.numel != param.numel():
        piece = piece.view(-1).narrow(0, address.start, address.numel)  # full-size buffer
    return piece
