"""Code versions hash whole declarations: editing any field of a recipe, mixture or run changes
the code version of that declaration's assets, and of no other declaration's."""

from __future__ import annotations

import copy
import textwrap
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel

from corpuslab.declarations import Experiment, MixtureDecl, RecipeDecl, RunDecl, load_experiment
from corpuslab.stages.training import replicate_name
from corpuslab.stages.versions import code_version
from tests.conftest import TINY_EXPERIMENT, write_experiment


def versions(exp: Experiment) -> dict[str, str]:
    """Every asset's code version, keyed as the asset modules key them."""
    out: dict[str, str] = {}
    for source in exp.sources:
        out[f"corpus/{source}"] = code_version(exp, "corpus", source)
    for recipe, decl in exp.recipes.items():
        for source in decl.sources:
            for stage in ("pool", "dedup", "filtered"):
                out[f"{stage}/{recipe}/{source}"] = code_version(exp, stage, recipe)
        out[f"quality_model/{recipe}"] = code_version(exp, "quality_model", recipe)
    for mixture, decl in exp.mixtures.items():
        if exp.tokenizer_owner(mixture) == mixture:
            out[f"tokenizer/{mixture}"] = code_version(exp, "tokenizer", mixture)
        for stage in ("mixture", "tokens"):
            out[f"{stage}/{mixture}"] = code_version(exp, stage, mixture)
        if decl.doremi is not None:
            for role in ("reference", "proxy", "weights"):
                out[f"doremi/{mixture}/{role}"] = code_version(exp, f"doremi_{role}", mixture)
    for run, rdecl in exp.runs.items():
        for seed in rdecl.replicates():
            out[f"train/{replicate_name(run, seed)}"] = code_version(exp, "train", run, seed)
            out[f"eval/{replicate_name(run, seed)}"] = code_version(exp, "eval", run, seed)
    for suite in exp.evals:
        out[f"evalset/{suite}"] = code_version(exp, "evalset", suite)
    for study in exp.studies:
        out[f"compare/{study}"] = code_version(exp, "compare", study)
    return out


def test_the_enumeration_matches_the_definitions() -> None:
    """The assets above are the definitions' own, with the same code versions."""
    import definitions

    graph = definitions.defs.resolve_asset_graph()
    declared = {
        k.to_user_string(): graph.get(k).code_version
        for k in graph.materializable_asset_keys
        if k.path[0] != "stats"
    }
    assert declared == versions(load_experiment())


def _owned(exp: Experiment, section: str, name: str) -> set[str]:
    """Keys of the assets a declaration shapes (its own, and for a mixture its DoReMi runs')."""
    keys = set(versions(exp))
    if section == "recipes":
        return {k for k in keys if k.split("/")[1] == name and k.split("/")[0] in
                {"pool", "dedup", "filtered", "quality_model"}}  # fmt: skip
    if section == "mixtures":
        return {k for k in keys if k.split("/")[1] == name and k.split("/")[0] in
                {"tokenizer", "mixture", "tokens", "doremi"}}  # fmt: skip
    return {k for k in keys if k.split("/")[0] in {"train", "eval"} and k.split("/")[1] == name}


def _leaves(model: type[BaseModel], value: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, current value) of every leaf field of a declaration, defaults included."""
    out = []
    for field, info in model.model_fields.items():
        current = getattr(value, field)
        ann = info.annotation
        sub = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        target = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        target = target or (sub[0] if sub and current is not None else None)
        if target is not None and current is not None:
            out += _leaves(target, current, (*path, field))
        else:
            out.append(((*path, field), current))
    return out


def _merge(doc: dict, edit: dict) -> dict:
    """``doc`` with ``edit`` merged in, dicts recursively (None removes a key)."""
    out = dict(doc)
    for key, value in edit.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


TRAIN_EDITS: list[tuple[set[str], dict]] = [
    ({"steps"}, {"steps": 7}),
    ({"tokens", "steps"}, {"steps": None, "tokens": 4096}),
    ({"token_multiplier", "steps"}, {"steps": None, "token_multiplier": 0.01}),
    ({"micro_batch_size"}, {"micro_batch_size": 2}),
    ({"grad_accum_steps"}, {"grad_accum_steps": 2}),
    ({"global_batch_tokens"}, {"global_batch_tokens": 256}),
    ({"lr"}, {"lr": 2e-3}),
    ({"min_lr"}, {"min_lr": 2e-4}),
    ({"warmup_steps"}, {"warmup_steps": 1}),
    ({"schedule"}, {"schedule": "wsd"}),
    ({"decay_fraction"}, {"decay_fraction": 0.3}),
    ({"decay_shape"}, {"decay_shape": "linear"}),
    ({"weight_decay"}, {"weight_decay": 0.05}),
    ({"betas"}, {"betas": [0.9, 0.99]}),
    ({"eps"}, {"eps": 1e-7}),
    ({"z_loss"}, {"z_loss": 0.0}),
    ({"grad_clip"}, {"grad_clip": 0.5}),
    ({"adagc"}, {"adagc": {"beta": 0.9}}),
    ({"seed"}, {"seed": 7}),
    ({"checkpoint_every"}, {"checkpoint_every": 2}),
    ({"keep_checkpoints"}, {"keep_checkpoints": 5}),
    ({"lawa_k"}, {"lawa_k": 1}),
    ({"heldout_sequences"}, {"heldout_sequences": 4}),
    ({"spike_factor"}, {"spike_factor": 3.0}),
    ({"spike_window"}, {"spike_window": 10}),
    ({"log_every"}, {"log_every": 1}),
    ({"threads"}, {"threads": 1}),
    ({"peak_flops"}, {"peak_flops": 1e12}),
]
MODEL_EDITS: list[tuple[set[str], dict]] = [
    ({"scale", "n_layer", "n_head", "d_model"}, {"scale": "cpu-1m", "n_layer": None,
                                                 "n_head": None, "d_model": None}),
    ({"n_layer"}, {"n_layer": 2}),
    ({"n_head"}, {"n_head": 4}),
    ({"d_model"}, {"d_model": 64}),
    ({"dropout"}, {"dropout": 0.1}),
    ({"bias"}, {"bias": True}),
]  # fmt: skip


def _nested(prefix: str, edits: list[tuple[set[str], dict]]) -> list[tuple[set[str], dict]]:
    return [({f"{prefix}.{f}" for f in fields}, {prefix: e}) for fields, e in edits]


def _training(prefix: str = "") -> list[tuple[set[str], dict]]:
    """Edits of a training declaration (a run, or a DoReMi block when ``prefix``)."""
    edits = [
        *_nested("train", TRAIN_EDITS),
        *_nested("model", MODEL_EDITS),
        ({"deepspeed"}, {"deepspeed": "zero1"}),
        ({"deepspeed_overrides"}, {"deepspeed_overrides": {"steps_per_print": 5}}),
        ({"ranks"}, {"ranks": 2}),
    ]
    return _nested(prefix, edits) if prefix else edits


# Per declaration, the edits that together touch every leaf field: (fields covered, YAML edit).
EDITS: dict[str, list[tuple[set[str], dict]]] = {
    "recipes": [
        ({"sources"}, {"sources": ["docstrings"]}),
        ({"steps"}, {"steps": [{"gopher_quality": {"min_words": 25}}, {"exact_dedup": {}}]}),
        ({"write_dropped"}, {"write_dropped": True}),
        ({"dedup.ngram"}, {"dedup": {"ngram": 4}}),
        ({"dedup.num_perm"}, {"dedup": {"num_perm": 128}}),
        ({"dedup.threshold"}, {"dedup": {"threshold": 0.7}}),
        ({"dedup.bands", "dedup.rows"}, {"dedup": {"bands": 16, "rows": 4}}),
        ({"dedup.seed"}, {"dedup": {"seed": 2}}),
        ({"dedup.verify"}, {"dedup": {"verify": False}}),
        ({"dedup.scheme"}, {"dedup": {"scheme": "legacy"}}),
        ({"quality.positive_source"}, {"quality": {"positive_source": "packages"}}),
        ({"quality.negative_sample"}, {"quality": {"negative_sample": 50}}),
        ({"quality.positive_sample"}, {"quality": {"positive_sample": 30}}),
        ({"quality.keep_fraction"}, {"quality": {"keep_fraction": 0.8}}),
        ({"quality.min_score", "quality.keep_fraction"},
         {"quality": {"keep_fraction": None, "min_score": 0.5}}),
        ({"quality.epoch"}, {"quality": {"epoch": 6}}),
        ({"quality.lr"}, {"quality": {"lr": 0.2}}),
        ({"quality.dim"}, {"quality": {"dim": 32}}),
        ({"quality.word_ngrams"}, {"quality": {"word_ngrams": 1}}),
        ({"quality.bucket"}, {"quality": {"bucket": 50000}}),
        ({"quality.heldout_fraction"}, {"quality": {"heldout_fraction": 0.25}}),
        ({"quality.seed"}, {"quality": {"seed": 3}}),
    ],
    "mixtures": [
        ({"recipe", "doremi.reference"}, {"recipe": "strict", "doremi": {"reference": "other"},
                                          "tokenizer": {"mixture": "other"}}),
        ({"strategy", "weights", "doremi.reference"},
         {"strategy": "manual", "weights": {"code": 1.0, "docstrings": 2.0}, "doremi": None}),
        ({"temperature", "strategy"}, {"strategy": "temperature", "temperature": 2.0,
                                       "doremi": None}),
        ({"entropy_normalization", "strategy"},
         {"strategy": "entropy", "entropy_normalization": "softmax", "doremi": None}),
        ({"doremi.eta"}, {"doremi": {"eta": 0.5}}),
        ({"doremi.smoothing"}, {"doremi": {"smoothing": 0.01}}),
        ({"doremi.initial_weights"}, {"doremi": {"initial_weights": "reference"}}),
        *_training("doremi"),
        ({"token_budget"}, {"token_budget": 10000}),
        ({"seq_len"}, {"seq_len": 16}),
        ({"heldout_fraction"}, {"heldout_fraction": 0.2, "tokenizer": {"mixture": None},
                                "doremi": {"reference": "held"}}),
        ({"seed"}, {"seed": 1, "tokenizer": {"mixture": None}, "doremi": {"reference": "seeded"}}),
        ({"tokenizer.mixture", "tokenizer.vocab_size"},
         {"tokenizer": {"mixture": None, "vocab_size": 300}}),
        ({"tokenizer.min_frequency"}, {"tokenizer": {"mixture": None, "min_frequency": 3}}),
        ({"tokenizer.train_bytes"}, {"tokenizer": {"mixture": None, "train_bytes": 100000}}),
        ({"tokenizer.file", "tokenizer.eos_token"}, {"tokenizer": {"eos_token": "<|end|>"}}),
    ],
    "runs": [
        # a run that scores checkpoints (eval_every) may not delete them (keep_checkpoints)
        *[(f, {**e, "eval": {"eval_every": None}} if "train.keep_checkpoints" in f else e)
          for f, e in _training()],
        ({"mixture", "init_from"}, {"mixture": "entropic"}),
        ({"init_from"}, {"init_from": {"run": "other", "layers": 1}}),
        ({"eval.max_docs_per_domain"}, {"eval": {"max_docs_per_domain": 4}}),
        ({"eval.batch_size"}, {"eval": {"batch_size": 8}}),
        ({"eval.eval_every"}, {"eval": {"eval_every": 8}}),
        ({"evals"}, {"evals": [], "eval": {"eval_every": None}}),
        ({"seeds"}, {"seeds": [3, 4]}),
    ],
}  # fmt: skip
# Declarations the edits above may point at: a mixture with the same split, a parent run.
EXTRA = {
    "mixtures": {"other": {"recipe": "strict", "token_budget": 20000, "seq_len": 32,
                           "heldout_fraction": 0.1, "tokenizer": {"vocab_size": 512}},
                 "held": {"recipe": "lenient", "token_budget": 20000, "seq_len": 32,
                          "heldout_fraction": 0.2, "tokenizer": {"vocab_size": 512}},
                 "seeded": {"recipe": "lenient", "token_budget": 20000, "seq_len": 32,
                            "heldout_fraction": 0.1, "seed": 1, "tokenizer": {"vocab_size": 512}}},
    "runs": {"other": {"mixture": "small", "model": {"n_layer": 1, "n_head": 2, "d_model": 32},
                       "train": {"steps": 2}}},
}  # fmt: skip


TARGET = {"recipes": "lenient", "mixtures": "dro", "runs": "smoke"}
MODEL: dict[str, type[BaseModel]] = {"recipes": RecipeDecl, "mixtures": MixtureDecl,
                                     "runs": RunDecl}  # fmt: skip
Section = Literal["recipes", "mixtures", "runs"]


def _write(folder: Path, docs: dict[str, dict]) -> Experiment:
    write_experiment(folder)
    for section, doc in docs.items():
        (folder / f"{section}.yaml").write_text(yaml.safe_dump({section: doc}, sort_keys=False))
    return load_experiment(folder)


@pytest.fixture(scope="module")
def base_docs() -> dict[str, dict]:
    docs = {}
    for section in TARGET:
        doc = yaml.safe_load(textwrap.dedent(TINY_EXPERIMENT[f"{section}.yaml"]))[section]
        docs[section] = {**doc, **EXTRA.get(section, {})}
    del docs["runs"]["child"]  # it inherits smoke's width, which edits of smoke's model change
    return docs


@pytest.mark.parametrize("section", list(TARGET))
def test_every_field_moves_its_own_assets_and_no_others(
    section: Section, base_docs: dict[str, dict], tmp_path: Path
) -> None:
    """Each edit moves the edited declaration's code versions and nothing else; the edits
    together touch every leaf field of the declaration, so no field is left out of the hash."""
    name = TARGET[section]
    base = _write(tmp_path / "base", base_docs)
    before = versions(base)
    covered: set[str] = set()
    for i, (fields, edit) in enumerate(EDITS[section]):
        docs = copy.deepcopy(base_docs)
        docs[section][name] = _merge(docs[section][name], edit)
        edited = _write(tmp_path / f"edit{i}", docs)
        after = versions(edited)
        moved = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        owned = _owned(base, section, name) | _owned(edited, section, name)
        assert moved, f"{section}.{name}: editing {sorted(fields)} moved no code version"
        assert moved <= owned, f"{sorted(fields)} moved {sorted(moved - owned)} too"
        covered |= fields
    target = getattr(base, section)[name]
    leaves = {".".join(path) for path, _ in _leaves(MODEL[section], target)}
    assert leaves - covered == set(), f"{section}: fields no edit touches"
    assert covered - leaves == set(), f"{section}: edits of fields that do not exist"
