"""What the training tests share: a real token file, the trainer's environment, and a SIGKILL.

The token file is Python's own help text (``pydoc_data.topics``, installed with every Python)
encoded with a byte-level BPE trained here; the kill is a real ``SIGKILL`` to the launched
process group once the run has written a given checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
ENTRYPOINT = REPO / "infra" / "entrypoints" / "train.py"
SEQ_LEN = 64
VOCAB = 512


def build_token_file(root: Path, seq_len: int = SEQ_LEN, vocab: int = VOCAB) -> Path:
    """Python's help topics, BPE-encoded, EOS after each document, rows shuffled; 2 domains."""
    from corpuslab.lmdata.tokenfile import write_token_file
    from corpuslab.lmdata.tokenize import EOS, train_tokenizer

    texts = [topics[k] for k in sorted(topics)]
    tok = train_tokenizer(texts, vocab, 0, root / "tokenizer.json")
    eos = tok.token_to_id(EOS)
    ids = [i for enc in tok.encode_batch(texts) for i in [*enc.ids, eos]]
    n = len(ids) // (seq_len + 1)
    rows = np.array(ids[: n * (seq_len + 1)]).reshape(n, seq_len + 1)
    rows = rows[np.random.default_rng(0).permutation(n)]
    domains = np.arange(n) % 2
    write_token_file(
        root / "tokens",
        rows,
        domains,
        tok.get_vocab_size(),
        eos,
        ["a", "b"],
        root / "tokenizer.json",
    )
    return root / "tokens"


def trainer_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a training process: CPU DeepSpeed, no Pipes context."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_PIPES_CONTEXT"}
    env["DS_ACCELERATOR"] = "cpu"
    return env | dict(extra or {})


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (stopped first, so none can start another);
    waits for the descendants to be gone. The caller reaps ``pid`` itself."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.suspend()
    tree += [c for p in tree if p.is_running() for c in p.children(recursive=True)]
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree[1:], timeout=30)  # the root is reaped by whoever started it


def latest_checkpoint(out_dir: Path) -> str | None:
    latest = Path(out_dir) / "checkpoints" / "latest"
    return latest.read_text().strip() if latest.exists() else None


def kill_after_checkpoint(
    cmd: Sequence[str], env: Mapping[str, str], out_dir: Path, step: int, timeout: float = 240
) -> int:
    """Run ``cmd`` and SIGKILL it and every process under it once ``out_dir`` has the checkpoint
    of ``step`` or a later one; returns the step of the checkpoint ``latest`` named at the kill.

    Everything goes down at once, as when a node or pod dies: torchrun's agent and its workers
    (which torchrun starts in sessions of their own, so killing its process group alone would
    leave them training). Raises if the process ends or the time runs out before the checkpoint.
    """
    seen: int | None = None
    with tempfile.TemporaryFile("w+") as log:  # a pipe could fill up and stall the run
        proc = subprocess.Popen(list(cmd), env=dict(env), stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                tag = latest_checkpoint(out_dir)
                if tag is not None and int(tag.removeprefix("step")) >= step:
                    seen = int(tag.removeprefix("step"))
                    break
                time.sleep(0.005)
        finally:
            kill_tree(proc.pid)
            proc.wait()
        log.seek(0)
        err = log.read()
    if seen is None:
        raise AssertionError(
            f"no checkpoint of step >= {step} before the process ended (rc {proc.returncode}) "
            f"or {timeout}s passed: {err[-3000:]}"
        )
    assert proc.returncode == -signal.SIGKILL, proc.returncode  # it was killed, not finished
    return seen
