"""Loading: every file of the experiments folder parsed, validated and cross-checked."""

from __future__ import annotations

import json
import logging
import os
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ValidationError,
)

from corpuslab.declarations.models import (
    DoReMiDecl,
    Experiment,
    MixtureDecl,
    RecipeDecl,
    RunDecl,
    SourceDecl,
    StudyDecl,
    SuiteDecl,
    TrainingDecl,
)
from corpuslab.declarations.paths import (
    DEEPSPEED_DIR,
    SECTIONS,
    DeclarationError,
    default_experiments_dir,
    expand_vars,
    resolve_path,
)
from corpuslab.declarations.yamlfile import read_yaml
from corpuslab.eval.metrics import parse_metric
from corpuslab.ingest.storage import is_url
from corpuslab.layout import Layout
from corpuslab.strict import Strict
from corpuslab.training.runspec import SCALES, ModelSpec

log = logging.getLogger(__name__)

_MODELS: dict[str, type[Strict]] = {
    "sources": SourceDecl,
    "recipes": RecipeDecl,
    "mixtures": MixtureDecl,
    "runs": RunDecl,
    "evals": SuiteDecl,
    "studies": StudyDecl,
}
_NAME_OK = __import__("re").compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _allowed_keys(model: Any, loc: tuple[Any, ...]) -> list[str] | None:
    """Walk a pydantic model class along an error location to list the keys allowed there."""
    for part in loc:
        origin = typing.get_origin(model)
        if origin in (dict,):
            model = typing.get_args(model)[1]
            continue
        if origin in (list,):
            model = typing.get_args(model)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            args = [
                a
                for a in typing.get_args(model)
                if isinstance(a, type) and issubclass(a, BaseModel)
            ]
            model = args[0] if args else None
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            if field is None:
                return sorted(model.model_fields)
            model = field.annotation
        else:
            return None
    if typing.get_origin(model) in (typing.Union, types.UnionType):
        args = [
            a for a in typing.get_args(model) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        model = args[0] if args else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return None


def _format_validation(file: Path, section: str, name: str, exc: ValidationError) -> str:
    lines = []
    model = _MODELS[section]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join([section, name, *map(str, loc)])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            msg = f"unknown key {loc[-1]!r}" + (
                f"; allowed: {', '.join(allowed)}" if allowed else ""
            )
        elif err["type"] == "literal_error":
            msg = f"{msg} (got {err.get('input')!r})"
        lines.append(f"{file}: {key}: {msg}")
    return "\n".join(lines)


def load_experiment(root: Path | None = None, home: Path | str | None = None) -> Experiment:
    """Load and cross-check every declaration under ``root`` (default: ``experiments/``).

    ``home`` is the base folder of relative paths (default: ``$CORPUSLAB_HOME``); an ``s3://``
    home's relative source paths are prefixes of it, its local root is its working copy.
    """
    root = (root or default_experiments_dir()).resolve()
    layout = Layout.for_location(home) if home is not None else Layout.from_env()
    home, remote = layout.home.absolute(), layout.remote
    if not root.is_dir():
        raise DeclarationError(f"{root}: experiments folder does not exist")
    files = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
    if not files:
        raise DeclarationError(f"{root}: no *.yaml declarations found")
    parsed: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    origin: dict[str, str] = {}
    for file in files:
        doc = read_yaml(file) or {}
        if not isinstance(doc, dict):
            raise DeclarationError(f"{file}: top level must be a mapping of {', '.join(SECTIONS)}")
        for section, entries in doc.items():
            if section not in SECTIONS:
                raise DeclarationError(
                    f"{file}: unknown top-level key {section!r}; allowed: {', '.join(SECTIONS)}"
                )
            if not isinstance(entries, dict):
                raise DeclarationError(f"{file}: {section}: must map names to declarations")
            for name, body in entries.items():
                if not isinstance(name, str) or not _NAME_OK.match(name):
                    raise DeclarationError(
                        f"{file}: {section}.{name}: names must match [A-Za-z][A-Za-z0-9_]*"
                    )
                if name in parsed[section]:
                    raise DeclarationError(
                        f"{file}: {section}.{name}: already declared in "
                        f"{origin[f'{section}.{name}']}"
                    )
                try:
                    parsed[section][name] = _MODELS[section].model_validate(body or {})
                except ValidationError as exc:
                    raise DeclarationError(_format_validation(file, section, name, exc)) from None
                origin[f"{section}.{name}"] = str(file)
    exp = Experiment(root=root, home=home, remote=remote, origin=origin, **parsed)
    _cross_check(exp)
    return exp


def _ref_error(exp: Experiment, section: str, name: str, key: str, value: str, pool: dict) -> None:
    allowed = ", ".join(sorted(pool)) or "(none declared)"
    raise DeclarationError(
        f"{exp.where(section, name)}: {section}.{name}.{key}: unknown {value!r}; allowed: {allowed}"
    )


def _relative_under_remote(exp: Experiment, value: str, where: str) -> None:
    """A declared file must be local: with an s3:// home, a relative path is not."""
    if exp.remote is None:
        return
    try:
        relative = not Path(expand_vars(value)).is_absolute()
    except ValueError as exc:
        raise DeclarationError(f"{where}: {exc}") from None
    if relative:
        raise DeclarationError(
            f"{where}: {value!r} is relative to the home, which is {exp.remote} (not a local "
            "folder); give this file as an absolute path or with a $VAR"
        )


def _check_paths(exp: Experiment) -> None:
    """Every declared path under the path policy; local source folders looked at."""
    for name, src in exp.sources.items():
        where = f"{exp.where('sources', name)}: sources.{name}.path"
        if is_url(src.path):
            continue
        try:
            folder = resolve_path(src.path, exp.home)
        except ValueError as exc:
            raise DeclarationError(f"{where}: {exc}") from None
        if exp.remote is not None and not Path(expand_vars(src.path)).is_absolute():
            continue  # a prefix of the s3:// home: listed by the shard sensor, not here
        if not folder.exists():
            if folder.is_symlink():
                raise DeclarationError(f"{where}: {folder} is a broken symbolic link")
            # the demo and ingestion create raw folders after the declarations load: the
            # corpus asset and the shard sensor report a folder that is still missing
            log.warning("%s: %s does not exist yet", where, folder)
        elif not folder.is_dir():
            raise DeclarationError(f"{where}: {folder} is a file, not a folder of shards")
        elif not os.access(folder, os.R_OK | os.X_OK):
            raise DeclarationError(f"{where}: {folder} is not readable")
    for name, run in exp.runs.items():
        if run.deepspeed.endswith(".json") or "/" in run.deepspeed:
            _relative_under_remote(
                exp, run.deepspeed, f"{exp.where('runs', name)}: runs.{name}.deepspeed"
            )
    for name, mix in exp.mixtures.items():
        where = exp.where("mixtures", name)
        if mix.doremi is not None and (
            mix.doremi.deepspeed.endswith(".json") or "/" in mix.doremi.deepspeed
        ):
            _relative_under_remote(
                exp, mix.doremi.deepspeed, f"{where}: mixtures.{name}.doremi.deepspeed"
            )
        if mix.tokenizer.file:
            _relative_under_remote(
                exp, mix.tokenizer.file, f"{where}: mixtures.{name}.tokenizer.file"
            )
            try:
                mix.tokenizer.resolve_file(exp.home)
            except ValueError as exc:
                where = exp.where("mixtures", name)
                raise DeclarationError(f"{where}: mixtures.{name}.tokenizer.file: {exc}") from None


def _model_dims(spec: ModelSpec) -> tuple[int, int, int, bool]:
    """(n_layer, n_head, d_model, bias) of a declared model."""
    if spec.scale is not None:
        s = SCALES[spec.scale]
        return s.n_layer, s.n_head, s.d_model, spec.bias
    assert spec.n_layer and spec.n_head and spec.d_model  # checked by ModelSpec
    return spec.n_layer, spec.n_head, spec.d_model, spec.bias


def _check_inheritance(exp: Experiment) -> None:
    """``init_from``: no cycles, a parent as wide as the child, enough layers to copy."""
    for name, run in exp.runs.items():
        if run.init_from is None:
            continue
        where = f"{exp.where('runs', name)}: runs.{name}.init_from"
        chain = [name]
        current: str | None = run.init_from.run
        while current is not None:
            if current in chain:
                cycle = " -> ".join([*chain[chain.index(current) :], current])
                raise DeclarationError(
                    f"{where}.run: runs inherit from each other in a cycle ({cycle}); a run "
                    "can only start from one that trains before it"
                )
            chain.append(current)
            parent_init = exp.runs[current].init_from
            current = parent_init.run if parent_init is not None else None
        parent = run.init_from.run
        p_layers, *p_shape = _model_dims(exp.runs[parent].model)
        c_layers, *c_shape = _model_dims(run.model)
        if p_shape != c_shape:
            raise DeclarationError(
                f"{where}.run: {parent!r} has (n_head, d_model, bias) {tuple(p_shape)}, "
                f"{name!r} has {tuple(c_shape)}; inherited blocks need the same width"
            )
        layers = run.init_from.layers
        if layers > min(p_layers, c_layers):
            raise DeclarationError(
                f"{where}.layers: {layers} exceeds the layers available: {parent!r} has "
                f"n_layer {p_layers}, {name!r} has n_layer {c_layers}"
            )


def _cross_check(exp: Experiment) -> None:
    """Dangling references and missing files fail here, naming file, key and allowed values."""
    _check_paths(exp)
    for name, recipe in exp.recipes.items():
        for i, src in enumerate(recipe.sources):
            if src not in exp.sources:
                _ref_error(exp, "recipes", name, f"sources[{i}]", src, exp.sources)
        if recipe.quality is not None and recipe.quality.positive_source not in exp.sources:
            _ref_error(
                exp,
                "recipes",
                name,
                "quality.positive_source",
                recipe.quality.positive_source,
                exp.sources,
            )
    for name, mix in exp.mixtures.items():
        if mix.recipe not in exp.recipes:
            _ref_error(exp, "mixtures", name, "recipe", mix.recipe, exp.recipes)
        domains = exp.recipes[mix.recipe].sources
        for domain in mix.weights or {}:
            if domain not in domains:
                _ref_error(
                    exp, "mixtures", name, f"weights.{domain}", domain, dict.fromkeys(domains)
                )
        _check_tokenizer(exp, name, mix)
        if mix.doremi is not None:
            _check_doremi(exp, name, mix.doremi)
    for name, run in exp.runs.items():
        if run.mixture not in exp.mixtures:
            _ref_error(exp, "runs", name, "mixture", run.mixture, exp.mixtures)
        _check_deepspeed(exp.where("runs", name), f"runs.{name}.deepspeed", run, exp.home)
        if run.init_from is not None:
            parent = run.init_from.run
            if parent not in exp.runs or parent == name:
                _ref_error(
                    exp,
                    "runs",
                    name,
                    "init_from.run",
                    parent,
                    {r: None for r in exp.runs if r != name},
                )
            if exp.runs[parent].mixture != run.mixture:
                raise DeclarationError(
                    f"{exp.where('runs', name)}: runs.{name}.init_from.run: {parent!r} trained on "
                    f"mixture {exp.runs[parent].mixture!r}, whose tokenizer differs from "
                    f"{run.mixture!r}'s; inherited embeddings need the same mixture"
                )
            if exp.runs[parent].seeds is not None:
                raise DeclarationError(
                    f"{exp.where('runs', name)}: runs.{name}.init_from.run: {parent!r} declares "
                    "seeds; a run inherits from a single run (declare the parent without seeds)"
                )
        _check_run_evals(exp, name, run)
    _check_inheritance(exp)
    for name, suite in exp.evals.items():
        _check_suite(exp, name, suite)
    _check_reserved_sources(exp)
    for name, study in exp.studies.items():
        _check_study(exp, name, study)


def _check_deepspeed(where: str, key: str, decl: TrainingDecl, home: Path) -> None:
    """The DeepSpeed file exists and is a JSON object; the overrides name keys DeepSpeed knows."""
    from corpuslab.training.deepspeed import unknown_override_keys

    try:
        ds = decl.deepspeed_path(home)
    except ValueError as exc:
        raise DeclarationError(f"{where}: {key}: {exc}") from None
    if not ds.is_file():
        known = sorted(p.stem for p in DEEPSPEED_DIR.glob("*.json"))
        raise DeclarationError(
            f"{where}: {key}: config file {ds} not found; "
            f"allowed: {', '.join(known)} or a path to a .json file"
        )
    try:
        base = json.loads(ds.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DeclarationError(f"{where}: {key}: {ds} is not valid JSON: {exc}") from None
    if not isinstance(base, dict):
        raise DeclarationError(f"{where}: {key}: {ds} must hold a JSON object")
    unknown = unknown_override_keys(base, decl.deepspeed_overrides)
    if unknown:
        overrides_key = key.rsplit(".", 1)[0] + ".deepspeed_overrides"
        raise DeclarationError(
            f"{where}: {overrides_key}: unknown DeepSpeed key(s) {'; '.join(unknown)} "
            f"(checked against {ds.name}'s keys and DeepSpeed's documented keys)"
        )


def _same_split(a: MixtureDecl, b: MixtureDecl) -> list[str]:
    """Fields that must agree for two mixtures to share data (recipe and held-out split)."""
    return [k for k in ("recipe", "heldout_fraction", "seed") if getattr(a, k) != getattr(b, k)]


def _check_tokenizer(exp: Experiment, name: str, mix: MixtureDecl) -> None:
    where = exp.where("mixtures", name)
    tdecl = mix.tokenizer
    if tdecl.file:
        path = tdecl.resolve_file(exp.home)
        if path is None or not path.is_file():
            raise DeclarationError(
                f"{where}: mixtures.{name}.tokenizer.file: {path} is not a file "
                "(relative paths are under $CORPUSLAB_HOME)"
            )
    if tdecl.mixture:
        other = tdecl.mixture
        owners = {m: None for m, d in exp.mixtures.items() if m != name and not d.tokenizer.mixture}
        if other not in owners:
            _ref_error(exp, "mixtures", name, "tokenizer.mixture", other, owners)
        diffs = _same_split(mix, exp.mixtures[other])
        if diffs:
            raise DeclarationError(
                f"{where}: mixtures.{name}.tokenizer.mixture: {other!r} differs in "
                f"{', '.join(diffs)}; a shared tokenizer needs the same recipe and held-out split"
            )


def _check_doremi(exp: Experiment, name: str, decl: DoReMiDecl) -> None:
    where = exp.where("mixtures", name)
    refs = {m: None for m, d in exp.mixtures.items() if m != name and d.strategy != "doremi"}
    if decl.reference not in refs:
        _ref_error(exp, "mixtures", name, "doremi.reference", decl.reference, refs)
    ref = exp.mixtures[decl.reference]
    diffs = _same_split(exp.mixtures[name], ref)
    if diffs:
        raise DeclarationError(
            f"{where}: mixtures.{name}.doremi.reference: {decl.reference!r} differs in "
            f"{', '.join(diffs)}; DoReMi's weights are over the same domains and held-out split"
        )
    _check_deepspeed(where, f"mixtures.{name}.doremi.deepspeed", decl, exp.home)


def _check_run_evals(exp: Experiment, name: str, run: RunDecl) -> None:
    where = exp.where("runs", name)
    for i, suite in enumerate(run.evals):
        if suite not in exp.evals:
            _ref_error(exp, "runs", name, f"evals[{i}]", suite, exp.evals)
    every, tc = run.eval.eval_every, run.train
    if every:
        if not tc.checkpoint_every or every % tc.checkpoint_every:
            raise DeclarationError(
                f"{where}: runs.{name}.eval.eval_every: {every} must be a multiple of "
                f"train.checkpoint_every ({tc.checkpoint_every}): only checkpoints can be scored"
            )
        if tc.keep_checkpoints:
            raise DeclarationError(
                f"{where}: runs.{name}.eval.eval_every: train.keep_checkpoints="
                f"{tc.keep_checkpoints} deletes the checkpoints it would score; set it to 0"
            )
        if not run.evals:
            raise DeclarationError(
                f"{where}: runs.{name}.eval.eval_every: the run declares no evals to score"
            )


def _check_suite(exp: Experiment, name: str, suite: SuiteDecl) -> None:
    where = exp.where("evals", name)
    if suite.heldout is not None:
        for i, src in enumerate(suite.heldout.sources):
            if src not in exp.sources:
                _ref_error(exp, "evals", name, f"heldout.sources[{i}]", src, exp.sources)
        for src in suite.heldout.fraction_of:
            if src not in exp.sources:
                _ref_error(exp, "evals", name, f"heldout.fraction_of.{src}", src, exp.sources)
    held = suite.heldout_sources()
    for i, task in enumerate(suite.tasks):
        key = f"evals.{name}.tasks[{i}]"
        if task.source is not None and task.source not in held:
            raise DeclarationError(
                f"{where}: {key}.source: {task.source!r} is not held out by suite {name!r}; "
                f"allowed: {', '.join(held) or '(none: declare heldout.sources or fraction_of)'}"
            )
        try:
            path = task.resolve_file(exp.home)
        except ValueError as exc:
            raise DeclarationError(f"{where}: {key}.dataset_uri: {exc}") from None
        if path is not None and not path.is_file():
            raise DeclarationError(
                f"{where}: {key}.dataset_uri: {path} is not a file (relative paths are under "
                "$CORPUSLAB_HOME)"
            )


def _check_reserved_sources(exp: Experiment) -> None:
    """A source held out whole by a suite may feed no recipe and no quality classifier."""
    for rname, recipe in exp.recipes.items():
        used = [(f"sources[{i}]", s) for i, s in enumerate(recipe.sources)]
        if recipe.quality is not None:
            used.append(("quality.positive_source", recipe.quality.positive_source))
        for key, src in used:
            whole = [s for s, f in exp.reservation(src).items() if f >= 1.0]
            if whole:
                raise DeclarationError(
                    f"{exp.where('recipes', rname)}: recipes.{rname}.{key}: source {src!r} is "
                    f"held out for evaluation by evals.{whole[0]}.heldout.sources; no recipe may "
                    "train on it (hold out a slice with heldout.fraction_of instead)"
                )


def _check_study(exp: Experiment, name: str, study: StudyDecl) -> None:
    where = exp.where("studies", name)
    for i, run in enumerate(study.runs):
        if run not in exp.runs:
            _ref_error(exp, "studies", name, f"runs[{i}]", run, exp.runs)
    if len(set(study.runs)) != len(study.runs):
        raise DeclarationError(f"{where}: studies.{name}.runs: a run is listed twice")
    if study.baseline not in study.runs:
        _ref_error(exp, "studies", name, "baseline", study.baseline, dict.fromkeys(study.runs))
    suite = study.suite
    if suite not in exp.evals:
        raise DeclarationError(
            f"{where}: studies.{name}.metric: {study.metric!r} names no declared suite; "
            f"allowed suites: {', '.join(sorted(exp.evals)) or '(none declared)'}"
        )
    decl = exp.evals[suite]
    try:
        parse_metric(study.metric, decl.task_names(), decl.heldout_sources())
    except ValueError as exc:
        raise DeclarationError(f"{where}: studies.{name}.metric: {exc}") from None
    for run in study.runs:
        if suite not in exp.runs[run].evals:
            raise DeclarationError(
                f"{where}: studies.{name}.runs: run {run!r} is not evaluated on suite {suite!r} "
                f"(add it to runs.{run}.evals)"
            )
