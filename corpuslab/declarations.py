"""Experiment declarations: YAML under ``experiments/`` parsed into typed, cross-checked models.

Every ``*.yaml`` file in the folder may declare any of ``sources``, ``recipes``, ``mixtures`` and
``runs``; names are global across files. A bad declaration fails at load time with the file,
the key path and the allowed values, before Dagster ever builds an asset.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from corpuslab.dedup import DedupParams
from corpuslab.filters import STEPS, StepError, parse_step
from corpuslab.ingest.storage import is_url
from corpuslab.layout import Layout
from corpuslab.lmdata.tokenize import EOS
from corpuslab.quality import QualityParams
from corpuslab.strict import Strict
from corpuslab.training.runspec import GroupDROParams, Inherit, ModelSpec, TrainConfig

EXPERIMENTS_ENV = "CORPUSLAB_EXPERIMENTS"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEEPSPEED_DIR = REPO_ROOT / "infra" / "deepspeed"
SECTIONS = ("sources", "recipes", "mixtures", "runs")


class DeclarationError(ValueError):
    """A declaration that cannot be used; the message names the file and the key."""


class SourceDecl(Strict):
    """A raw corpus: a folder or ``s3://`` prefix of shards (relative paths: under the home).

    ``format``: ``auto`` (JSONL, Parquet, WARC by suffix), ``jsonl``, ``parquet``, ``warc``
    (HTML responses, main text extracted) or ``text`` (a shard per folder, a document per file).
    ``storage`` holds per-source S3 settings (``endpoint_url``, ``region``, ``anonymous``);
    credentials come from the environment or the storage resource, never from YAML.
    """

    path: str
    format: Literal["auto", "jsonl", "parquet", "warc", "text"] = "auto"
    description: str = ""
    storage: dict[str, str | bool | int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _no_secrets(self) -> SourceDecl:
        allowed = {"endpoint_url", "region", "anonymous", "max_attempts"}
        unknown = sorted(set(self.storage) - allowed)
        if unknown:
            raise ValueError(
                f"storage: unknown key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed))} "
                "(credentials come from the environment or the storage resource)"
            )
        return self

    def resolve(self, layout: Layout) -> str:
        """The source's location: an ``s3://`` URL as declared, else an absolute local path."""
        if is_url(self.path):
            return self.path
        p = Path(os.path.expandvars(os.path.expanduser(self.path)))
        return str(p if p.is_absolute() else layout.home / p)


class RecipeDecl(Strict):
    """How a pool is made: which sources, which per-document steps, dedup and quality filter."""

    sources: list[str] = Field(min_length=1)
    steps: list[dict[str, dict[str, Any] | None] | str] = Field(default_factory=list)
    write_dropped: bool = False
    dedup: DedupParams = DedupParams()
    quality: QualityParams | None = None

    @model_validator(mode="after")
    def _steps_exist(self) -> RecipeDecl:
        for i, step in enumerate(self.steps):
            try:
                parse_step(step)
            except StepError as exc:
                raise ValueError(f"steps[{i}]: {exc}") from None
            except ValidationError as exc:
                name = step if isinstance(step, str) else next(iter(step))
                allowed = ", ".join(STEPS[name].Params.model_fields)
                details = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or name}: {e['msg']}" for e in exc.errors()
                )
                raise ValueError(
                    f"steps[{i}] ({name}): {details} (allowed parameters: {allowed})"
                ) from None
        return self


class TokenizerDecl(Strict):
    """The mixture's tokenizer: a byte-level BPE trained on its text, a file, or another's.

    ``file`` points to a Hugging Face ``tokenizer.json`` (relative paths: under the experiments
    folder) used as is; ``mixture`` shares another mixture's tokenizer asset (same recipe and
    held-out split, so the tokenizer never saw either mixture's held-out documents). Otherwise
    a BPE with ``vocab_size`` is trained on up to ``train_bytes`` of the training documents.
    ``eos_token`` separates documents in the training stream and must be in the vocabulary.
    """

    vocab_size: int = Field(4096, ge=260, le=2**32 - 1)
    min_frequency: int = Field(2, ge=1)
    train_bytes: int = Field(20_000_000, ge=1000)
    file: str | None = None
    mixture: str | None = None
    eos_token: str = EOS

    @model_validator(mode="after")
    def _one_source(self) -> TokenizerDecl:
        if self.file and self.mixture:
            raise ValueError("give either 'file' or 'mixture', not both")
        training = {"vocab_size", "min_frequency", "train_bytes"} & self.model_fields_set
        if (self.file or self.mixture) and training:
            what = "file" if self.file else "mixture"
            raise ValueError(
                f"{', '.join(sorted(training))} only apply to a trained tokenizer, not one "
                f"taken from '{what}'"
            )
        return self

    def resolve_file(self, root: Path) -> Path | None:
        """The declared tokenizer file as an absolute path (None: not a file tokenizer)."""
        if not self.file:
            return None
        p = Path(os.path.expandvars(os.path.expanduser(self.file)))
        return p if p.is_absolute() else (root / p).resolve()


class TrainingDecl(Strict):
    """What any training declares: a model, a DeepSpeed config, ranks and optimization.

    ``deepspeed`` names ``infra/deepspeed/<name>.json`` or a path, and ``deepspeed_overrides``
    is deep-merged into it; ``train`` is :class:`corpuslab.training.runspec.TrainConfig`.
    """

    model: ModelSpec = ModelSpec(n_layer=2, n_head=4, d_model=128)
    deepspeed: str = "zero2"
    deepspeed_overrides: dict[str, Any] = Field(default_factory=dict)
    ranks: int = Field(1, ge=1)
    train: TrainConfig = TrainConfig(steps=100)

    def deepspeed_path(self) -> Path:
        return _deepspeed_path(self.deepspeed)


class DoReMiDecl(TrainingDecl, GroupDROParams):
    """DoReMi (Xie et al. 2023): domain weights from a reference and a Group-DRO proxy model.

    Both models have the same size and train on the tokens of ``reference`` (a mixture over the
    same recipe, typically natural): the reference as a normal run, the proxy on batches drawn
    uniformly over domains with its loss reweighted by domain weights updated each step from
    its excess loss over the reference. The result is the weights' average over
    the proxy's steps. ``eta`` (step size) and ``smoothing`` (toward uniform) default to the
    reference implementation's 1.0 and 1e-3.
    """

    reference: str
    initial_weights: Literal["uniform", "reference"] = "uniform"


STRATEGIES = ("natural", "uniform", "manual", "temperature", "entropy", "doremi")


class MixtureDecl(Strict):
    """Domain weights over a recipe's filtered sources and the token budget they fill.

    ``strategy``: ``natural`` (token-proportional), ``uniform``, ``manual`` (``weights``),
    ``temperature`` (weights proportional to tokens^(1/``temperature``)), ``entropy`` (BiMix:
    proportional to each domain's conditional token entropy; ``entropy_normalization``
    ``linear`` or ``softmax``) or ``doremi`` (``doremi``: reference and proxy training).
    """

    recipe: str
    strategy: Literal["natural", "uniform", "manual", "temperature", "entropy", "doremi"] = (
        "natural"
    )
    weights: dict[str, float] | None = None
    temperature: float | None = Field(None, gt=0)
    entropy_normalization: Literal["linear", "softmax"] = "linear"
    doremi: DoReMiDecl | None = None
    token_budget: int = Field(ge=1)
    seq_len: int = Field(128, ge=8)
    heldout_fraction: float = Field(0.05, gt=0, lt=0.5)
    seed: int = 0
    tokenizer: TokenizerDecl = TokenizerDecl()

    @model_validator(mode="after")
    def _weights_match_strategy(self) -> MixtureDecl:
        if self.strategy == "manual" and not self.weights:
            raise ValueError("strategy 'manual' needs 'weights' (domain -> weight)")
        if self.strategy != "manual" and self.weights:
            raise ValueError(
                f"'weights' are only used with strategy 'manual', not {self.strategy!r}"
            )
        if self.weights and any(w < 0 for w in self.weights.values()):
            raise ValueError("weights must be non-negative")
        if self.weights and sum(self.weights.values()) <= 0:
            raise ValueError("weights must not all be zero")
        if (self.strategy == "temperature") != (self.temperature is not None):
            raise ValueError(
                "'temperature' is needed by, and only used with, strategy 'temperature'"
            )
        if (self.strategy == "doremi") != (self.doremi is not None):
            raise ValueError("'doremi' is needed by, and only used with, strategy 'doremi'")
        if "entropy_normalization" in self.model_fields_set and self.strategy != "entropy":
            raise ValueError("'entropy_normalization' is only used with strategy 'entropy'")
        return self


class EvalDecl(Strict):
    """Held-out evaluation: per-domain bits-per-byte on documents never trained on."""

    max_docs_per_domain: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)


class InheritDecl(Inherit):
    """Inheritune: start from another declared run's embeddings and first ``layers`` blocks."""

    run: str


class RunDecl(TrainingDecl):
    """A training run: a mixture, a model (ladder scale or dims), DeepSpeed config and eval.

    ``train`` is :class:`~corpuslab.training.runspec.TrainConfig` (schedule, z-loss, AdaGC, LAWA,
    spike
    detection, checkpointing).
    """

    mixture: str
    init_from: InheritDecl | None = None
    eval: EvalDecl = EvalDecl()


def _deepspeed_path(name: str) -> Path:
    """``infra/deepspeed/<name>.json`` for a bare name, else the path (relative: to the repo)."""
    p = Path(name)
    if p.suffix != ".json":
        p = DEEPSPEED_DIR / f"{name}.json"
    return p if p.is_absolute() else REPO_ROOT / p


class Experiment(Strict):
    """All declarations, cross-checked, with the file each one came from."""

    root: Path
    sources: dict[str, SourceDecl] = Field(default_factory=dict)
    recipes: dict[str, RecipeDecl] = Field(default_factory=dict)
    mixtures: dict[str, MixtureDecl] = Field(default_factory=dict)
    runs: dict[str, RunDecl] = Field(default_factory=dict)
    origin: dict[str, str] = Field(default_factory=dict)  # "recipes.x" -> file

    def where(self, section: str, name: str) -> str:
        return self.origin.get(f"{section}.{name}", str(self.root))

    def mixture_domains(self, mixture: str) -> list[str]:
        return list(self.recipes[self.mixtures[mixture].recipe].sources)

    def tokenizer_owner(self, mixture: str) -> str:
        """The mixture whose ``tokenizer/<name>`` asset ``mixture`` uses (itself unless shared)."""
        return self.mixtures[mixture].tokenizer.mixture or mixture


_MODELS: dict[str, type[Strict]] = {
    "sources": SourceDecl,
    "recipes": RecipeDecl,
    "mixtures": MixtureDecl,
    "runs": RunDecl,
}
_NAME_OK = __import__("re").compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def default_experiments_dir() -> Path:
    return Path(os.environ.get(EXPERIMENTS_ENV) or REPO_ROOT / "experiments").resolve()


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


def load_experiment(root: Path | None = None) -> Experiment:
    """Load and cross-check every declaration under ``root`` (default: ``experiments/``)."""
    root = (root or default_experiments_dir()).resolve()
    if not root.is_dir():
        raise DeclarationError(f"{root}: experiments folder does not exist")
    files = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
    if not files:
        raise DeclarationError(f"{root}: no *.yaml declarations found")
    parsed: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    origin: dict[str, str] = {}
    for file in files:
        try:
            doc = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise DeclarationError(f"{file}: not valid YAML: {exc}") from None
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
    exp = Experiment(root=root, origin=origin, **parsed)
    _cross_check(exp)
    return exp


def _ref_error(exp: Experiment, section: str, name: str, key: str, value: str, pool: dict) -> None:
    allowed = ", ".join(sorted(pool)) or "(none declared)"
    raise DeclarationError(
        f"{exp.where(section, name)}: {section}.{name}.{key}: unknown {value!r}; allowed: {allowed}"
    )


def _cross_check(exp: Experiment) -> None:
    """Dangling references and missing files fail here, naming file, key and allowed values."""
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
        _check_deepspeed(exp.where("runs", name), f"runs.{name}.deepspeed", run)
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


def _check_deepspeed(where: str, key: str, decl: TrainingDecl) -> None:
    ds = decl.deepspeed_path()
    if not ds.is_file():
        known = sorted(p.stem for p in DEEPSPEED_DIR.glob("*.json"))
        raise DeclarationError(
            f"{where}: {key}: config file {ds} not found; "
            f"allowed: {', '.join(known)} or a path to a .json file"
        )


def _same_split(a: MixtureDecl, b: MixtureDecl) -> list[str]:
    """Fields that must agree for two mixtures to share data (recipe and held-out split)."""
    return [k for k in ("recipe", "heldout_fraction", "seed") if getattr(a, k) != getattr(b, k)]


def _check_tokenizer(exp: Experiment, name: str, mix: MixtureDecl) -> None:
    where = exp.where("mixtures", name)
    tdecl = mix.tokenizer
    if tdecl.file:
        path = tdecl.resolve_file(exp.root)
        if path is None or not path.is_file():
            raise DeclarationError(
                f"{where}: mixtures.{name}.tokenizer.file: {path} is not a file "
                "(relative paths are under the experiments folder)"
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
    _check_deepspeed(where, f"mixtures.{name}.doremi.deepspeed", decl)
