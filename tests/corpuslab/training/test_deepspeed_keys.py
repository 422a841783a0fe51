"""The DeepSpeed keys declarations may override are keys the installed DeepSpeed reads."""

from __future__ import annotations

from pathlib import Path

import deepspeed
from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
from deepspeed.runtime.zero.offload_config import (
    DeepSpeedZeroOffloadOptimizerConfig,
    DeepSpeedZeroOffloadParamConfig,
)

from corpuslab.training.deepspeed import DOCUMENTED_KEYS, unknown_override_keys


def _names(model: type) -> set[str]:
    fields = model.model_fields
    return set(fields) | {f.alias for f in fields.values() if f.alias}


def test_documented_sections_match_deepspeeds_own_models() -> None:
    """Sections DeepSpeed validates with pydantic (extra keys forbidden): same key sets."""
    models = {
        "zero_optimization": DeepSpeedZeroConfig,
        "zero_optimization.offload_optimizer": DeepSpeedZeroOffloadOptimizerConfig,
        "zero_optimization.offload_param": DeepSpeedZeroOffloadParamConfig,
        "fp16": DeepSpeedFP16Config,
        "bf16": DeepSpeedBF16Config,
    }
    for section, model in models.items():
        assert DOCUMENTED_KEYS[section] <= _names(model), section
        assert model.model_config.get("extra") == "forbid"


def test_every_documented_top_level_key_is_read_by_deepspeed() -> None:
    """Each top-level key appears as a quoted string in the installed DeepSpeed's sources."""
    root = Path(deepspeed.__file__).parent
    source = "\n".join(p.read_text(errors="replace") for p in root.rglob("*.py"))
    missing = sorted(k for k in DOCUMENTED_KEYS[""] if f'"{k}"' not in source)
    assert missing == []


def test_unknown_override_keys() -> None:
    base = {"train_batch_size": "auto", "zero_optimization": {"stage": 2}, "custom": {"a": 1}}
    assert (
        unknown_override_keys(base, {"zero_optimization": {"stage": 3}, "custom": {"b": 2}}) == []
    )
    assert unknown_override_keys(base, {"zero_optimisation": {"stage": 3}}) == [
        "zero_optimisation (did you mean zero_optimization?)"
    ]
    assert unknown_override_keys(base, {"bf16": {"enable": True}}) == [
        "bf16.enable (did you mean enabled?)"
    ]
