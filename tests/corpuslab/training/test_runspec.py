"""The run declaration: torch-free import, the scale ladder, batch layout, lengths, schedules."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from pydantic import ValidationError

from corpuslab.training.runspec import (
    SCALES,
    ModelDims,
    ModelSpec,
    RunSpec,
    TrainConfig,
    batch_layout,
    fingerprint_differences,
    make_plan,
    resume_fingerprint,
)
from corpuslab.training.schedule import get_lr


def spec(model: ModelDims | None = None, **train: object) -> RunSpec:
    dims = model or ModelDims(vocab_size=512, seq_len=64, n_layer=2, n_head=2, d_model=64)
    return RunSpec(
        name="r",
        tokens_dir="t",
        out_dir="o",
        model=dims,
        train=TrainConfig(**train),
        deepspeed_config="zero2.json",
    )


@pytest.mark.parametrize(
    "module",
    ["corpuslab.training.runspec", "corpuslab.training.schedule", "corpuslab.declarations"],
)
def test_declarations_and_specs_import_without_torch(module: str) -> None:
    """The YAML loader and the run spec validate on a machine without torch or DeepSpeed."""
    heavy = "{'torch', 'deepspeed', 'dagster'}"
    code = f"import sys, {module}; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_model_dims_count_parameters_and_flops_like_the_torch_model() -> None:
    from corpuslab.training.model import GPT, GPTConfig

    for bias in (False, True):
        dims = ModelDims(vocab_size=300, seq_len=32, n_layer=3, n_head=4, d_model=48, bias=bias)
        model = GPT(GPTConfig.from_dims(dims))
        assert dims.num_params() == model.num_params()
        assert dims.num_params(non_embedding=False) == model.num_params(non_embedding=False)
        assert dims.flops_per_token() == model.estimate_flops_per_token()
        assert GPTConfig.from_dims(dims).dims() == dims
    assert ModelDims.model_validate(GPTConfig(10, 8, 1, 2, 8)).d_model == 8  # from attributes


def test_scale_ladder_resolves_and_cpu_names_match_their_size() -> None:
    for name, target in (("cpu-1m", 1e6), ("cpu-5m", 5e6), ("cpu-20m", 20e6)):
        dims = ModelSpec(scale=name).resolve(vocab_size=4096, seq_len=SCALES[name].seq_len)
        assert 0.8 * target < dims.num_params(non_embedding=False) < 1.3 * target, name
    big = ModelSpec(scale="dclm-412m")
    dims = big.resolve(vocab_size=50432, seq_len=2048)
    assert (dims.n_layer, dims.n_head, dims.d_model) == (24, 8, 1024)
    assert big.budget_params(dims) == 411_616_256  # DCLM's published count, not ours
    # "1x" is 20 tokens per parameter: DCLM's 8.23B tokens at the 412M scale.
    run = spec(dims, token_multiplier=1.0, micro_batch_size=16, global_batch_tokens=512 * 2048)
    run = run.model_copy(update={"budget_params": big.budget_params(dims)})
    plan = make_plan(run, world_size=8)
    assert plan.grad_accum_steps == 4 and plan.global_batch_sequences == 512
    assert plan.steps == math.ceil(8_232_325_120 / (512 * 2048)) == 7851


def test_model_spec_wants_a_known_scale_or_all_dims() -> None:
    with pytest.raises(ValidationError, match="unknown scale 'cpu-2m'"):
        ModelSpec(scale="cpu-2m")
    with pytest.raises(ValidationError, match="not both"):
        ModelSpec(scale="cpu-1m", d_model=64)
    with pytest.raises(ValidationError, match=r"missing \['n_head'\]"):
        ModelSpec(n_layer=2, d_model=64)
    explicit = ModelSpec(n_layer=2, n_head=2, d_model=64).resolve(vocab_size=97, seq_len=16)
    assert explicit.num_params(non_embedding=False) == ModelSpec(
        n_layer=2, n_head=2, d_model=64
    ).budget_params(explicit)


def test_batch_layout_derives_accumulation_and_rejects_what_does_not_divide() -> None:
    tc = TrainConfig(micro_batch_size=4, global_batch_tokens=64 * 4 * 6)
    assert batch_layout(tc, 64, 1) == (4, 6)
    assert batch_layout(tc, 64, 3) == (4, 2)
    with pytest.raises(
        ValueError, match=r"not a positive multiple of seq_len=64 x .* world_size=4"
    ):
        batch_layout(tc, 64, 4)
    with pytest.raises(ValueError, match="contradicts"):
        batch_layout(tc.model_copy(update={"grad_accum_steps": 5}), 64, 1)
    assert batch_layout(TrainConfig(micro_batch_size=2), 64, 4) == (2, 1)


def test_run_length_from_steps_tokens_or_multiplier() -> None:
    assert TrainConfig().steps == 100
    assert make_plan(spec(tokens=10_000, micro_batch_size=8), 2).steps == math.ceil(10_000 / 1024)
    run = spec(token_multiplier=0.5, micro_batch_size=8)
    assert make_plan(run, 1).steps == math.ceil(0.5 * 20 * run.model.num_params(False) / 512)
    with pytest.raises(ValidationError, match="only one of"):
        TrainConfig(steps=10, tokens=1000)
    with pytest.raises(ValidationError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ValidationError):
        TrainConfig(lr=math.inf)
    with pytest.raises(ValidationError, match="keep_checkpoints"):
        TrainConfig(lawa_k=3, keep_checkpoints=2)


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
    assert get_lr(3, TrainConfig(tokens=100, warmup_steps=0), steps=7) == pytest.approx(
        get_lr(3, TrainConfig(steps=7, warmup_steps=0))
    )


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_get_lr_warmup_stable_decay(shape: str) -> None:
    cfg = TrainConfig(
        steps=100,
        warmup_steps=10,
        lr=1e-3,
        min_lr=1e-5,
        schedule="wsd",
        decay_fraction=0.2,
        decay_shape=shape,
    )
    assert get_lr(9, cfg) == pytest.approx(1e-3)
    assert all(get_lr(s, cfg) == 1e-3 for s in range(10, 80))  # stable until the last 20 steps
    assert get_lr(80, cfg) < 1e-3
    assert get_lr(99, cfg) == pytest.approx(1e-5)  # the last step lands on min_lr
    decay = [get_lr(s, cfg) for s in range(79, 100)]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    halfway = get_lr(89, cfg)  # progress 0.5
    frac = 0.5 if shape == "linear" else math.sqrt(0.5)
    assert halfway == pytest.approx(1e-3 - (1e-3 - 1e-5) * frac)


def test_resume_fingerprint_ignores_reporting_and_names_what_differs() -> None:
    meta = {"dtype": "uint16", "seq_len": 64, "n_sequences": 100, "vocab_size": 512, "eos_id": 0}
    ds = {"zero_optimization": {"stage": 2}, "steps_per_print": 10}
    base = resume_fingerprint(spec(lr=1e-3), ds, meta, 1)
    same = resume_fingerprint(spec(lr=1e-3, log_every=3, threads=2, lawa_k=2), ds, meta, 1)
    assert fingerprint_differences(base, same) == []
    other = resume_fingerprint(spec(lr=2e-3), {"zero_optimization": {"stage": 3}}, meta, 2)
    assert fingerprint_differences(base, other) == [
        "deepspeed.zero_optimization.stage: checkpoint 2, spec 3",
        "train.lr: checkpoint 0.001, spec 0.002",
        "world_size: checkpoint 1, spec 2",
    ]
