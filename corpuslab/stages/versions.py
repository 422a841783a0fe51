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
    "eval": 3,
    "evalset": 1,
    "compare": 1,
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
    "train": {"eval", "evals", "seeds"},
    "eval": {"model", "train", "deepspeed", "deepspeed_overrides", "ranks", "init_from", "seeds"},
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


def _reservations(exp: Experiment, sources: list[str]) -> dict[str, dict[str, float]]:
    """Source -> suite -> held-out share, for the sources that evaluation suites hold out."""
    return {s: r for s in sources if (r := exp.reservation(s))}


def code_version(exp: Experiment, stage: str, name: str, seed: int | None = None) -> str:
    """The code version of ``stage``'s asset(s) for the declaration ``name``.

    ``name`` is a source for ``corpus``, a recipe for ``pool``/``dedup``/``quality_model``/
    ``filtered``, a mixture for ``tokenizer``/``mixture``/``tokens``/``doremi_*``, a run for
    ``train``/``eval`` (``seed``: one replicate of a run declared with ``seeds``), a suite for
    ``evalset`` and a study for ``compare``. The held-out slices evaluation suites take from a
    recipe's sources shape its pools (and the quality model's positives); a recipe no suite
    takes from keeps the version it had before suites existed.
    """
    if stage == "corpus":
        return _version(stage, _slice(exp.sources[name], EXCLUDED[stage]))
    if stage in ("pool", "dedup", "quality_model", "filtered"):
        recipe = exp.recipes[name]
        parts: list[Any] = [_slice(recipe, EXCLUDED[stage])]
        sources = list(recipe.sources)
        if stage == "quality_model" and recipe.quality is not None:
            sources.append(recipe.quality.positive_source)
        held = _reservations(exp, sources) if stage in ("pool", "quality_model") else {}
        if held:
            parts.append(held)
        return _version(stage, *parts)
    if stage in ("tokenizer", "mixture", "tokens"):
        mdecl = exp.mixtures[name]
        parts = [_slice(mdecl, EXCLUDED[stage]), exp.tokenizer_owner(name)]
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
        parts = [_slice(rdecl, EXCLUDED[stage]), rdecl.deepspeed_path(exp.home).read_text()]
        return _version(stage, *parts, *([] if seed is None else [{"seed": seed}]))
    if stage == "eval":
        parts = [_slice(exp.runs[name], EXCLUDED[stage])]
        return _version(stage, *parts, *([] if seed is None else [{"seed": seed}]))
    if stage == "evalset":
        from corpuslab.eval.suite import SUITE_VERSION

        decl = exp.evals[name]
        files = [t.resolve_file(exp.home) for t in decl.tasks]
        return _version(stage, decl, SUITE_VERSION, [digest(f) if f else None for f in files])
    if stage == "compare":
        study = exp.studies[name]
        return _version(stage, study, {r: exp.runs[r].replicates() for r in study.runs})
    raise ValueError(f"unknown stage {stage!r}; allowed: {', '.join(STAGE_REVISION)}")
