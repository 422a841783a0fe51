"""Mixture weights, budget sampling with repetition, tokenizer and sequence packing."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from corpuslab.lmdata import mixture as mx
from corpuslab.lmdata import tokenize as tk
from tests.corpuslab.lmdata import reference

HELDOUT_IDS = [f"doc/{i}" for i in range(20000)]
HELDOUT_SCRIPT = """
import json
from corpuslab.lmdata.mixture import is_heldout
ids = [f"doc/{i}" for i in range(20000)]
print(json.dumps([i for i, d in enumerate(ids) if is_heldout(d, 0.05)]))
"""


def _heldout_in_a_process(hash_seed: str) -> list[int]:
    """Indices of the held-out ids as a fresh interpreter with ``PYTHONHASHSEED`` computes them."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(mx.__file__).parents[2]), env.get("PYTHONPATH", "")]
    )
    out = subprocess.run(
        [sys.executable, "-c", HELDOUT_SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_heldout_is_near_fraction_and_depends_on_the_seed() -> None:
    held = [mx.is_heldout(i, 0.05) for i in HELDOUT_IDS]
    assert 0.04 < sum(held) / len(HELDOUT_IDS) < 0.06
    assert held != [mx.is_heldout(i, 0.05, seed=1) for i in HELDOUT_IDS]


def test_heldout_membership_is_the_same_in_processes_with_different_hash_seeds() -> None:
    """Membership must not depend on Python's salted ``hash()``: a rerun, another rank or
    another machine holds out the same documents (str hashes differ between these processes)."""
    here = [i for i, d in enumerate(HELDOUT_IDS) if mx.is_heldout(d, 0.05)]
    one, two = _heldout_in_a_process("1"), _heldout_in_a_process("2")
    assert one == two == here and len(here) > 800
    probe = 'print(hash("doc/1"))'
    hashes = {
        subprocess.run(
            [sys.executable, "-c", probe],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(hashes) == 2  # the two processes really did hash strings differently


def test_weights() -> None:
    assert mx.natural_weights({"a": 300, "b": 100}) == {"a": 0.75, "b": 0.25}
    assert mx.manual_weights({"a": 1, "b": 3}, ["a", "b", "c"]) == {"a": 0.25, "b": 0.75, "c": 0}
    with pytest.raises(ValueError, match="no tokens"):
        mx.natural_weights({"a": 0})


def test_plan_meets_budget_and_records_repetition() -> None:
    tokens = {"big": [100] * 50, "small": [100] * 5}  # 5000 and 500 tokens available
    plan = mx.plan_mixture(tokens, {"big": 0.5, "small": 0.5}, token_budget=2000, seed=3)
    assert plan.domains["big"].selected_tokens == 1000
    assert plan.domains["small"].selected_tokens == 1000
    assert plan.domains["small"].repetition == pytest.approx(2.0)
    assert plan.repeated_domains == {"small": pytest.approx(2.0)}
    small = [i for d, i in plan.selection if d == "small"]
    assert sorted(small) == sorted(list(range(5)) * 2)  # whole epochs: each doc twice
    again = mx.plan_mixture(tokens, {"big": 0.5, "small": 0.5}, token_budget=2000, seed=3)
    assert again.selection == plan.selection


def test_plan_rejects_empty_weighted_domain() -> None:
    with pytest.raises(ValueError, match="'empty' has weight > 0"):
        mx.plan_mixture({"empty": []}, {"empty": 1.0}, 100)


def test_tokenizer_and_packing_on_real_text(tmp_path: Path) -> None:
    prose = [textwrap.dedent(inspect.getdoc(m) or "") for m in (json, inspect, textwrap)]
    code = [inspect.getsource(m) for m in (json.decoder, textwrap)]
    tok = tk.train_tokenizer(
        prose + code, vocab_size=400, min_frequency=2, out_path=tmp_path / "tok.json"
    )
    assert (tmp_path / "tok.json").is_file() and tok.token_to_id(tk.EOS) is not None
    assert tok.decode(tok.encode(prose[0]).ids) == prose[0]  # byte-level: lossless
    counts = reference.count_tokens(tok, code)
    assert all(c > 100 for c in counts)
    rows, dom, kept = reference.pack_sequences(
        tok, {"prose": prose, "code": code}, seq_len=16, seed=0
    )
    assert rows.shape[1] == 17 and rows.dtype == np.uint16
    assert len(rows) == len(dom) and set(dom.tolist()) == {0, 1}
    assert kept["code"] == int((dom == 0).sum()) * 17  # domains sorted: code=0, prose=1
    # rows never mix domains: every code row decodes to text found in the code stream
    eos = tok.token_to_id(tk.EOS)
    code_stream = np.concatenate([np.asarray(tok.encode(c).ids + [eos]) for c in code])
    row = rows[np.flatnonzero(dom == 0)[0]]
    windows = np.lib.stride_tricks.sliding_window_view(code_stream, 17)
    assert (windows == row).all(axis=1).any()


def test_uniform_weights() -> None:
    assert mx.uniform_weights(["a", "b", "c", "d"]) == {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}
    with pytest.raises(ValueError, match="at least one domain"):
        mx.uniform_weights([])


def test_temperature_weights() -> None:
    tokens = {"big": 9_000_000, "mid": 900_000, "small": 10_000, "none": 0}
    natural = mx.natural_weights(tokens)
    t1 = mx.temperature_weights(tokens, 1.0)
    assert t1 == pytest.approx(natural)  # T=1 is token-proportional
    t2 = mx.temperature_weights(tokens, 2.0)  # ∝ sqrt(tokens): 3000, ~948.7, 100
    assert t2["big"] / t2["small"] == pytest.approx(30.0)
    assert t2["small"] > natural["small"] and t2["big"] < natural["big"]  # flattened
    hot = mx.temperature_weights(tokens, 1e6)  # T -> inf: uniform over non-empty domains
    assert hot["big"] == pytest.approx(1 / 3, rel=1e-4)
    assert hot["small"] == pytest.approx(1 / 3, rel=1e-4)
    assert hot["none"] == 0.0
    assert sum(mx.temperature_weights(tokens, 0.01).values()) == pytest.approx(1.0)  # no overflow
    with pytest.raises(ValueError, match="temperature must be > 0"):
        mx.temperature_weights(tokens, 0.0)


def test_conditional_entropy_hand_computed() -> None:
    # one document 0 1 0 1: bigrams (0,1) (1,0) (0,1): the next token is always determined
    assert mx.conditional_entropy(np.array([0, 1, 0, 1])) == 0.0
    # 0 1 0 2: after 0 comes 1 or 2 (one bit, 2 of 3 bigrams), after 1 always 0 -> 2/3 bit
    assert mx.conditional_entropy(np.array([0, 1, 0, 2])) == pytest.approx(2 / 3)
    # fair coin after every token: 0 0 1 1 0 -> bigrams 00 01 11 10: H = 1 bit
    assert mx.conditional_entropy(np.array([0, 0, 1, 1, 0])) == pytest.approx(1.0)
    # document boundaries: [0 1] [0 2] has bigrams (0,1) and (0,2) only, not (1,0): 1 bit
    stream = np.array([0, 1, 0, 2], dtype=np.uint16)
    assert mx.conditional_entropy(stream, np.array([0, 2, 4])) == pytest.approx(1.0)
    # an empty document and single-token documents contribute no bigram
    assert mx.conditional_entropy(stream, np.array([0, 0, 1, 2, 3, 4])) == 0.0
    assert mx.conditional_entropy(np.array([5])) == 0.0
    # against a direct computation over counted bigrams on a random stream
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 7, size=5000) ** 2 % 11
    pairs: dict[tuple[int, int], int] = {}
    for a, b in zip(toks[:-1], toks[1:], strict=True):
        pairs[(int(a), int(b))] = pairs.get((int(a), int(b)), 0) + 1
    ctx: dict[int, int] = {}
    for (a, _), c in pairs.items():
        ctx[a] = ctx.get(a, 0) + c
    n = len(toks) - 1
    direct = -sum(c / n * np.log2(c / ctx[a]) for (a, _), c in pairs.items())
    assert mx.conditional_entropy(toks) == pytest.approx(direct)


def test_entropy_weights_linear_and_softmax() -> None:
    h = {"a": 1.0, "b": 3.0}
    assert mx.entropy_weights(h) == {"a": 0.25, "b": 0.75}
    soft = mx.entropy_weights(h, "softmax")
    assert soft["b"] == pytest.approx(np.exp(3) / (np.exp(1) + np.exp(3)))
    assert sum(soft.values()) == pytest.approx(1.0)
    assert mx.entropy_weights({"a": 500.0, "b": 500.0}, "softmax") == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="zero conditional entropy"):
        mx.entropy_weights({"a": 0.0, "b": 0.0})
    with pytest.raises(ValueError, match="linear' or 'softmax"):
        mx.entropy_weights(h, "cubic")


def test_plan_flags_domains_beyond_four_epochs() -> None:
    tokens = {"big": [50] * 100, "tiny": [50] * 4}  # 5000 and 200 tokens
    plan = mx.plan_mixture(tokens, {"big": 0.5, "tiny": 0.5}, token_budget=2000, seed=0)
    assert plan.domains["tiny"].repetition == pytest.approx(5.0)  # 1000 of 200 tokens
    assert plan.domains["big"].repetition == pytest.approx(0.2)
    assert plan.over_repeated_domains == {"tiny": pytest.approx(5.0)}
    assert plan.repeated_domains == {"tiny": pytest.approx(5.0)}
    fine = mx.plan_mixture(tokens, {"big": 0.5, "tiny": 0.5}, token_budget=1600, seed=0)
    assert fine.repeated_domains and not fine.over_repeated_domains  # exactly 4 epochs
    counts = [0] * 4
    for d, i in plan.selection:
        if d == "tiny":
            counts[i] += 1
    assert counts == [5, 5, 5, 5]  # whole epochs: repetition spread evenly
