"""Credentials never reach MLflow or the logs: a planted secret is searched for everywhere.

A real MLflow tracking server runs on 127.0.0.1; the tracking URI carries a password in its
user info (the client sends it as basic auth, the server ignores it) and the AWS variables hold
a secret key. One real training run (DeepSpeed on CPU, through the local launcher) is
materialized by the same stage function the ``train/<run>`` asset calls; then the server's
database, every artifact, the run folder and everything logged or printed are searched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest

from corpuslab.ingest.storage import S3Options
from corpuslab.lmdata.tokenfile import write_token_file
from corpuslab.lmdata.tokenize import EOS, train_tokenizer
from corpuslab.stages.training import materialize_training
from corpuslab.tracking import redact_uri
from corpuslab.training.runspec import ModelDims, RunSpec, TrainConfig
from resources.launcher import TrainingLauncher

PASSWORD = "S3CRET-tracking-pw-81c4"
AWS_SECRET = "S3CRET-aws-key-5f2e"
REPO = Path(__file__).resolve().parents[3]


def test_redact_uri_and_s3_options_repr_hide_secrets() -> None:
    assert redact_uri(f"https://me:{PASSWORD}@mlflow.example:443/x?token=t0k&a=1") == (
        "https://me:***@mlflow.example:443/x?token=***&a=1"
    )
    assert redact_uri("postgresql://u:p@db/mlflow") == "postgresql://u:***@db/mlflow"
    assert redact_uri("sqlite:////h/mlflow.db") == "sqlite:////h/mlflow.db"
    shown = repr(S3Options(access_key_id="AKIA-x", secret_access_key=AWS_SECRET, session_token="t"))
    assert AWS_SECRET not in shown and "secret_access_key='***'" in shown
    assert "session_token='***'" in shown and "access_key_id='AKIA-x'" in shown


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, stopped on exit; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            (root / "artifacts").as_uri(),
        ],  # fmt: skip
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "server.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _tokens(root: Path) -> Path:
    texts = [topics[k] for k in sorted(topics)[:40]]
    tok = train_tokenizer(texts, 300, 0, root / "tokenizer.json")
    eos = tok.token_to_id(EOS)
    ids = [i for enc in tok.encode_batch(texts) for i in [*enc.ids, eos]]
    n = len(ids) // 33
    rows = np.array(ids[: n * 33]).reshape(n, 33)
    write_token_file(
        root / "tokens", rows, np.zeros(n, dtype=np.int64), tok.get_vocab_size(), eos, ["a"],
        root / "tokenizer.json",
    )  # fmt: skip
    return root / "tokens"


def test_a_planted_secret_reaches_neither_mlflow_nor_the_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from mlflow.tracking import MlflowClient

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-planted")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    server_root = tmp_path / "server"
    server_root.mkdir()
    launched: list[str] = []
    with mlflow_server(server_root) as url:
        uri = url.replace("http://", f"http://corpuslab:{PASSWORD}@")
        client = MlflowClient(uri)
        experiment = client.create_experiment("secrets")
        run_dir = tmp_path / "home" / "runs" / "tiny"
        spec = RunSpec(
            name="tiny",
            tokens_dir=_tokens(tmp_path),
            out_dir=run_dir,
            model=ModelDims(vocab_size=300, seq_len=32, n_layer=1, n_head=2, d_model=32),
            train=TrainConfig(
                steps=4,
                micro_batch_size=4,
                warmup_steps=1,
                log_every=2,
                checkpoint_every=2,
                threads=1,
            ),  # fmt: skip
            deepspeed_config=REPO / "infra" / "deepspeed" / "zero2.json",
            mlflow_tracking_uri=uri,
        )
        declaration = tmp_path / "runs.yaml"
        declaration.write_text("runs:\n  tiny: {mixture: m}\n")

        def launch(spec_path: Path, ranks: int, env: dict, extras: dict) -> dict:
            cmd = TrainingLauncher().command(ranks, spec_path)
            done = subprocess.run(
                cmd, env=os.environ | env, capture_output=True, text=True, timeout=600
            )
            launched.append(done.stdout + done.stderr)
            assert done.returncode == 0, done.stderr[-3000:]
            return {"ranks": ranks}

        summary = materialize_training(
            spec,
            client=client,
            experiment_id=experiment,
            tracking_uri=uri,
            ranks=1,
            launch=launch,
            run_name="tiny",
            tags={"corpuslab.run": "tiny"},
            params={"run": "tiny"},
            artifacts=[declaration],
        )
        run = client.get_run(summary["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        # the trainer found the server through its environment and logged the loss curve
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [2, 4]
        assert summary["loss_curve"] and "corpuslab:***@127.0.0.1" in (
            (run_dir / "mlflow.json").read_text()
        )
    searched = {
        "mlflow database": (server_root / "server.db").read_bytes(),
        "launch output": "".join(launched).encode(),
        "log records": caplog.text.encode(),
        "captured stdout/stderr": "".join(capfd.readouterr()).encode(),
        "server log": (server_root / "server.log").read_bytes(),
    }
    files = [p for d in (server_root / "artifacts", run_dir) for p in d.rglob("*") if p.is_file()]
    assert any(p.name == "spec.json" for p in files) and len(files) > 5
    searched |= {str(p): p.read_bytes() for p in files}
    assert len(searched["launch output"]) > 100  # the trainer did print its progress
    for secret in (PASSWORD, AWS_SECRET):
        leaks = [where for where, data in searched.items() if secret.encode() in data]
        assert leaks == [], (secret, leaks)
