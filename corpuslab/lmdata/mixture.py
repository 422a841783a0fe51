"""Data mixtures: held-out split, domain weights and resampling to a token budget.

A mixture turns per-domain filtered pools into a list of training documents whose token counts
follow the declared domain weights. Where a domain holds fewer tokens than its share, its
documents are repeated and the repetition factor is recorded (Muennighoff et al. 2023, "Scaling
Data-Constrained Language Models": repeating beyond ~4 epochs degrades the model).

Weights: natural (token-proportional), uniform, manual, temperature (tokens^(1/T)) and BiMix's
entropy-driven weights (Ge et al. 2024: each domain's conditional token entropy, normalized).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike


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


def uniform_weights(domains: Sequence[str]) -> dict[str, float]:
    """The same weight for every domain of the mixture."""
    if not domains:
        raise ValueError("a mixture needs at least one domain")
    return {d: 1.0 / len(domains) for d in domains}


def temperature_weights(
    tokens_per_domain: Mapping[str, int], temperature: float
) -> dict[str, float]:
    """Weights proportional to ``tokens ** (1 / T)``: T=1 is natural, large T tends to uniform.

    Computed in log space, so huge token counts and small temperatures do not overflow.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if sum(tokens_per_domain.values()) <= 0:
        raise ValueError("no tokens in any domain: every document was filtered out")
    logs = {d: math.log(n) / temperature for d, n in tokens_per_domain.items() if n > 0}
    top = max(logs.values())
    raw = {d: math.exp(logs[d] - top) if d in logs else 0.0 for d in tokens_per_domain}
    total = sum(raw.values())
    return {d: w / total for d, w in raw.items()}


def conditional_entropy(tokens: np.ndarray, offsets: np.ndarray | None = None) -> float:
    """H(X_t | X_{t-1}) in bits from the bigram counts of a token stream.

    ``offsets`` (``n_docs + 1`` positions into ``tokens``) marks document boundaries: bigrams
    never span two documents. H = (sum_a c(a) log2 c(a) - sum_ab c(a,b) log2 c(a,b)) / N over
    the N bigrams, c(a) counting bigrams whose first token is a. Zero when fewer than one bigram.
    """
    tok = np.asarray(tokens).astype(np.uint64, copy=False)
    if tok.size < 2:
        return 0.0
    first, second = tok[:-1], tok[1:]
    if offsets is not None:
        starts = np.asarray(offsets, dtype=np.int64)[1:-1]
        starts = starts[(starts > 0) & (starts < tok.size)]
        keep = np.ones(tok.size - 1, dtype=bool)
        keep[starts - 1] = False  # the pair (last token of a doc, first token of the next)
        first, second = first[keep], second[keep]
    if first.size == 0:
        return 0.0
    width = np.uint64(int(tok.max()) + 1)
    pairs, pair_counts = np.unique(first * width + second, return_counts=True)
    # pairs are sorted by code, so each first token's pairs are contiguous: sum them per token
    ctx = pairs // width
    starts = np.concatenate(([0], np.flatnonzero(ctx[1:] != ctx[:-1]) + 1))
    pc = pair_counts.astype(np.float64)
    cc = np.add.reduceat(pc, starts)
    h = (float(np.dot(cc, np.log2(cc))) - float(np.dot(pc, np.log2(pc)))) / first.size
    return max(h, 0.0)


def entropy_weights(
    entropy_per_domain: Mapping[str, float], normalization: str = "linear"
) -> dict[str, float]:
    """BiMix's entropy-driven weights: ``H_d / sum H`` (linear) or ``softmax(H)``."""
    if not entropy_per_domain:
        raise ValueError("a mixture needs at least one domain")
    if normalization == "linear":
        total = sum(entropy_per_domain.values())
        if total <= 0:
            raise ValueError("every domain has zero conditional entropy: no weights to derive")
        return {d: h / total for d, h in entropy_per_domain.items()}
    if normalization == "softmax":
        top = max(entropy_per_domain.values())
        raw = {d: math.exp(h - top) for d, h in entropy_per_domain.items()}
        total = sum(raw.values())
        return {d: w / total for d, w in raw.items()}
    raise ValueError(f"entropy normalization must be 'linear' or 'softmax', not {normalization!r}")


# Muennighoff et al. 2023 ("To Repeat or Not To Repeat"): beyond ~4 epochs returns diminish.
def strategy_weights(
    strategy: str,
    domains: Sequence[str],
    available: Mapping[str, int],
    *,
    weights: Mapping[str, float] | None = None,
    temperature: float | None = None,
    entropy: Mapping[str, float] | None = None,
    entropy_normalization: str = "linear",
    learned: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The weights of a declared ``strategy`` over ``domains``.

    ``available`` is each domain's training tokens; ``weights`` the manual weights;
    ``temperature`` the temperature's T; ``entropy`` each domain's conditional token entropy
    (BiMix); ``learned`` the weights another stage produced (DoReMi's proxy).
    """
    if strategy == "natural":
        return natural_weights(available)
    if strategy == "uniform":
        return uniform_weights(domains)
    if strategy == "manual":
        return manual_weights(weights or {}, domains)
    if strategy == "temperature":
        if temperature is None:
            raise ValueError("strategy 'temperature' needs a temperature")
        return temperature_weights(available, temperature)
    if strategy == "entropy":
        if entropy is None:
            raise ValueError("strategy 'entropy' needs each domain's entropy")
        return entropy_weights(entropy, entropy_normalization)
    if strategy == "doremi":
        if learned is None:
            raise ValueError("strategy 'doremi' needs the proxy's weights")
        unknown = sorted(set(learned) - set(domains))
        if unknown:
            raise ValueError(f"learned weights name domains {unknown} the mixture does not have")
        return manual_weights(learned, domains)
    raise ValueError(f"unknown mixture strategy {strategy!r}")


MAX_USEFUL_EPOCHS = 4.0


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
    """Weights, per-domain budget fill and the sampled documents of a mixture."""

    weights: dict[str, float]
    domains: dict[str, DomainPlan]
    # (domain, document index within that domain's list) in sampling order, repeats included
    selection: list[tuple[str, int]] = field(default_factory=list)

    @property
    def repeated_domains(self) -> dict[str, float]:
        """Domains whose documents are used more than once, with their repetition factor."""
        return {d: p.repetition for d, p in self.domains.items() if p.repetition > 1.0}

    @property
    def over_repeated_domains(self) -> dict[str, float]:
        """Domains repeated beyond :data:`MAX_USEFUL_EPOCHS`, where extra epochs help little."""
        return {
            d: p.repetition for d, p in self.domains.items() if p.repetition > MAX_USEFUL_EPOCHS
        }


def plan_mixture(
    doc_tokens: Mapping[str, ArrayLike],
    weights: Mapping[str, float],
    token_budget: int,
    seed: int = 0,
) -> MixturePlan:
    """Sample documents of each domain to ``weight * budget`` tokens, repeating when short.

    Documents are visited in a seeded random order; a domain is cycled through whole epochs
    (a fresh permutation each epoch) until its target is reached, so repetition is spread evenly.
    ``doc_tokens`` gives each domain's tokens per document (a list or an array).
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
