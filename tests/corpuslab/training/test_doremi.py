"""DoReMi's Group DRO: the weight update, the weighted loss and where the weights move."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from corpuslab.training.doremi import GroupDRO, dro_update, initial_alpha, token_losses
from corpuslab.training.model import GPT, GPTConfig

VOCAB, SEQ = 64, 16


def test_dro_update_matches_the_exponentiated_gradient_step_by_hand() -> None:
    alpha = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    excess = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    eta, eps = 1.0, 0.1
    raw = [0.5, 0.25 * math.e, 0.25 * math.exp(0.5)]
    expected = [(1 - eps) * r / sum(raw) + eps / 3 for r in raw]
    got = dro_update(alpha, excess, eta, eps)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    assert float(got.sum()) == pytest.approx(1.0)
    # No excess anywhere: only the smoothing acts.
    still = dro_update(alpha, torch.zeros(3, dtype=torch.float64), eta, eps)
    assert still.tolist() == pytest.approx([(1 - eps) * a + eps / 3 for a in alpha.tolist()])
    with pytest.raises(ValueError, match="differ"):
        dro_update(alpha, torch.zeros(2, dtype=torch.float64), eta, eps)


def test_initial_alpha_uniform_or_reference_order() -> None:
    assert initial_alpha(["a", "b"], None).tolist() == [0.5, 0.5]
    assert initial_alpha(["b", "a"], {"a": 3.0, "b": 1.0}).tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match="lack domains"):
        initial_alpha(["a", "b"], {"a": 1.0})


def _model(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, seq_len=SEQ, n_layer=1, n_head=2, d_model=32))


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    block = torch.randint(0, VOCAB, (6, SEQ + 1), generator=gen)
    domains = torch.tensor([0, 1, 0, 1, 1, 0])
    return block[:, :-1], block[:, 1:], domains


class _Part:
    """An engine restricted to some rows of the batch it was built for."""

    def __init__(self, engine: torch.nn.Module, rows: slice) -> None:
        self.engine, self.rows = engine, rows

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        full = torch.zeros(6, x.shape[1], dtype=torch.long)
        full[self.rows] = x
        return self.engine(full)[0][self.rows], None


class _Handicapped(torch.nn.Module):
    """The reference's own logits, with the target pushed down on domain-1 rows only."""

    def __init__(self, reference: GPT, y: torch.Tensor, domains: torch.Tensor) -> None:
        super().__init__()
        self.reference = reference
        self.penalty = torch.nn.functional.one_hot(y, VOCAB) * (domains == 1).view(-1, 1, 1)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits = self.reference(x)[0].detach()
        return logits - 2.0 * self.scale * self.penalty, None


def test_weights_move_to_the_domain_where_the_proxy_lags_and_loss_is_the_weighted_objective() -> (
    None
):
    reference = _model(0)
    x, y, domains = _batch()
    engine = _Handicapped(reference, y, domains)
    dro = GroupDRO(reference=reference, domains=["a", "b"], eta=1.0, smoothing=1e-3)
    tokens = torch.bincount(domains, minlength=2) * SEQ
    dro.begin_step(tokens)
    loss, ce_mean, z = dro.loss(engine, x, y, domains)
    # The step's loss weights are the current (uniform) ones; the update comes at its end.
    with torch.no_grad():
        ce, _ = token_losses(engine(x)[0], y)
    per_domain = [float(ce[domains == d].mean()) for d in (0, 1)]
    assert float(loss.detach()) == pytest.approx(
        0.5 * per_domain[0] + 0.5 * per_domain[1], rel=1e-5
    )
    assert ce_mean == pytest.approx(float(ce.mean()), rel=1e-5) and z == 0.0
    loss.backward()
    assert engine.scale.grad is not None and float(engine.scale.grad.abs()) > 0
    dro.end_step()
    # Domain "a" has no excess (same logits as the reference), domain "b" does: weight moves.
    mean_excess = dro.stats.mean("excess")
    assert mean_excess[0] == pytest.approx(0.0, abs=1e-6) and mean_excess[1] > 1.0
    alpha = dro.alpha.tolist()
    assert alpha[1] > 0.5 > alpha[0]
    expected_alpha = dro_update(
        torch.tensor([0.5, 0.5], dtype=torch.float64),
        torch.tensor(mean_excess, dtype=torch.float64),
        1.0,
        1e-3,
    )
    assert alpha == pytest.approx(expected_alpha.tolist())
    # Later steps weight the loss with the updated weights: sum_d alpha_d * mean loss of d.
    dro.begin_step(tokens)
    loss2, _, _ = dro.loss(engine, x, y, domains)
    assert float(loss2.detach()) == pytest.approx(
        sum(a * p for a, p in zip(alpha, per_domain, strict=True)), rel=1e-5
    )
    # Split over two micro-batches (scale 2): the shares add up to the same objective.
    halves = [slice(0, 3), slice(3, 6)]
    dro2 = GroupDRO(reference=reference, domains=["a", "b"])
    dro2.begin_step(tokens)
    total = (
        sum(
            float(dro2.loss(_Part(engine, h), x[h], y[h], domains[h], scale=2)[0].detach())
            for h in halves
        )
        / 2
    )
    assert total == pytest.approx(float(loss.detach()), rel=1e-5)
    dro.end_step()
    # Repeated steps keep moving weight to the lagging domain; the average trails the final.
    for _ in range(4):
        dro.begin_step(tokens)
        dro.loss(engine, x, y, domains)
        dro.end_step()
    assert dro.alpha[1] > alpha[1]
    avg = dro.average
    assert sum(avg) == pytest.approx(1.0) and alpha[1] < avg[1] < float(dro.alpha[1])
    assert len(dro.trajectory) == 6 and dro.updates == 6


def test_identical_proxy_and_reference_keep_uniform_weights_and_state_round_trips() -> None:
    reference = _model(0)
    x, y, domains = _batch()

    def engine(inp: torch.Tensor) -> tuple[torch.Tensor, None]:
        return reference(inp)[0], None

    dro = GroupDRO(reference=reference, domains=["a", "b"])
    for _ in range(3):
        dro.begin_step(torch.bincount(domains, minlength=2) * SEQ)
        dro.loss(engine, x, y, domains, z_loss=1e-4)
        dro.end_step()
    assert dro.alpha.tolist() == pytest.approx([0.5, 0.5])
    other = GroupDRO(reference=_model(1), domains=["a", "b"])
    other.load_state_dict(dro.state_dict())
    assert other.report() == dro.report()
    with pytest.raises(ValueError, match="is over"):
        GroupDRO(reference=_model(1), domains=["a", "c"]).load_state_dict(dro.state_dict())
    with pytest.raises(ValueError, match="at least two"):
        GroupDRO(reference=_model(1), domains=["a"])


def test_domain_balanced_sampler_fills_equal_shares_independent_of_world_size() -> None:
    from corpuslab.training.data import DomainBalancedSampler

    # 3 domains of very different sizes: 90, 8 and 2 rows
    domains = np.array([0] * 90 + [1] * 8 + [2] * 2)
    np.random.default_rng(0).shuffle(domains)
    one = DomainBalancedSampler(domains, micro=6, accum=2, world_size=1, seed=3)
    two = DomainBalancedSampler(domains, micro=3, accum=2, world_size=2, seed=3)
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for step in range(10):
        rows = one.global_rows(step)
        assert rows.tolist() == two.global_rows(step).tolist()
        counts = np.bincount(domains[rows], minlength=3)
        assert counts.tolist() == [4, 4, 4]
        for r in rows:
            seen[int(domains[r])].append(int(r))
        # the ranks' slices are disjoint and cover the batch
        parts = np.concatenate([two.rank_rows(step, r).ravel() for r in (0, 1)])
        assert sorted(parts.tolist()) == sorted(rows.tolist())
    # each small domain is cycled through whole epochs: every row of it appears equally often
    assert np.bincount(seen[2], minlength=100)[np.flatnonzero(domains == 2)].tolist() == [20, 20]
    assert set(seen[1]) == set(np.flatnonzero(domains == 1).tolist())
