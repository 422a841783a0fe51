"""Learning-rate schedules: warmup then cosine, or warmup-stable-decay (WSD). No torch needed."""

from __future__ import annotations

import math

from corpuslab.training.runspec import TrainConfig


def get_lr(step: int, cfg: TrainConfig, steps: int | None = None) -> float:
    """Learning rate of 0-based ``step`` of ``steps`` (default ``cfg.steps``).

    Linear warmup reaches ``lr`` at step ``warmup_steps - 1``. Cosine then decays from the peak
    at step ``warmup_steps`` to exactly ``min_lr`` at the last step. WSD holds the peak until the
    last ``ceil(decay_fraction * steps)`` steps, which decay (linearly, or as ``1 - sqrt``) so
    that the last step lands on ``min_lr``.
    """
    total = steps if steps is not None else cfg.steps
    if total is None:
        raise ValueError("get_lr needs the run's step count (see make_plan)")
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        decay_steps = min(math.ceil(cfg.decay_fraction * total), total - cfg.warmup_steps)
        start = total - decay_steps
        if decay_steps <= 0 or step < start:
            return cfg.lr
        progress = min(1.0, (step - start + 1) / decay_steps)
        shape = progress if cfg.decay_shape == "linear" else math.sqrt(progress)
        return cfg.lr - (cfg.lr - cfg.min_lr) * shape
    decay_steps = total - 1 - cfg.warmup_steps
    if decay_steps <= 0:
        return cfg.lr
    ratio = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)
