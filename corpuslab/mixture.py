"""Data mixtures: held-out split, domain weights and resampling to a token budget.

A mixture turns per-domain filtered pools into a list of training documents whose token counts
follow the declared domain weights. Where a domain holds fewer tokens than its share, its
documents are repeated and the repetition factor is recorded (Muennighoff et al. 2023, "Scaling
Data-Constrained Language Models": repeating beyond ~4 epochs degrades the model).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


def is_heldout(doc_id: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic held-out membership from the id alone, stable across reruns and shards."""
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def natural_weights(tokens_per_domain: Mapping[str, int]) -> dict[str, float]:
    """Token-proportional weights: each domain at its share of the available tokens."""
    total = sum(tokens_per_domain.values())
    if total <= 0:
        raise ValueError("no tokens in any domain: every document was filtered out")
    return {d: n / total for d, n in tokens_per_domain.items()}


def manual_weights(weights: Mapping[str, float], domains: Sequence[str]) -> dict[str, float]:
    """Declared weights normalized to sum to one; undeclared domains get weight zero."""
    total = sum(weights.get(d, 0.0) for d in domains)
    if total <= 0:
        raise ValueError("manual weights sum to zero over the mixture's domains")
    return {d: weights.get(d, 0.0) / total for d in domains}


@dataclass
class DomainPlan:
    """How one domain fills its share of the budget."""

    available_tokens: int
    target_tokens: int
    selected_tokens: int = 0
    documents: int = 0
    repetition: float = 0.0  # selected / available; > 1 means documents were repeated


@dataclass
class MixturePlan:
    weights: dict[str, float]
    domains: dict[str, DomainPlan]
    # (domain, document index within that domain's list) in sampling order, repeats included
    selection: list[tuple[str, int]] = field(default_factory=list)

    @property
    def repeated_domains(self) -> dict[str, float]:
        return {d: p.repetition for d, p in self.domains.items() if p.repetition > 1.0}


def plan_mixture(
    doc_tokens: Mapping[str, Sequence[int]],
    weights: Mapping[str, float],
    token_budget: int,
    seed: int = 0,
) -> MixturePlan:
    """Sample documents of each domain to ``weight * budget`` tokens, repeating when short.

    Documents are visited in a seeded random order; a domain is cycled through whole epochs
    (a fresh permutation each epoch) until its target is reached, so repetition is spread evenly.
    """
    rng = np.random.default_rng(seed)
    plan = MixturePlan(weights=dict(weights), domains={})
    for domain in sorted(doc_tokens):
        counts = np.asarray(doc_tokens[domain], dtype=np.int64)
        available = int(counts.sum())
        target = int(round(weights.get(domain, 0.0) * token_budget))
        dp = DomainPlan(available_tokens=available, target_tokens=target)
        plan.domains[domain] = dp
        if target == 0:
            continue
        if available == 0:
            raise ValueError(
                f"domain {domain!r} has weight > 0 but no documents left after filtering"
            )
        picked: list[int] = []
        selected = 0
        max_epochs = math.ceil(target / available) + 1
        for _ in range(max_epochs):
            for idx in rng.permutation(len(counts)):
                if selected >= target:
                    break
                picked.append(int(idx))
                selected += int(counts[idx])
            if selected >= target:
                break
        dp.selected_tokens = selected
        dp.documents = len(picked)
        dp.repetition = selected / available
        plan.selection.extend((domain, i) for i in picked)
    return plan
