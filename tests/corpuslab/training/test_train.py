"""The trainer: config filling, batch order, AdaGC, and real DeepSpeed runs on CPU.

The real runs launch the entry point (torchrun, or plain python for one rank) with DeepSpeed on
CPU (gloo, fp32) on the session's token file (``tokens_dir``: Python's own documentation text,
a BPE trained on it). One reference run (ZeRO-2, AdaGC, z-loss, LAWA, held-out rows, a
checkpoint every 10 steps, every step logged) is the yardstick the 2-rank run and the
killed-and-resumed run are compared against. (A run that inherits its parent's weights is
tested through Dagster: tests/assets/test_training.py.)
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from corpuslab.eval.bpb import sequence_loss
from corpuslab.lmdata.tokenfile import TokenFile, write_token_file
from corpuslab.training.checkpoints import average_checkpoints, load_model
from corpuslab.training.data import BatchSampler, get_batch
from corpuslab.training.deepspeed import fill_deepspeed_config
from corpuslab.training.loop import ResumeError, resume_point
from corpuslab.training.model import GPT, GPTConfig, inherit_weights
from corpuslab.training.optim import AdaGC
from corpuslab.training.runspec import AdaGCConfig, ModelDims, RunSpec, TrainConfig
from tests.training import ENTRYPOINT, REPO, SEQ_LEN, VOCAB, kill_after_checkpoint, trainer_env

DS_DIR = REPO / "infra" / "deepspeed"
ZERO2 = DS_DIR / "zero2.json"
STEPS = 30
HELDOUT = 64


def make_spec(out_dir: Path, tokens_dir: Path, deepspeed: Path = ZERO2, **train: object) -> RunSpec:
    settings: dict[str, object] = dict(
        steps=STEPS,
        micro_batch_size=8,
        grad_accum_steps=2,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=5,
        log_every=5,
        checkpoint_every=15,
        threads=1,  # two ranks on two cores: more threads per rank only contend
    )
    settings.update(train)
    return RunSpec(
        name="tiny",
        tokens_dir=tokens_dir,
        out_dir=out_dir,
        model=ModelDims(vocab_size=VOCAB, seq_len=SEQ_LEN, n_layer=2, n_head=2, d_model=64),
        train=TrainConfig(**settings),
        deepspeed_config=deepspeed,
    )


# --- pure helpers -----------------------------------------------------------------------------


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


def test_fill_deepspeed_config_derives_accumulation_merges_overrides_and_adagc(
    tmp_path: Path,
) -> None:
    spec = make_spec(
        tmp_path,
        tmp_path,
        grad_accum_steps=None,
        global_batch_tokens=64 * 8 * 6,
        adagc={"warmup_steps": 3},
    ).model_copy(update={"deepspeed_overrides": {"zero_optimization": {"stage": 1}}})
    template = json.loads(ZERO2.read_text())
    one, three = fill_deepspeed_config(template, spec, 1), fill_deepspeed_config(template, spec, 3)
    assert (one["gradient_accumulation_steps"], three["gradient_accumulation_steps"]) == (6, 2)
    assert one["train_batch_size"] == three["train_batch_size"] == 48
    zero = one["zero_optimization"]
    assert zero == {"stage": 1, "overlap_comm": False, "contiguous_gradients": True}
    assert one["gradient_clipping"] == 0.0  # AdaGC clips; DeepSpeed must not clip again
    with pytest.raises(ValueError, match="not a positive multiple"):
        fill_deepspeed_config(template, spec, world_size=4)


@pytest.mark.parametrize("name", sorted(p.stem for p in DS_DIR.glob("*.json")))
def test_every_shipped_deepspeed_config_fills_completely(name: str, tmp_path: Path) -> None:
    cfg = fill_deepspeed_config(
        json.loads((DS_DIR / f"{name}.json").read_text()),
        make_spec(tmp_path, tmp_path),
        world_size=2,
    )
    assert cfg["train_batch_size"] == 32 and cfg["zero_optimization"]["stage"] in (1, 2, 3)
    assert cfg["bf16"]["enabled"] == name.endswith("bf16")
    offloaded = "offload_optimizer" in cfg["zero_optimization"]
    assert offloaded == name.endswith("offload")


DS_CONFIG_WORKER = """
import json, sys, torch, deepspeed
from corpuslab.training.deepspeed import ensure_distributed_env, skip_cpu_shm_comm_build
from corpuslab.training.model import GPT, GPTConfig
ensure_distributed_env(); skip_cpu_shm_comm_build()
deepspeed.init_distributed(dist_backend="gloo", verbose=False)
torch.set_num_threads(1)
x = torch.randint(0, 97, (2, 17), generator=torch.Generator().manual_seed(0))
out = {}
for name, config in json.loads(open(sys.argv[1]).read()).items():
    torch.manual_seed(0)
    model = GPT(GPTConfig(97, 16, 2, 2, 32))
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2), config=config)
    losses = []
    for _ in range(2):
        _, loss = engine(x[:, :-1].to(engine.device), x[:, 1:].to(engine.device))
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    opt = engine.optimizer
    out[name] = {
        "losses": losses, "stage": engine.zero_optimization_stage(),
        "dtype": str(next(engine.module.parameters()).dtype),
        "optimizer_offloaded": bool(getattr(opt, "cpu_offload", False)
                                    or getattr(opt, "offload_optimizer", False)),
        "params_offloaded": bool(getattr(opt, "offload_param", False)),
    }
print("RESULT " + json.dumps(out))
"""


def test_every_shipped_deepspeed_config_takes_a_real_step_on_cpu(tmp_path: Path) -> None:
    """Each config in infra/deepspeed, filled as the trainer fills it, runs two real optimizer
    steps under DeepSpeed on CPU (one rank, gloo): ZeRO-1/2/3, bf16, optimizer and parameter
    offload all initialize and train, not only parse. The fp32 ones take the same step."""
    spec = make_spec(tmp_path, tmp_path, micro_batch_size=2, grad_accum_steps=1, grad_clip=1.0)
    configs = {
        p.stem: fill_deepspeed_config(json.loads(p.read_text()), spec, world_size=1)
        for p in sorted(DS_DIR.glob("*.json"))
    }
    assert set(configs) >= {"zero1", "zero2", "zero3", "zero2_bf16", "zero3_offload"}
    (tmp_path / "configs.json").write_text(json.dumps(configs))
    (tmp_path / "worker.py").write_text(DS_CONFIG_WORKER)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "worker.py"), str(tmp_path / "configs.json")],
        env=_env() | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert set(result) == set(configs)
    fp32 = result["zero1"]["losses"]
    for name, r in result.items():
        zero = configs[name]["zero_optimization"]
        assert r["stage"] == zero["stage"], name
        assert r["dtype"] == ("torch.bfloat16" if name.endswith("bf16") else "torch.float32"), name
        assert r["optimizer_offloaded"] == ("offload_optimizer" in zero), name
        assert r["params_offloaded"] == ("offload_param" in zero), name
        assert r["losses"][1] < r["losses"][0] - 0.1, name  # the step trained the model
        tolerance = 0.05 if name.endswith("bf16") else 1e-5  # bf16 rounds the logits
        assert r["losses"] == pytest.approx(fp32, abs=tolerance), name


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


def test_adagc_rule_global_in_warmup_then_relative_to_each_ema() -> None:
    ada = AdaGC(
        AdaGCConfig(beta=0.5, threshold=2.0, warmup_steps=1), params=[None] * 3, global_clip=1.0
    )
    # Warmup: global clip of the whole vector (norm 5) to 1; the EMA takes the clipped norms.
    s0 = ada.scales(torch.tensor([3.0, 4.0, 0.0]), step=0)
    assert torch.allclose(s0, torch.full((3,), 0.2, dtype=torch.float64))
    assert torch.allclose(ada.ema, torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64))
    # After: each clipped to 2 x its own EMA; below that untouched.
    s1 = ada.scales(torch.tensor([3.0, 1.0, 0.0]), step=1)
    assert torch.allclose(s1, torch.tensor([1.2 / 3.0, 1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(ada.ema, torch.tensor([0.9, 0.9, 0.0], dtype=torch.float64))
    again = AdaGC(ada.cfg, params=[None] * 3, global_clip=1.0)
    again.load_state_dict(ada.state_dict())
    assert torch.equal(again.ema, ada.ema)


def test_inherit_weights_copies_embeddings_first_blocks_and_final_norm() -> None:
    torch.manual_seed(0)
    parent = GPT(GPTConfig(vocab_size=97, seq_len=32, n_layer=4, n_head=2, d_model=32))
    torch.manual_seed(1)
    child = GPT(GPTConfig(vocab_size=97, seq_len=16, n_layer=3, n_head=2, d_model=32))
    before = {k: v.clone() for k, v in child.state_dict().items()}
    copied = inherit_weights(child, parent.state_dict(), parent.config, layers=2)
    p, c = parent.state_dict(), child.state_dict()
    assert "transformer.h.1.mlp.c_fc.weight" in copied and "transformer.ln_f.weight" in copied
    for name in c:
        if name.startswith(
            (
                "transformer.h.0.",
                "transformer.h.1.",
                "transformer.wte.",
                "transformer.ln_f.",
                "lm_head.",
            )
        ):
            assert torch.equal(c[name], p[name]), name
        elif name == "transformer.wpe.weight":
            assert torch.equal(c[name], p[name][:16])
        else:  # block 2 keeps its own initialization
            assert torch.equal(c[name], before[name]), name
    assert child.lm_head.weight is child.transformer.wte.weight  # still tied
    wider = GPT(GPTConfig(vocab_size=97, seq_len=16, n_layer=2, n_head=2, d_model=64))
    with pytest.raises(ValueError, match="d_model"):
        inherit_weights(wider, parent.state_dict(), parent.config, layers=1)
    with pytest.raises(ValueError, match="layers=5"):
        inherit_weights(child, parent.state_dict(), parent.config, layers=5)


# --- real runs ----------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return trainer_env()


def write_spec(spec: RunSpec, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec.model_dump_json(indent=2))
    return path


def launch(spec: RunSpec, tmp_path: Path, ranks: int = 1) -> subprocess.CompletedProcess[str]:
    """The entry point under torchrun with ``ranks`` processes; waits for it."""
    spec_path = write_spec(spec, tmp_path / f"spec-{spec.name}-{ranks}.json")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(ranks),
        str(ENTRYPOINT),
        "--spec",
        str(spec_path),
    ]
    return subprocess.run(
        cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )


def step_lines(stdout: str) -> dict[int, dict]:
    lines = [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{")]
    return {ln["step"]: ln for ln in lines if "step" in ln}


def reference_spec(out_dir: Path, tokens_dir: Path) -> RunSpec:
    return make_spec(
        out_dir,
        tokens_dir,
        grad_accum_steps=None,
        global_batch_tokens=16 * SEQ_LEN,
        log_every=1,
        checkpoint_every=10,
        lawa_k=2,
        heldout_sequences=HELDOUT,
        adagc={"warmup_steps": 5},
        z_loss=1e-4,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tokens_dir: Path) -> dict:
    """One uninterrupted 1-rank ZeRO-2 run logging to MLflow: the yardstick of the others."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("e2e", artifact_location=str(root / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    spec = reference_spec(root / "run", tokens_dir).model_copy(
        update={"mlflow_tracking_uri": uri, "mlflow_run_id": run_id}
    )
    proc = launch(spec, root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {
        "spec": spec,
        "steps": step_lines(proc.stdout),
        "client": client,
        "run_id": run_id,
        "summary": json.loads((spec.out_dir / "summary.json").read_text()),
    }


def test_reference_run_streams_metrics_to_reporter_and_mlflow(reference: dict) -> None:
    steps, summary, out = reference["steps"], reference["summary"], reference["spec"].out_dir
    assert sorted(steps) == list(range(1, STEPS + 1))
    assert steps[STEPS]["lr"] == pytest.approx(3e-4)
    for line in steps.values():
        assert line["tokens_per_s"] > 0 and line["mfu"] > 0
        assert 0 < line["z_loss"] < 1e-2  # 1e-4 x log(Z)^2, log(Z) ~ a few nats
        assert 0 <= line["adagc_clipped_fraction"] <= 1
    assert any(steps[s]["adagc_clipped_fraction"] > 0 for s in range(6, STEPS + 1))
    # MFU as documented: flops per token x tokens/s / peak (one rank).
    assert summary["mfu"] == pytest.approx(
        summary["flops_per_token"] * summary["tokens_per_s"] / summary["peak_flops_per_device"]
    )
    assert summary["steps"] == STEPS and summary["tokens_seen"] == STEPS * 16 * SEQ_LEN
    assert summary["initial_loss"] > math.log(VOCAB) - 0.5
    assert summary["final_loss"] < summary["initial_loss"] - 0.5  # it learned
    assert summary["skipped_steps"] == 0 and summary["grad_accum_steps"] == 2
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step30"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step10", "step20", "step30"]
    for tag in ("step10", "step20", "step30"):
        names = {p.name for p in (ckpts / tag).iterdir()}
        assert {"model.pt", "run.json", "trainer_state_rank0.json"} <= names, tag
        assert any(n.endswith("optim_states.pt") for n in names), tag
    assert load_model(out).config == GPTConfig.from_dims(reference["spec"].model)

    client, run_id = reference["client"], reference["run_id"]
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(1, STEPS + 1))
    assert history[-1].value == pytest.approx(summary["final_loss"])
    logged = set(client.get_run(run_id).data.metrics)
    assert {"lr", "tokens_per_s", "mfu", "tokens_seen", "z_loss", "grad_norm"} <= logged


def test_lawa_averages_the_last_checkpoints_and_both_heldout_losses_are_reported(
    reference: dict, tokens_dir: Path
) -> None:
    out, summary = reference["spec"].out_dir, reference["summary"]
    assert summary["lawa_checkpoints"] == ["step20", "step30"]
    lawa = torch.load(out / "model_lawa.pt", weights_only=True)
    expected = average_checkpoints([out / "checkpoints" / "step20", out / "checkpoints" / "step30"])
    s20 = torch.load(out / "checkpoints" / "step20" / "model.pt", weights_only=True)
    final = torch.load(out / "model.pt", weights_only=True)
    assert lawa.keys() == final.keys()
    for k in lawa:
        assert torch.equal(lawa[k], expected[k])
        assert torch.allclose(lawa[k], (s20[k].double() + final[k].double()).float() / 2)
    assert not torch.equal(
        lawa["transformer.h.0.attn.c_attn.weight"], final["transformer.h.0.attn.c_attn.weight"]
    )
    # Held-out rows are the last rows of the token file, never trained on.
    rows = TokenFile.open(tokens_dir).tokens[-HELDOUT:]
    assert summary["heldout_sequences"] == HELDOUT
    assert summary["heldout_loss"] == pytest.approx(sequence_loss(load_model(out), rows))
    lawa_model = load_model(out, weights="model_lawa.pt")
    assert summary["heldout_loss_lawa"] == pytest.approx(sequence_loss(lawa_model, rows))
    assert summary["heldout_loss"] != summary["heldout_loss_lawa"]
    assert summary["heldout_loss"] < summary["initial_loss"] - 0.5


def test_two_ranks_partition_optimizer_state_and_match_the_one_rank_losses(
    reference: dict, tmp_path: Path, tokens_dir: Path
) -> None:
    spec = reference["spec"].model_copy(
        update={"out_dir": tmp_path / "run2", "mlflow_tracking_uri": None, "mlflow_run_id": None}
    )
    proc = launch(spec, tmp_path, ranks=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    two = json.loads((spec.out_dir / "summary.json").read_text())
    one = reference["summary"]
    assert (two["world_size"], two["grad_accum_steps"]) == (2, 1)  # same 1024-token batch
    # ZeRO-2: each rank holds half of the AdamW moments (the flat buffer is padded to split).
    (full,), halves = one["optimizer_state_numel_per_rank"], two["optimizer_state_numel_per_rank"]
    assert len(halves) == 2 and all(full / 2 <= h <= full / 2 + 64 for h in halves)
    optim = sorted((spec.out_dir / "checkpoints" / "step30").glob("*optim_states.pt"))
    single = next((reference["spec"].out_dir / "checkpoints" / "step30").glob("*optim_states.pt"))
    assert len(optim) == 2 and all(p.stat().st_size < 0.6 * single.stat().st_size for p in optim)
    # Same rows per step, same AdaGC decisions: the same trajectory up to float reordering.
    losses = step_lines(proc.stdout)
    for step, line in reference["steps"].items():
        assert losses[step]["loss"] == pytest.approx(line["loss"], abs=1e-4), step


def _kill_during_second_checkpoint(spec: RunSpec, tmp_path: Path) -> str:
    """Start a 1-rank run, SIGKILL it while step 20's checkpoint is written (or just after)."""
    spec_path = write_spec(spec, tmp_path / "spec-killed.json")
    ckpts = spec.out_dir / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, str(ENTRYPOINT), "--spec", str(spec_path)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen = "none"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (ckpts / ".tmp-step20").exists():
                seen = "while writing step20"
                break
            latest = ckpts / "latest"
            if latest.exists() and latest.read_text().strip() == "step20":
                seen = "after step20"
                break
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return seen


def test_sigkill_mid_run_then_relaunch_reproduces_the_uninterrupted_run(
    reference: dict, tmp_path: Path
) -> None:
    spec = reference["spec"].model_copy(
        update={"out_dir": tmp_path / "run", "mlflow_tracking_uri": None, "mlflow_run_id": None}
    )
    seen = _kill_during_second_checkpoint(spec, tmp_path)
    assert seen != "none", "the run never reached its second checkpoint"
    ckpts = spec.out_dir / "checkpoints"
    assert not (spec.out_dir / "summary.json").exists()  # killed mid-run
    latest = (ckpts / "latest").read_text().strip()
    assert latest in ("step10", "step20")  # never a half-written checkpoint
    if seen == "while writing step20":  # (the usual case: a save takes far longer than a poll)
        assert latest == "step10" and (ckpts / ".tmp-step20").is_dir()
    assert {"model.pt", "run.json", "trainer_state_rank0.json"} <= {
        p.name for p in (ckpts / latest).iterdir()
    }

    proc = launch(spec, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((spec.out_dir / "summary.json").read_text())
    resumed_from = int(latest.removeprefix("step"))
    assert summary["resumed_from_step"] == resumed_from
    assert summary["initial_loss"] == reference["summary"]["initial_loss"]
    assert not list(ckpts.glob(".tmp-*"))  # the killed save's leftovers are gone
    relaunched = step_lines(proc.stdout)
    assert sorted(relaunched) == list(range(resumed_from + 1, STEPS + 1))
    for step, line in relaunched.items():  # same data order, RNG, optimizer and AdaGC state
        assert line["loss"] == pytest.approx(reference["steps"][step]["loss"], abs=1e-6), step
    final = torch.load(spec.out_dir / "model.pt", weights_only=True)
    expected = torch.load(reference["spec"].out_dir / "model.pt", weights_only=True)
    assert all(torch.allclose(final[k], expected[k], atol=1e-6) for k in expected)


def test_resume_refuses_a_spec_that_changed_what_is_trained(reference: dict) -> None:
    spec = reference["spec"]
    ds, _, tag = resume_point(spec, world_size=1)
    assert tag == "step30" and ds["zero_optimization"]["stage"] == 2
    # Reporting and checkpoint cadence may change between launches.
    relaxed = spec.model_copy(
        update={
            "train": spec.train.model_copy(
                update={"log_every": 7, "checkpoint_every": 3, "spike_factor": 3.0}
            )
        }
    )
    assert resume_point(relaxed, world_size=1)[2] == "step30"
    changed = spec.model_copy(update={"train": spec.train.model_copy(update={"lr": 1e-3})})
    with pytest.raises(ResumeError, match=r"train\.lr: checkpoint 0\.003, spec 0\.001"):
        resume_point(changed, world_size=1)
    with pytest.raises(ResumeError, match="world_size: checkpoint 1, spec 2"):
        resume_point(spec, world_size=2)


ADAGC_WORKER = """
import json, sys, torch, deepspeed, torch.distributed as dist
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad
from corpuslab.training.deepspeed import ensure_distributed_env, skip_cpu_shm_comm_build
from corpuslab.training.model import GPT, GPTConfig
from corpuslab.training.optim import AdaGC
from corpuslab.training.runspec import AdaGCConfig
ensure_distributed_env(); skip_cpu_shm_comm_build()
deepspeed.init_distributed(dist_backend="gloo", verbose=False)
torch.set_num_threads(1)
rank, world, out = dist.get_rank(), dist.get_world_size(), {}
LR = 1.0  # plain SGD: the weights move by exactly the gradient the optimizer was given
for stage in (0, 1, 2, 3):
    torch.manual_seed(0)
    model = GPT(GPTConfig(97, 16, 2, 2, 32))
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "train_batch_size": 2 * world, "gradient_clipping": 0.0,
              "zero_allow_untested_optimizer": True, "zero_optimization": {"stage": stage}}
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), config=config)
    params = [p for p in engine.module.parameters() if p.requires_grad]
    def weights():
        return [safe_get_full_fp32_param(p).clone() if stage == 3 else p.detach().clone()
                for p in params]
    x = torch.randint(0, 97, (2, 17), generator=torch.Generator().manual_seed(rank))
    _, loss = engine(x[:, :-1], x[:, 1:])
    engine.backward(loss)
    full = [float(safe_get_full_grad(p).norm()) for p in params]
    ada = AdaGC(AdaGCConfig(warmup_steps=0, threshold=1.05), params, 0.0)
    ada.ema = torch.tensor(full, dtype=torch.float64) * torch.tensor([0.5, 2.0] * 20)[:len(full)]
    fraction = ada.clip(engine, step=0)
    after = [float(safe_get_full_grad(p).norm()) for p in params]
    before = weights()
    engine.step()
    # what the optimizer applied, per parameter: |w_before - w_after| / lr
    step = [float((b - a).norm()) / LR for b, a in zip(before, weights())]
    norm = engine.get_global_grad_norm()
    out[stage] = {"full": full, "after": after, "fraction": fraction, "step_norm": step,
                  "ds_norm": None if norm is None else float(norm)}
if rank == 0:
    print("RESULT " + json.dumps(out))
"""


def test_adagc_clips_the_full_gradient_norms_on_every_zero_stage_with_two_ranks(
    tmp_path: Path,
) -> None:
    """AdaGC clips each parameter's full (all-reduced, unpartitioned) gradient to 1.05 x its EMA,
    and the optimizer steps with the clipped gradients on ZeRO-0/1/2/3: with SGD at lr 1 the
    weights move by exactly them (``step_norm``), and DeepSpeed's own norm agrees where it
    reports one (ZeRO-1/2/3; ZeRO-0 with a client optimizer computes none)."""
    script = tmp_path / "adagc_worker.py"
    script.write_text(ADAGC_WORKER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    env = _env() | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = {int(k): v for k, v in json.loads(line.removeprefix("RESULT ")).items()}
    assert sorted(result) == [0, 1, 2, 3]
    for stage, r in result.items():
        # Every other parameter was over 1.05 x its EMA (EMA = half its norm): clipped to it.
        expected = [f * 0.525 if i % 2 == 0 else f for i, f in enumerate(r["full"])]
        assert r["after"] == pytest.approx(expected, rel=1e-5), stage
        assert r["fraction"] == pytest.approx(
            sum(1 for i in range(len(expected)) if i % 2 == 0) / len(expected)
        )
        # w - (w - g) in fp32 loses a few digits of the smallest gradients: rel 1e-4
        assert r["step_norm"] == pytest.approx(expected, rel=1e-4), stage
        if stage > 0:
            assert r["ds_norm"] == pytest.approx(math.sqrt(sum(e * e for e in expected)), rel=1e-5)
    assert result[0]["ds_norm"] is None
    # ZeRO-1/2/3 partition the gradients between the ranks, yet agree with stage 0's full ones.
    for stage in (1, 2, 3):
        assert result[stage]["full"] == pytest.approx(result[0]["full"], rel=1e-5)


def test_loss_spike_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, tokens_dir: Path
) -> None:
    # lr 0.3 from the first step: the loss climbs from 6.2 to 8.3 then 15.8 by step 3, which is
    # more than 1.5 x the mean of steps 1-2. Checkpoints are written after every good step.
    spec = make_spec(
        tmp_path / "run",
        tokens_dir,
        steps=8,
        lr=0.3,
        min_lr=0.3,
        warmup_steps=0,
        checkpoint_every=1,
        log_every=1,
        spike_factor=1.5,
        spike_window=2,
    )
    proc = launch(spec, tmp_path)
    assert proc.returncode != 0
    assert "loss spike at step 3 of tiny" in proc.stderr
    assert "last good checkpoint: step2" in proc.stderr
    ckpts = spec.out_dir / "checkpoints"
    assert (ckpts / "latest").read_text() == "step2"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step1", "step2"]
    assert not (spec.out_dir / "model.pt").exists()


def test_non_finite_loss_stops_the_run_with_a_clear_error(tmp_path: Path, tokens_dir: Path) -> None:
    # ZeRO stages >= 1 skip updates with non-finite gradients, so the weights stay finite; plain
    # data parallelism (stage 0) applies them, and lr=1e3 turns the loss into NaN by step 3.
    spec = make_spec(tmp_path / "run", tokens_dir, steps=6, lr=1e3, min_lr=1e3, warmup_steps=0)
    spec = spec.model_copy(update={"deepspeed_overrides": {"zero_optimization": {"stage": 0}}})
    proc = launch(spec, tmp_path)
    assert proc.returncode != 0
    assert "non-finite loss nan at step" in proc.stdout + proc.stderr
    assert not (spec.out_dir / "model.pt").exists()
    assert not (spec.out_dir / "checkpoints" / "latest").exists()


def test_doremi_proxy_moves_weights_by_excess_loss_identically_on_one_and_two_ranks(
    reference: dict, tmp_path: Path, tokens_dir: Path
) -> None:
    """The proxy of DoReMi trains against the finished reference run; the all-reduced per-domain
    sums make the weights the same on one and two ranks, and they follow the excess losses."""
    from corpuslab.training.doremi import dro_update
    from corpuslab.training.runspec import DoReMiSpec

    base = make_spec(
        tmp_path / "proxy1",
        tokens_dir,
        steps=12,
        grad_accum_steps=None,
        global_batch_tokens=16 * SEQ_LEN,
        log_every=4,
        checkpoint_every=6,
        z_loss=1e-4,
        seed=7,  # not the reference's seed: the proxy starts elsewhere
    ).model_copy(
        update={"doremi": DoReMiSpec(reference_run_dir=reference["spec"].out_dir, eta=2.0)}
    )
    one = launch(base, tmp_path)
    assert one.returncode == 0, one.stderr[-4000:]
    report = json.loads((base.out_dir / "doremi.json").read_text())
    assert report["domains"] == ["a", "b"] and report["updates"] == 12
    assert len(report["trajectory"]) == 12
    avg = report["average_weights"]
    assert sum(avg.values()) == pytest.approx(1.0)
    assert all(v > 0 for v in report["mean_excess_loss"].values())  # a fresh proxy lags
    # Replaying the update on the recorded per-step excess gives the recorded weights.
    alpha = torch.tensor([0.5, 0.5], dtype=torch.float64)
    for excess, weights in zip(report["excess_trajectory"], report["trajectory"], strict=True):
        alpha = dro_update(alpha, torch.tensor(excess, dtype=torch.float64), 2.0, 1e-3)
        assert alpha.tolist() == pytest.approx(weights, rel=1e-9)
    mean_alpha = np.mean(report["trajectory"], axis=0)
    assert [avg["a"], avg["b"]] == pytest.approx(list(mean_alpha / mean_alpha.sum()))
    # alpha ~ exp(eta * cumulative excess): the domain that lagged more in total leads.
    total = np.sum(report["excess_trajectory"], axis=0)
    lead = int(np.argmax(report["trajectory"][-1]))
    assert lead == int(np.argmax(total)) and report["trajectory"][-1] != [0.5, 0.5]
    steps = step_lines(one.stdout)
    assert steps[12]["doremi.weight.a"] == pytest.approx(report["final_weights"]["a"])
    summary = json.loads((base.out_dir / "summary.json").read_text())
    assert summary["doremi_weights"] == pytest.approx(avg)

    # Killed (SIGKILL) once its step-6 checkpoint is written, relaunched: the weights' state
    # resumes exactly, so the trajectory matches the uninterrupted run's.
    killed = base.model_copy(update={"out_dir": tmp_path / "proxy_killed"})
    spec_path = write_spec(killed, tmp_path / "spec-killed.json")
    at = kill_after_checkpoint(
        [sys.executable, str(ENTRYPOINT), "--spec", str(spec_path)], _env(), killed.out_dir, 6
    )
    assert at == 6 and not (killed.out_dir / "doremi.json").exists()  # killed mid-run
    again = launch(killed, tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads((killed.out_dir / "summary.json").read_text())["resumed_from_step"] == 6
    report_r = json.loads((killed.out_dir / "doremi.json").read_text())
    assert report_r["updates"] == 12
    for key in ("trajectory", "excess_trajectory"):
        for a, b in zip(report[key], report_r[key], strict=True):
            assert a == pytest.approx(b, abs=1e-6)

    two_spec = base.model_copy(update={"out_dir": tmp_path / "proxy2"})
    two = launch(two_spec, tmp_path, ranks=2)
    assert two.returncode == 0, two.stderr[-4000:]
    report2 = json.loads((two_spec.out_dir / "doremi.json").read_text())
    for a, b in zip(report["trajectory"], report2["trajectory"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)
