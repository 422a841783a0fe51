"""Continuation scoring: hand-computed log-likelihoods, packing, truncation, item metrics."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from corpuslab.eval.metrics import gold_bpb
from corpuslab.eval.scoring import (
    Encoder,
    Request,
    _choice_metrics,
    greedy_generate,
    normalize_answer,
    score_requests,
    score_task,
)
from corpuslab.eval.tasks import Item, TaskDecl
from corpuslab.training.model import GPT, GPTConfig


def bigram_model(vocab: int = 7, d: int = 4, seed: int = 3) -> tuple[GPT, np.ndarray]:
    """A GPT whose blocks add nothing (zero output projections) and positions are zero.

    Its logits are then ``LayerNorm(E[x]) @ E.T`` for the current token ``x`` alone: a bigram
    model whose probabilities numpy computes from the embedding matrix ``E`` by hand.
    """
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, seq_len=8, n_layer=1, n_head=1, d_model=d)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight") or name == "transformer.wpe.weight":
                p.zero_()
    return model, model.transformer.wte.weight.detach().double().numpy()


def hand_logprob(emb: np.ndarray, context: list[int], continuation: list[int]) -> float:
    """Sum of log p(next | current) over the continuation, from the embeddings alone."""
    total = 0.0
    seq = context + continuation
    for i in range(len(context), len(seq)):
        e = emb[seq[i - 1]]
        h = (e - e.mean()) / math.sqrt(e.var() + 1e-5)
        logits = emb @ h
        total += logits[seq[i]] - math.log(np.exp(logits - logits.max()).sum()) - logits.max()
    return total


def test_loglikelihood_equals_hand_computed_bigram_probabilities() -> None:
    """Summed log p of each continuation token equals the hand computation (packed rows too)."""
    model, emb = bigram_model()
    requests = [
        Request((0, 3), (1,)),
        Request((0, 3), (2, 5, 6)),  # same context: packed into one row with the first
        Request((0, 4, 4, 1), (6, 2)),
    ]
    scores = score_requests(model, requests, batch_size=2)
    for req, score in zip(requests, scores, strict=True):
        expected = hand_logprob(emb, list(req.context), list(req.continuation))
        assert score.logprob == pytest.approx(expected, abs=1e-5)
        assert score.tokens == len(req.continuation)


def naive_logprob(model: GPT, req: Request) -> float:
    """One plain causal forward over (context + continuation)[-(seq_len + 1):]."""
    seq = [*req.context, *req.continuation][-(model.config.seq_len + 1) :]
    with torch.no_grad():
        logits, _ = model(torch.tensor([seq[:-1]]))
    lp = torch.log_softmax(logits[0].double(), -1)
    n = len(req.continuation)
    targets = seq[1:]
    return float(sum(lp[len(targets) - n + j, targets[len(targets) - n + j]] for j in range(n)))


@pytest.mark.parametrize("batch_size,row_tokens", [(1, None), (4, None), (3, 12)])
def test_packed_shared_contexts_score_like_one_sequence_per_request(
    tiny_gpt: GPT, batch_size: int, row_tokens: int | None
) -> None:
    """Continuations packed behind a shared context (tree mask) equal separate forwards."""
    rng = random.Random(1)
    shared = tuple(rng.randrange(512) for _ in range(10))
    requests = [Request(shared, tuple(rng.randrange(512) for _ in range(n))) for n in (1, 5, 3, 7)]
    requests += [Request((0, 9, 8), (4,)), Request((0,), (11, 12, 13))]
    scores = score_requests(tiny_gpt, requests, batch_size, row_tokens)
    for req, score in zip(requests, scores, strict=True):
        assert score.logprob == pytest.approx(naive_logprob(tiny_gpt, req), abs=1e-4)


def test_context_longer_than_the_window_keeps_its_last_tokens(tiny_gpt: GPT) -> None:
    """A 100-token context is left-truncated to fit seq_len=64 predictions, as lm-eval does."""
    rng = random.Random(2)
    long = Request(tuple(rng.randrange(512) for _ in range(100)), (5, 6, 7))
    (score,) = score_requests(tiny_gpt, [long])
    assert score.logprob == pytest.approx(naive_logprob(tiny_gpt, long), abs=1e-4)


def test_continuation_longer_than_the_window_is_scored_in_windows(tiny_gpt: GPT) -> None:
    """150 continuation tokens on a 64-token window: three chunks, each token predicted once
    from the 64 tokens before its chunk's end (the chunks summed)."""
    rng = random.Random(3)
    ctx = tuple(rng.randrange(512) for _ in range(20))
    cont = tuple(rng.randrange(512) for _ in range(150))
    (score,) = score_requests(tiny_gpt, [Request(ctx, cont)], batch_size=2)
    seq = ctx + cont
    expected = 0.0
    for a in range(0, 150, 64):
        b = min(150, a + 64)
        expected += naive_logprob(tiny_gpt, Request(seq[: 20 + a], cont[a:b]))
    assert score.tokens == 150
    assert score.logprob == pytest.approx(expected, abs=1e-3)


def test_greedy_flag_is_true_only_when_every_token_is_the_argmax(tiny_gpt: GPT) -> None:
    """A continuation built from the model's own argmax is greedy; one changed token is not."""
    ctx = [0, 17, 42]
    cont: list[int] = []
    with torch.no_grad():
        for _ in range(4):
            logits, _ = tiny_gpt(torch.tensor([ctx + cont]))
            cont.append(int(logits[0, -1].argmax()))
    changed = [*cont[:2], (cont[2] + 1) % 512, cont[3]]
    good, bad = score_requests(
        tiny_gpt, [Request(tuple(ctx), tuple(cont)), Request(tuple(ctx), tuple(changed))]
    )
    assert good.greedy and not bad.greedy
    # greedy generation reproduces the same tokens
    assert greedy_generate(tiny_gpt, [ctx], 4) == [cont]


def test_encoder_moves_trailing_whitespace_and_starts_with_eos(tokenizer_path: Path) -> None:
    """("query ", "choice") and ("query", " choice") give the same ids; EOS starts the context."""
    enc = Encoder.from_file(tokenizer_path)
    a, b = enc.pairs([("The with statement ", "is used"), ("The with statement", " is used")])
    assert a == b
    assert a.context[0] == enc.eos_id
    assert list(a.context[1:]) == enc.encode("The with statement")
    assert list(a.context[1:] + a.continuation) == enc.encode("The with statement is used")
    assert a.n_bytes == len(" is used")
    # an empty context is the EOS id alone (lm-eval's prefix token)
    (c,) = enc.pairs([("", "Hello")])
    assert c.context == (enc.eos_id,) and list(c.continuation) == enc.encode("Hello")


def test_choice_metrics_by_hand() -> None:
    """acc (per token), acc_sum, acc_char, p_correct and margin on numbers worked by hand."""
    ll = np.array([-4.0, -3.0, -9.0])  # summed: choice 1 best
    tokens = np.array([1.0, 2.0, 3.0])  # per token: -4, -1.5, -3: choice 1 best
    nbytes = np.array([2.0, 6.0, 3.0])  # per byte: -2, -0.5, -3: choice 1 best
    m = _choice_metrics(ll, tokens, nbytes, gold=0)
    assert (m["acc"], m["acc_sum"], m["acc_char"]) == (0.0, 0.0, 0.0)
    p = np.exp([-2.0, -0.5, -3.0])
    p /= p.sum()
    assert m["p_correct"] == pytest.approx(p[0])
    assert m["margin"] == pytest.approx(p[0] - p[1])
    # per token and summed can disagree: gold 2 wins on neither, gold 1 on all three
    m1 = _choice_metrics(ll, tokens, nbytes, gold=1)
    assert (m1["acc"], m1["acc_sum"], m1["acc_char"]) == (1.0, 1.0, 1.0)
    m2 = _choice_metrics(np.array([-2.0, -3.0]), np.array([1.0, 3.0]), np.array([1.0, 1.0]), 1)
    assert (m2["acc"], m2["acc_sum"]) == (1.0, 0.0)  # -1/token beats -2/token; -2 beats -3


def test_score_task_items_and_gold_bpb(tiny_gpt: GPT, tokenizer_path: Path) -> None:
    """A multiple-choice task's items carry per-choice scores consistent with the requests."""
    enc = Encoder.from_file(tokenizer_path)
    task = TaskDecl(
        label="t", icl_task_type="multiple_choice", dataset_uri="x.jsonl", random_baseline=0.5
    )
    items = [
        Item("a", ("The pass statement",), ("does nothing", "raises an error"), 0),
        Item("b", ("A lambda expression",), ("creates a function", "imports a module"), 0),
    ]
    results = score_task(tiny_gpt, enc, task, items, k=0)
    reqs = enc.pairs(
        [("The pass statement ", "does nothing"), ("The pass statement ", "raises an error")]
    )
    direct = score_requests(tiny_gpt, reqs)
    assert results[0]["ll"] == pytest.approx([s.logprob for s in direct], abs=1e-5)
    assert results[0]["bytes"] == [len(" does nothing"), len(" raises an error")]
    assert results[0]["gold_nll"] == pytest.approx(-direct[0].logprob, abs=1e-5)
    assert {r["acc"] for r in results} <= {0.0, 1.0}
    expected = sum(r["gold_nll"] for r in results) / (
        math.log(2) * sum(r["gold_bytes"] for r in results)
    )
    assert gold_bpb(results) == pytest.approx(expected)


def test_normalize_answer_as_squad() -> None:
    assert normalize_answer("  The Answer, is: an Apple! ") == "answer is apple"


def test_question_answering_matches_the_greedy_generation(
    tiny_gpt: GPT, tokenizer_path: Path
) -> None:
    """An item whose answer is the model's own greedy continuation is right; another is not."""
    enc = Encoder.from_file(tokenizer_path)
    found = None
    for ctx in ("The pass statement", "A class definition", "The import statement", "Names"):
        ids = greedy_generate(tiny_gpt, [[enc.eos_id, *enc.encode(ctx)]], 4, eos_id=enc.eos_id)
        text = enc.decode(ids[0])
        if normalize_answer(text):
            found = (ctx, text)
            break
    assert found is not None, "the model generated no letters after any context"
    ctx, text = found
    task = TaskDecl(label="qa", icl_task_type="question_answering", dataset_uri="x.jsonl")
    items = [
        Item("right", (ctx,), (text.strip(),)),
        Item("wrong", (ctx,), ("zebra crossing",), aliases=("quantum flux",)),
    ]
    right, wrong = score_task(tiny_gpt, enc, task, items, k=0)
    assert right["acc"] == 1.0 and right["generation"].strip().startswith(text.strip()[:3])
    assert wrong["acc"] == 0.0
    assert right["gold_nll"] > 0 and right["gold_bytes"] == len((" " + text.strip()).encode())
