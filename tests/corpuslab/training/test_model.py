"""The GPT model: shapes, causality, tied weights, loss bookkeeping and that it can learn."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from corpuslab.training.model import GPT, IGNORE_INDEX, GPTConfig

CFG = GPTConfig(vocab_size=97, seq_len=16, n_layer=2, n_head=2, d_model=32)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run as fast on one thread, and a busy machine does not stall them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(cfg: GPTConfig = CFG, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


def test_config_rejects_heads_that_do_not_divide_width() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        GPTConfig(vocab_size=10, seq_len=8, n_layer=1, n_head=3, d_model=32)


def test_forward_shapes_and_initial_loss_near_uniform() -> None:
    model = make_model()
    idx = torch.randint(0, CFG.vocab_size, (3, CFG.seq_len))
    targets = torch.randint(0, CFG.vocab_size, (3, CFG.seq_len))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, CFG.seq_len, CFG.vocab_size)
    # nanoGPT's init gives near-uniform predictions: loss ~ ln(vocab).
    assert abs(loss.item() - math.log(CFG.vocab_size)) < 0.3
    assert model(idx)[1] is None


def test_embeddings_are_tied_and_counted_once() -> None:
    model = make_model()
    assert model.transformer.wte.weight is model.lm_head.weight
    total = sum(p.numel() for p in model.parameters())
    d, v, t, layers = CFG.d_model, CFG.vocab_size, CFG.seq_len, CFG.n_layer
    per_block = 2 * d + 12 * d * d  # two LayerNorm weights, attention 4d^2, MLP 8d^2
    assert total == v * d + t * d + layers * per_block + d
    assert model.num_params() == total - t * d
    assert model.num_params(non_embedding=False) == total


def test_flops_per_token_follows_nanogpt() -> None:
    model = make_model()
    head_dim = CFG.d_model // CFG.n_head
    expected = 6 * model.num_params() + 12 * CFG.n_layer * CFG.n_head * head_dim * CFG.seq_len
    assert model.estimate_flops_per_token() == expected


def test_attention_is_causal() -> None:
    model = make_model().eval()
    idx = torch.randint(0, CFG.vocab_size, (1, CFG.seq_len))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % CFG.vocab_size
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_per_token_loss_matches_mean_loss_and_ignores_masked_targets() -> None:
    model = make_model().eval()
    idx = torch.randint(0, CFG.vocab_size, (2, CFG.seq_len))
    targets = torch.randint(0, CFG.vocab_size, (2, CFG.seq_len))
    targets[1, 5:] = IGNORE_INDEX
    with torch.no_grad():
        nll = model.per_token_loss(idx, targets)
        _, loss = model(idx, targets)
    assert nll.shape == (2, CFG.seq_len)
    assert torch.all(nll[1, 5:] == 0)
    assert torch.all(nll[targets != IGNORE_INDEX] > 0)
    kept = targets != IGNORE_INDEX
    assert nll[kept].mean().item() == pytest.approx(loss.item(), rel=1e-5)


def test_rejects_sequences_longer_than_context() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="exceeds seq_len"):
        model(torch.zeros((1, CFG.seq_len + 1), dtype=torch.long))


def test_overfits_a_tiny_batch() -> None:
    model = make_model()
    gen = torch.Generator().manual_seed(1)
    batch = torch.randint(0, CFG.vocab_size, (4, CFG.seq_len + 1), generator=gen)
    x, y = batch[:, :-1], batch[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    _, first = model(x, y)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Random tokens are memorized: from ~ln(97) = 4.6 nats to well under 0.5.
    assert first.item() > 4.0
    assert loss.item() < 0.5


def test_z_loss_adds_coef_times_mean_squared_log_normalizer() -> None:
    model = make_model().eval()
    gen = torch.Generator().manual_seed(2)
    idx = torch.randint(0, CFG.vocab_size, (2, CFG.seq_len), generator=gen)
    targets = torch.randint(0, CFG.vocab_size, (2, CFG.seq_len), generator=gen)
    targets[0, :3] = IGNORE_INDEX
    logits, ce = model(idx, targets)
    assert model.last_z_loss is None
    _, total = model(idx, targets, z_loss=1e-2)
    kept = targets != IGNORE_INDEX
    lse = torch.logsumexp(logits, dim=-1)[kept]
    assert model.last_z_loss.item() == pytest.approx(1e-2 * lse.square().mean().item(), rel=1e-5)
    assert total.item() == pytest.approx(ce.item() + model.last_z_loss.item(), rel=1e-6)
    # The z-term pulls log(Z) toward 0: its gradient reaches the weights.
    model.zero_grad()
    (total - ce.detach()).backward()
    assert model.lm_head.weight.grad.abs().sum() > 0
