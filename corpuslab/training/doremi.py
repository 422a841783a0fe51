"""DoReMi's Group DRO over domains (Xie et al. 2023, "DoReMi: Optimizing Data Mixtures").

A proxy model trains on a reference mixture's sequences, drawn uniformly over domains (the
paper's Algorithm 1; :class:`corpuslab.training.loop.DomainBalancedSampler`), while domain weights
``alpha`` chase the domains where it lags a fixed reference model most. Uniform sampling gives
every domain the same number of tokens per step, so a small domain's excess is measured as
often as a large one's. At each optimizer step, per domain::

    excess_d = mean over the domain's tokens of max(proxy_loss - reference_loss, 0)
    alpha    <- softmax(log alpha + eta * excess)            (exponentiated gradient)
    alpha    <- (1 - smoothing) * alpha + smoothing / k       (toward uniform)

and the proxy minimizes ``sum_d alpha_d * (mean proxy loss over domain d's tokens)``. The
mixture DoReMi proposes is the average of ``alpha`` over all steps. The per-domain sums are
all-reduced across ranks before each update, so every rank holds the same weights and they
do not depend on the number of ranks. Domains absent from a step's batch get zero excess.

The reference code's defaults are ``eta = 1.0`` and ``smoothing = 1e-3``; the initial weights
are uniform (the paper) or the reference mixture's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from corpuslab.training.checkpoints import load_model
from corpuslab.training.model import GPT


def dro_update(
    alpha: torch.Tensor, excess: torch.Tensor, eta: float, smoothing: float
) -> torch.Tensor:
    """One exponentiated-gradient step on the domain weights, then smoothing toward uniform."""
    if alpha.shape != excess.shape or alpha.dim() != 1:
        raise ValueError(f"alpha {tuple(alpha.shape)} and excess {tuple(excess.shape)} differ")
    log_new = torch.log(alpha) + eta * excess
    log_new = log_new - torch.logsumexp(log_new, dim=0)
    k = alpha.numel()
    return (1.0 - smoothing) * torch.exp(log_new) + smoothing / k


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy (B, T) and log-partition ``log Z`` (B, T), both in float32."""
    flat = logits.reshape(-1, logits.size(-1)).float()
    lse = torch.logsumexp(flat, dim=-1)
    picked = flat.gather(1, targets.reshape(-1, 1)).squeeze(1)
    return (lse - picked).view(targets.shape), lse.view(targets.shape)


@dataclass
class DomainStats:
    """Running per-domain sums over all updates, for the report and the resume state."""

    tokens: list[float]
    excess: list[float]
    proxy_loss: list[float]
    reference_loss: list[float]

    @classmethod
    def zeros(cls, k: int) -> DomainStats:
        return cls([0.0] * k, [0.0] * k, [0.0] * k, [0.0] * k)

    def mean(self, name: str) -> list[float]:
        values = getattr(self, name)
        return [v / t if t else float("nan") for v, t in zip(values, self.tokens, strict=True)]


class GroupDRO:
    """The proxy side of DoReMi inside a training loop: weighted loss and weight updates.

    Per optimizer step: :meth:`begin_step` with the global batch's tokens per domain, then
    :meth:`loss` once per micro-batch with the engine (or any callable returning
    ``(logits, _)``), inputs, targets and each row's domain, then :meth:`end_step`.
    ``alpha`` gives the initial weights (None: uniform); the running state starts empty and is
    restored by :meth:`load_state_dict`.
    """

    _step_tokens: torch.Tensor  # set by begin_step: the step's global tokens per domain
    _sums: torch.Tensor  # set by begin_step: (excess, proxy, reference) loss sums per domain

    def __init__(
        self,
        reference: GPT,
        domains: list[str],
        eta: float = 1.0,
        smoothing: float = 1e-3,
        alpha: torch.Tensor | None = None,
    ) -> None:
        k = len(domains)
        if k < 2:
            raise ValueError(f"DoReMi needs at least two domains, got {domains}")
        self.reference, self.domains, self.eta, self.smoothing = reference, domains, eta, smoothing
        if alpha is None:
            alpha = torch.full((k,), 1.0 / k, dtype=torch.float64)
        self.alpha = alpha.to(torch.float64)
        if self.alpha.shape != (k,) or not math.isclose(float(self.alpha.sum()), 1.0, rel_tol=1e-6):
            raise ValueError(f"initial weights must be {k} numbers summing to 1: {self.alpha}")
        self.alpha_sum = torch.zeros(k, dtype=torch.float64)
        self.updates = 0
        self.stats = DomainStats.zeros(k)
        self.trajectory: list[list[float]] = []  # alpha after each step
        self.excess_trajectory: list[list[float]] = []  # each step's excess
        self.reference.eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)

    def begin_step(self, step_tokens: torch.Tensor) -> None:
        """Start an optimizer step whose global batch holds ``step_tokens[d]`` tokens of d."""
        self._step_tokens = step_tokens.to(torch.float64).cpu()
        self._sums = torch.zeros(3, len(self.domains), dtype=torch.float64)

    def loss(
        self,
        engine: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        row_domains: torch.Tensor,
        z_loss: float = 0.0,
        scale: float = 1.0,
    ) -> tuple[torch.Tensor, float, float]:
        """(weighted loss to backpropagate, mean cross-entropy, z-term) of one micro-batch.

        The loss is this micro-batch's share of ``sum_d alpha_d * mean loss of d's tokens in
        the step's global batch``; ``scale`` (accumulation steps x ranks) undoes the engine's
        averaging over micro-batches and ranks so the shares add up to that objective.
        """
        logits, _ = engine(x)
        ce, lse = token_losses(logits, y)
        with torch.no_grad():
            ref = self.reference.per_token_loss(x, y).to(ce.device)
        k = len(self.domains)
        onehot = F.one_hot(row_domains.to(ce.device).long(), k).to(torch.float64)  # (B, k)
        with torch.no_grad():
            rows = torch.stack(
                [
                    (ce.detach() - ref).clamp(min=0).sum(1).double(),
                    ce.detach().sum(1).double(),
                    ref.sum(1).double(),
                ]
            )  # (3, B): clipped excess, proxy and reference loss sums per row
            self._sums += (rows @ onehot).cpu()
        tokens = self._step_tokens
        per_token = torch.where(tokens > 0, self.alpha / tokens.clamp(min=1), 0.0) * scale
        row_w = (onehot @ per_token.to(onehot.device)).to(ce.dtype)  # (B,)
        weighted = (ce.sum(1) * row_w).sum()
        z_term = z_loss * lse.square().mean() if z_loss > 0 else torch.zeros((), device=ce.device)
        return weighted + z_term, float(ce.detach().mean()), float(z_term.detach())

    def end_step(self, world_size: int = 1, device: Any = "cpu") -> None:
        """Update the weights from the step's per-domain excess (summed over ranks), record them.

        The weights that weighted this step's loss are the previous step's: the update needs
        the excess of the whole global batch, known only after every micro-batch ran. (The
        reference implementation updates per micro-batch, before weighting it; updating per
        step keeps the weights independent of how the batch is split over ranks.)
        """
        import torch.distributed as dist

        sums = self._sums
        if world_size > 1:
            sums = sums.to(device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        excess_sum, proxy_sum, ref_sum = sums
        tokens = self._step_tokens
        excess = torch.where(tokens > 0, excess_sum / tokens.clamp(min=1), 0.0)
        self.alpha = dro_update(self.alpha, excess, self.eta, self.smoothing)
        self.alpha_sum += self.alpha
        self.updates += 1
        for i in range(len(self.domains)):
            self.stats.tokens[i] += float(tokens[i])
            self.stats.excess[i] += float(excess_sum[i])
            self.stats.proxy_loss[i] += float(proxy_sum[i])
            self.stats.reference_loss[i] += float(ref_sum[i])
        self.trajectory.append([float(a) for a in self.alpha])
        self.excess_trajectory.append([float(e) for e in excess])

    @property
    def average(self) -> list[float]:
        """DoReMi's result: the mean of the weights over all updates (current ones if none)."""
        if not self.updates:
            return [float(a) for a in self.alpha]
        avg = self.alpha_sum / self.updates
        return [float(a) for a in avg / avg.sum()]

    def metrics(self) -> dict[str, float]:
        """Current weights and mean excess per domain, for the step log."""
        out = {
            f"doremi.weight.{d}": float(a) for d, a in zip(self.domains, self.alpha, strict=True)
        }
        for d, e in zip(self.domains, self.stats.mean("excess"), strict=True):
            if not math.isnan(e):
                out[f"doremi.excess.{d}"] = e
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha.tolist(),
            "alpha_sum": self.alpha_sum.tolist(),
            "updates": self.updates,
            "stats": vars(self.stats),
            "trajectory": self.trajectory,
            "excess_trajectory": self.excess_trajectory,
            "domains": self.domains,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["domains"] != self.domains:
            raise ValueError(f"DoReMi state is over {state['domains']}, run over {self.domains}")
        self.alpha = torch.tensor(state["alpha"], dtype=torch.float64)
        self.alpha_sum = torch.tensor(state["alpha_sum"], dtype=torch.float64)
        self.updates = int(state["updates"])
        self.stats = DomainStats(**state["stats"])
        self.trajectory = [list(a) for a in state["trajectory"]]
        self.excess_trajectory = [list(e) for e in state["excess_trajectory"]]

    def report(self) -> dict[str, Any]:
        """What ``doremi.json`` holds: the result, the trajectory and per-domain losses."""
        return {
            "domains": self.domains,
            "eta": self.eta,
            "smoothing": self.smoothing,
            "updates": self.updates,
            "average_weights": dict(zip(self.domains, self.average, strict=True)),
            "final_weights": dict(zip(self.domains, map(float, self.alpha), strict=True)),
            "mean_excess_loss": dict(zip(self.domains, self.stats.mean("excess"), strict=True)),
            "mean_proxy_loss": dict(zip(self.domains, self.stats.mean("proxy_loss"), strict=True)),
            "mean_reference_loss": dict(
                zip(self.domains, self.stats.mean("reference_loss"), strict=True)
            ),
            "tokens": dict(zip(self.domains, self.stats.tokens, strict=True)),
            "trajectory": self.trajectory,
            "excess_trajectory": self.excess_trajectory,
        }


def load_reference(run_dir: str | Path, device: torch.device | str = "cpu") -> GPT:
    """The reference model of a finished run folder (``model.pt`` + ``model_config.json``)."""
    run = Path(run_dir)
    for name in ("model.pt", "model_config.json"):
        if not (run / name).is_file():
            raise FileNotFoundError(
                f"DoReMi reference run {run} has no {name}: materialize the reference first"
            )
    return load_model(run).to(device)


def initial_alpha(domains: Sequence[str], weights: dict[str, float] | None) -> torch.Tensor:
    """Uniform start (None) or the given weights in the token file's domain order."""
    if weights is None:
        return torch.full((len(domains),), 1.0 / len(domains), dtype=torch.float64)
    missing = [d for d in domains if d not in weights]
    if missing:
        raise ValueError(f"initial DoReMi weights lack domains {missing}")
    a = np.array([weights[d] for d in domains], dtype=np.float64)
    if (a < 0).any() or a.sum() <= 0:
        raise ValueError(f"initial DoReMi weights must be non-negative, not all zero: {weights}")
    return torch.from_numpy(a / a.sum())
