"""Training library: schedule, DeepSpeed config filling, token file, batch order, and real runs.

The end-to-end tests launch the entry point under torchrun with DeepSpeed on CPU (gloo, fp32),
on a token file made from Python's own documentation text with a BPE trained here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from pydoc_data.topics import topics  # Python's own help text: real prose, always installed

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from corpuslab.evaluate import load_model
from corpuslab.model import GPTConfig
from corpuslab.tokenfile import TokenFile, write_token_file
from corpuslab.train import (
    BatchSampler,
    RunSpec,
    TrainConfig,
    fill_deepspeed_config,
    get_batch,
    get_lr,
)

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "infra" / "entrypoints" / "train.py"
ZERO2 = REPO / "infra" / "deepspeed" / "zero2.json"
SEQ_LEN = 64
VOCAB = 512


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real token file: Python's help topics, BPE-encoded, EOS after each document."""
    root = tmp_path_factory.mktemp("tokens")
    texts = [topics[k] for k in sorted(topics)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(str(root / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    ids = [i for enc in tok.encode_batch(texts) for i in [*enc.ids, eos]]
    n = len(ids) // (SEQ_LEN + 1)
    rows = np.array(ids[: n * (SEQ_LEN + 1)]).reshape(n, SEQ_LEN + 1)
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


def make_spec(tmp_path: Path, tokens_dir: Path, **train: object) -> RunSpec:
    settings = dict(
        steps=30,
        micro_batch_size=8,
        grad_accum_steps=2,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=5,
        log_every=5,
        checkpoint_every=15,
        threads=2,
    )
    settings.update(train)
    return RunSpec(
        name="tiny",
        tokens_dir=tokens_dir,
        out_dir=tmp_path / "run",
        model=GPTConfig(vocab_size=VOCAB, seq_len=SEQ_LEN, n_layer=2, n_head=2, d_model=64),
        train=TrainConfig(**settings),
        deepspeed_config=ZERO2,
    )


# --- pure helpers -----------------------------------------------------------------------------


def test_get_lr_warmup_peak_and_cosine_end() -> None:
    cfg = TrainConfig(steps=101, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert get_lr(0, cfg) == pytest.approx(1e-4)  # 1/10 of the peak
    assert get_lr(4, cfg) == pytest.approx(5e-4)
    assert get_lr(9, cfg) == pytest.approx(1e-3)  # warmup ends at the peak
    assert get_lr(10, cfg) == pytest.approx(1e-3)  # decay starts at the peak
    assert get_lr(55, cfg) == pytest.approx(5.5e-4)  # cosine midpoint: halfway to min_lr
    assert get_lr(100, cfg) == pytest.approx(1e-4)  # last step lands on min_lr
    decay = [get_lr(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert get_lr(0, TrainConfig(steps=5, warmup_steps=0, lr=2e-3, min_lr=0)) == 2e-3


def test_train_config_rejects_min_lr_above_lr_and_infinite_lr() -> None:
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ValueError):
        TrainConfig(lr=math.inf)


def test_fill_deepspeed_config_fills_autos_from_spec(tmp_path: Path) -> None:
    template = json.loads(ZERO2.read_text())
    spec = make_spec(tmp_path, tmp_path, micro_batch_size=4, grad_accum_steps=3, grad_clip=0.5)
    cfg = fill_deepspeed_config(template, spec, world_size=2)
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_accumulation_steps"] == 3
    assert cfg["train_batch_size"] == 24
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["bf16"] == {"enabled": False} and cfg["fp16"] == {"enabled": False}
    assert template["train_batch_size"] == "auto"  # the template itself is untouched


def test_fill_deepspeed_config_keeps_explicit_values_and_fills_optimizer(tmp_path: Path) -> None:
    template = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": 0.3,
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
    }
    spec = make_spec(tmp_path, tmp_path, micro_batch_size=8, grad_accum_steps=4, lr=7e-4)
    cfg = fill_deepspeed_config(template, spec, world_size=3)
    assert cfg["train_micro_batch_size_per_gpu"] == 2  # explicit wins over the spec's 8
    assert cfg["train_batch_size"] == 2 * 4 * 3
    assert cfg["gradient_clipping"] == 0.3
    assert cfg["optimizer"]["params"] == {"lr": 7e-4, "weight_decay": spec.train.weight_decay}


def test_fill_deepspeed_config_rejects_contradictions_and_leftover_autos(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, tmp_path, micro_batch_size=8, grad_accum_steps=2)
    with pytest.raises(ValueError, match="train_batch_size=100"):
        fill_deepspeed_config({"train_batch_size": 100}, spec, world_size=2)
    with pytest.raises(ValueError, match="zero_optimization.reduce_bucket_size"):
        fill_deepspeed_config({"zero_optimization": {"reduce_bucket_size": "auto"}}, spec)


def test_token_file_round_trip_and_size_check(tmp_path: Path) -> None:
    rows = np.arange(3 * 9).reshape(3, 9) % 300
    tf = write_token_file(tmp_path / "t", rows, [0, 1, 1], 300, 299, ["x", "y"], tmp_path / "tok")
    again = TokenFile.open(tmp_path / "t")
    assert again.meta == tf.meta
    assert (again.meta.dtype, again.meta.seq_len, len(again)) == ("uint16", 8, 3)
    assert np.array_equal(again.tokens, rows)
    assert again.domains().tolist() == [0, 1, 1]
    assert not list(tmp_path.glob(".t.*"))  # no temporary folder left behind
    with pytest.raises(ValueError, match="outside"):
        write_token_file(tmp_path / "u", rows, [0, 0, 0], 10, 0, ["x"], tmp_path / "tok")
    with (tmp_path / "t" / "train.bin").open("ab") as f:
        f.write(b"\0\0")
    with pytest.raises(ValueError, match="meta.json implies"):
        TokenFile.open(tmp_path / "t")


def test_batch_sampler_ranks_are_disjoint_and_world_size_does_not_change_order() -> None:
    one = BatchSampler(n_rows=50, micro=4, accum=2, world_size=1, seed=7)
    two = BatchSampler(n_rows=50, micro=4, accum=1, world_size=2, seed=7)
    for step in range(20):  # 160 rows: crosses three epoch boundaries
        rows = two.global_rows(step)
        assert np.array_equal(rows, one.global_rows(step))
        r0, r1 = two.rank_rows(step, 0), two.rank_rows(step, 1)
        assert r0.shape == r1.shape == (1, 4)
        assert not set(r0.ravel()) & set(r1.ravel())
        assert sorted([*r0.ravel(), *r1.ravel()]) == sorted(rows)
    epoch0 = np.concatenate([one.global_rows(s) for s in range(7)])[:50]
    assert sorted(epoch0) == list(range(50))  # each epoch visits every row once
    other_seed = BatchSampler(n_rows=50, micro=4, accum=2, world_size=1, seed=8)
    assert not np.array_equal(other_seed.global_rows(0), one.global_rows(0))


def test_get_batch_shifts_targets_by_one(tokens_dir: Path) -> None:
    tf = TokenFile.open(tokens_dir)
    x, y = get_batch(tf.tokens, np.array([3, 1]), SEQ_LEN)
    assert x.shape == y.shape == (2, SEQ_LEN)
    assert np.array_equal(x[0].numpy(), tf.tokens[1, :-1])
    assert np.array_equal(y[0].numpy(), tf.tokens[1, 1:])


# --- real runs ----------------------------------------------------------------------------------


def launch(spec: RunSpec, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.model_dump_json(indent=2))
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_PIPES_CONTEXT"}
    env["DS_ACCELERATOR"] = "cpu"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        str(ENTRYPOINT), "--spec", str(spec_path),
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_end_to_end_zero2_run_logs_to_mlflow(tmp_path: Path, tokens_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("e2e", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    spec = make_spec(tmp_path, tokens_dir).model_copy(
        update={"mlflow_tracking_uri": uri, "mlflow_run_id": run_id}
    )

    proc = launch(spec, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    steps = [ln for ln in lines if "step" in ln]
    assert [ln["step"] for ln in steps] == [5, 10, 15, 20, 25, 30]
    assert steps[-1]["lr"] == pytest.approx(3e-4)
    assert all(ln["tokens_per_s"] > 0 for ln in steps)

    out = spec.out_dir
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["tokens_seen"] == 30 * 16 * SEQ_LEN
    assert summary["initial_loss"] > math.log(VOCAB) - 0.5
    assert summary["final_loss"] < summary["initial_loss"] - 0.5  # it learned
    assert summary["num_params"] > 0 and summary["wall_s"] > 0
    assert summary["skipped_steps"] == 0
    assert (out / "checkpoints" / "latest").read_text().strip() == "step30"
    for tag in ("step15", "step30"):
        assert list((out / "checkpoints" / tag).glob("*optim_states.pt")), tag
    model = load_model(out)
    assert model.config == spec.model

    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == [5, 10, 15, 20, 25, 30]
    assert history[-1].value == pytest.approx(summary["final_loss"])
    assert {"lr", "tokens_per_s", "tokens_seen"} <= set(client.get_run(run_id).data.metrics)


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_with_a_clear_error(tmp_path: Path, tokens_dir: Path) -> None:
    # ZeRO stages >= 1 skip updates with non-finite gradients, so the weights stay finite; plain
    # data parallelism (stage 0) applies them, and lr=1e3 turns the loss into NaN by step 3.
    template = json.loads(ZERO2.read_text()) | {"zero_optimization": {"stage": 0}}
    (tmp_path / "zero0.json").write_text(json.dumps(template))
    spec = make_spec(tmp_path, tokens_dir, steps=6, lr=1e3, min_lr=1e3, warmup_steps=0)
    spec.deepspeed_config = tmp_path / "zero0.json"
    proc = launch(spec, tmp_path)
    assert proc.returncode != 0
    assert "non-finite loss nan at step" in proc.stdout + proc.stderr
    assert not (spec.out_dir / "model.pt").exists()
