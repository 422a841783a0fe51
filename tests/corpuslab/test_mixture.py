"""Mixture weights, budget sampling with repetition, tokenizer and sequence packing."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from corpuslab import mixture as mx
from corpuslab import tokenize as tk


def test_heldout_is_deterministic_and_near_fraction() -> None:
    ids = [f"doc/{i}" for i in range(20000)]
    held = [mx.is_heldout(i, 0.05) for i in ids]
    assert held == [mx.is_heldout(i, 0.05) for i in ids]
    assert 0.04 < sum(held) / len(ids) < 0.06
    assert held != [mx.is_heldout(i, 0.05, seed=1) for i in ids]


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
    counts = tk.count_tokens(tok, code)
    assert all(c > 100 for c in counts)
    rows, dom, kept = tk.pack_sequences(tok, {"prose": prose, "code": code}, seq_len=16, seed=0)
    assert rows.shape[1] == 17 and rows.dtype == np.uint16
    assert len(rows) == len(dom) and set(dom.tolist()) == {0, 1}
    assert kept["code"] == int((dom == 0).sum()) * 17  # domains sorted: code=0, prose=1
    # rows never mix domains: every code row decodes to text found in the code stream
    eos = tok.token_to_id(tk.EOS)
    code_stream = np.concatenate([np.asarray(tok.encode(c).ids + [eos]) for c in code])
    row = rows[np.flatnonzero(dom == 0)[0]]
    windows = np.lib.stride_tricks.sliding_window_view(code_stream, 17)
    assert (windows == row).all(axis=1).any()
