"""The ``code_version`` of every asset: its stage's revision plus a hash of what shapes it.

What shapes an asset is the whole declaration it belongs to (a source, a recipe, a mixture, a
run) minus the fields that shape other assets of that declaration: e.g. a pool shard hashes its
whole recipe except ``dedup`` and ``quality``, which shape assets downstream of it, and
``dedup/<recipe>`` leaves out ``steps``, which reach it only through the pool's data (whose
data version stales it when the pool's output changes). Exclusion, not inclusion: a field added to a
declaration stales every asset of that declaration until someone says where it belongs, so a
forgotten field can cost a rebuild but never skips one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from corpuslab.declarations import Experiment
from corpuslab.fileio import digest

# Bump a stage's revision when its library logic changes in a way that changes outputs.
STAGE_REVISION = {
    "corpus": 3,  # 3: census-checked conservation, quarantine entries with a scope
    "pool": 2,
    "dedup": 2,
    "quality_model": 2,
    "filtered": 2,
    "tokenizer": 3,
    "mixture": 3,
    "tokens": 3,
    "train": 2,
    "eval": 2,
    "doremi_reference": 2,
    "doremi_proxy": 3,
    "doremi_weights": 2,
}

# Fields that shape no output (documentation only).
NOT_SHAPING = {"sources": {"description"}}
# Per stage: the fields of its declaration that reach it only through an upstream asset.
EXCLUDED = {
    "corpus": NOT_SHAPING["sources"],
    "pool": {"dedup", "quality"},
    "dedup": {"steps", "write_dropped", "quality"},
    # the whole recipe: the sample is drawn from the pool its steps and dedup leave, and the
    # model's condition reacts to its declaration only (jobs/automation.py, FIXED)
    "quality_model": {"write_dropped"},
    "filtered": {"steps", "write_dropped", "dedup", "quality"},
    "tokenizer": {"doremi", "token_budget", "strategy", "weights", "temperature",
                  "entropy_normalization", "seq_len"},
    "mixture": {"doremi", "seq_len"},
    "tokens": {"doremi", "strategy", "weights", "temperature", "entropy_normalization",
               "token_budget"},
    "train": {"eval"},
    "eval": {"model", "train", "deepspeed", "deepspeed_overrides", "ranks", "init_from"},
}  # fmt: skip


def fingerprint(*parts: Any) -> str:
    """A short stable hash of declarations and values (pydantic models as their JSON)."""
    blob = json.dumps(
        [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _slice(decl: BaseModel, exclude: set[str]) -> dict[str, Any]:
    return decl.model_dump(mode="json", exclude=exclude)


def _version(stage: str, *parts: Any) -> str:
    return f"{stage}-r{STAGE_REVISION[stage]}-{fingerprint(*parts)}"


def code_version(exp: Experiment, stage: str, name: str) -> str:
    """The code version of ``stage``'s asset(s) for the declaration ``name``.

    ``name`` is a source for ``corpus``, a recipe for ``pool``/``dedup``/``quality_model``/
    ``filtered``, a mixture for ``tokenizer``/``mixture``/``tokens``/``doremi_*`` and a run for
    ``train``/``eval``.
    """
    if stage == "corpus":
        return _version(stage, _slice(exp.sources[name], EXCLUDED[stage]))
    if stage in ("pool", "dedup", "quality_model", "filtered"):
        return _version(stage, _slice(exp.recipes[name], EXCLUDED[stage]))
    if stage in ("tokenizer", "mixture", "tokens"):
        mdecl = exp.mixtures[name]
        parts: list[Any] = [_slice(mdecl, EXCLUDED[stage]), exp.tokenizer_owner(name)]
        if stage == "tokenizer":
            tfile = mdecl.tokenizer.resolve_file(exp.home)
            parts.append(digest(tfile) if tfile else None)
        return _version(stage, *parts)
    if stage.startswith("doremi_"):
        decl = exp.mixtures[name].doremi
        if decl is None:
            raise ValueError(f"mixture {name!r} does not declare doremi")
        exclude = {"eta", "smoothing", "initial_weights"} if stage == "doremi_reference" else set()
        if stage == "doremi_weights":
            return _version(stage, decl.reference)
        return _version(stage, _slice(decl, exclude), decl.deepspeed_path(exp.home).read_text())
    if stage == "train":
        rdecl = exp.runs[name]
        return _version(
            stage, _slice(rdecl, EXCLUDED[stage]), rdecl.deepspeed_path(exp.home).read_text()
        )
    if stage == "eval":
        return _version(stage, _slice(exp.runs[name], EXCLUDED[stage]))
    raise ValueError(f"unknown stage {stage!r}; allowed: {', '.join(STAGE_REVISION)}")
