"""Held-out bits-per-byte on real text: bookkeeping, padding, EOS handling, and that training helps.

A small GPT is trained here with a plain torch loop (the DeepSpeed path is covered by
test_train.py) on most of Python's help topics and scored on the topics it never saw.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from pydoc_data.topics import topics  # Python's own help text: real prose, always installed

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from corpuslab.eval.bpb import bits_per_byte, evaluate_domains, sequence_loss
from corpuslab.training.checkpoints import load_model
from corpuslab.training.model import GPT, GPTConfig

SEQ_LEN = 64
TEXTS = [topics[k] for k in sorted(topics)]
HELDOUT = TEXTS[::8]
TRAIN = [t for i, t in enumerate(TEXTS) if i % 8]


def train_bpe(texts: list[str], path: Path, special: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return tok


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run_dir, tokenizer_path) of a model trained for 200 steps on the training topics."""
    root = tmp_path_factory.mktemp("eval")
    tok = train_bpe(TRAIN, root / "tokenizer.json", ["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    ids = [i for enc in tok.encode_batch(TRAIN) for i in [eos, *enc.ids]]
    n = len(ids) // (SEQ_LEN + 1)
    rows = torch.tensor(ids[: n * (SEQ_LEN + 1)]).view(n, SEQ_LEN + 1)
    config = GPTConfig(tok.get_vocab_size(), SEQ_LEN, n_layer=2, n_head=2, d_model=64)
    torch.manual_seed(0)
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    order = np.random.default_rng(0).permutation(n)
    for step in range(200):
        batch = rows[order[(np.arange(16) + 16 * step) % n]]
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    run = root / "run"
    run.mkdir()
    torch.save(model.state_dict(), run / "model.pt")
    (run / "model_config.json").write_text(json.dumps(asdict(config)))
    return run, root / "tokenizer.json"


def untrained(config: GPTConfig) -> GPT:
    torch.manual_seed(1)
    return GPT(config).eval()


def test_trained_model_scores_fewer_bits_per_byte_than_untrained(trained) -> None:
    run, tok_path = trained
    model = load_model(run)
    good = bits_per_byte(model, tok_path, HELDOUT)
    base = bits_per_byte(untrained(model.config), tok_path, HELDOUT)
    assert 0 < good["bpb"] < base["bpb"] and math.isfinite(good["bpb"])
    # An untrained model is near uniform: ln(V) nats per token.
    uniform = math.log2(model.config.vocab_size) * base["tokens"] / base["bytes"]
    assert base["bpb"] == pytest.approx(uniform, rel=0.05)
    assert good["bpb"] < 0.7 * uniform  # training on the domain helps a lot


def test_counts_cover_every_token_and_byte_of_every_document(trained) -> None:
    run, tok_path = trained
    tok = Tokenizer.from_file(str(tok_path))
    docs = [*HELDOUT, ""]  # an empty document has nothing to score
    res = bits_per_byte(load_model(run), tok_path, docs, seq_len=32, batch_size=3)
    assert res["documents"] == len(HELDOUT)
    assert res["bytes"] == sum(len(t.encode("utf-8")) for t in HELDOUT)
    # With EOS as context every token is scored once, whatever the window size.
    assert res["tokens"] == sum(len(tok.encode(t).ids) for t in HELDOUT)
    assert res["bpb"] == pytest.approx(res["nll_nats"] / (math.log(2) * res["bytes"]))


def test_padding_and_windows_do_not_change_the_sum(trained) -> None:
    run, tok_path = trained
    model = load_model(run)
    one = bits_per_byte(model, tok_path, HELDOUT[:3], seq_len=16, batch_size=1)
    many = bits_per_byte(model, tok_path, HELDOUT[:3], seq_len=16, batch_size=7)
    assert one["nll_nats"] == pytest.approx(many["nll_nats"], rel=1e-6)
    # Other windows give each token another context, but score the same tokens and bytes.
    longer = bits_per_byte(model, tok_path, HELDOUT[:3], seq_len=SEQ_LEN, batch_size=7)
    assert (longer["tokens"], longer["bytes"]) == (one["tokens"], one["bytes"])
    assert longer["nll_nats"] != pytest.approx(one["nll_nats"], rel=1e-6)


def test_short_document_matches_direct_scoring_after_eos(trained) -> None:
    run, tok_path = trained
    model = load_model(run)
    tok = Tokenizer.from_file(str(tok_path))
    text = "The return statement leaves the current function call."
    ids = tok.encode(text).ids
    seq = torch.tensor([[tok.token_to_id("<|endoftext|>"), *ids]])
    with torch.no_grad():
        direct = model.per_token_loss(seq[:, :-1], seq[:, 1:]).sum().item()
    res = bits_per_byte(model, tok_path, [text])
    assert res["nll_nats"] == pytest.approx(direct, rel=1e-5)
    assert res["bpb"] == pytest.approx(direct / (math.log(2) * len(text.encode())), rel=1e-5)


def test_without_eos_the_first_token_and_its_bytes_are_not_scored(tmp_path: Path) -> None:
    tok = train_bpe(TRAIN[:20], tmp_path / "noeos.json", special=[])
    assert tok.token_to_id("<|endoftext|>") is None
    model = untrained(GPTConfig(tok.get_vocab_size(), 32, n_layer=1, n_head=1, d_model=16))
    text = "Émile wrote: lambda x: x + 1"  # multi-byte first character
    enc = tok.encode(text)
    first_bytes = len(text[: enc.offsets[0][1]].encode("utf-8"))
    res = bits_per_byte(model, tmp_path / "noeos.json", [text])
    assert res["tokens"] == len(enc.ids) - 1
    assert res["bytes"] == len(text.encode("utf-8")) - first_bytes
    assert first_bytes >= 2


def test_evaluate_domains_scores_each_domain_with_the_saved_model(trained) -> None:
    run, tok_path = trained
    res = evaluate_domains(run, tok_path, {"heldout": HELDOUT[:4], "train": TRAIN[:4]})
    assert set(res) == {"heldout", "train"}
    assert res["heldout"] == bits_per_byte(load_model(run), tok_path, HELDOUT[:4])
    assert all(r["documents"] == 4 and r["bpb"] > 0 for r in res.values())


def test_sequence_loss_is_the_mean_token_cross_entropy_of_rows(trained, tmp_path: Path) -> None:
    run, tok_path = trained
    model = load_model(run)
    tok = Tokenizer.from_file(str(tok_path))
    eos = tok.token_to_id("<|endoftext|>")
    ids = [i for enc in tok.encode_batch(HELDOUT) for i in [eos, *enc.ids]]
    n = len(ids) // (SEQ_LEN + 1)
    rows = np.array(ids[: n * (SEQ_LEN + 1)]).reshape(n, SEQ_LEN + 1)
    with torch.no_grad():
        block = torch.from_numpy(rows)
        _, direct = model(block[:, :-1], block[:, 1:])
    assert sequence_loss(model, rows, batch_size=3) == pytest.approx(direct.item(), rel=1e-5)
    assert sequence_loss(model, rows) < sequence_loss(untrained(model.config), rows)
    with pytest.raises(ValueError, match="no rows"):
        sequence_loss(model, rows[:0])
    # Another weights file in the same run folder (e.g. the LAWA average) loads by name.
    torch.save(untrained(model.config).state_dict(), run / "model_other.pt")
    other = load_model(run, weights="model_other.pt")
    assert sequence_loss(other, rows) == pytest.approx(
        sequence_loss(untrained(model.config), rows), rel=1e-6
    )
