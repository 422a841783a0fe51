"""Fixtures of the evaluation tests: a small BPE on Python's help topics and a tiny GPT."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from pydoc_data.topics import topics  # Python's own help text: real prose, always installed

import pytest
import torch

from corpuslab.lmdata.tokenize import train_tokenizer
from corpuslab.training.model import GPT, GPTConfig


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run as fast on one thread, and a busy machine does not stall them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE (512 ids, ``<|endoftext|>`` included) trained on the help topics."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer([topics[k] for k in sorted(topics)], 512, 0, path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt() -> GPT:
    """A randomly initialized 2-layer GPT over the 512-id vocabulary, 64-token window."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=512, seq_len=64, n_layer=2, n_head=2, d_model=32)).eval()
