"""Experiment declarations: YAML under ``experiments/`` parsed into typed, cross-checked models.

Every ``*.yaml`` file in the folder may declare any of ``sources``, ``recipes``, ``mixtures``,
``runs``, ``evals`` (evaluation suites) and ``studies`` (comparisons of runs); names are global
across files. A bad declaration fails at load time with the file,
the key path and the allowed values, before Dagster ever builds an asset.

YAML is read strictly (:func:`read_yaml`): a key repeated in one mapping is an error, not a
silent overwrite; alias expansion is bounded (:data:`MAX_YAML_NODES`) so a "billion laughs"
file fails at once; nesting deeper than :data:`MAX_YAML_DEPTH` and bytes that are not UTF-8
are clear errors.

Paths (:func:`resolve_path`, the README's "Paths in declarations"): ``~`` and ``$VAR`` /
``${VAR}`` are expanded (an undefined variable is an error); an absolute path is used as is;
a relative path is under the one base folder, ``$CORPUSLAB_HOME``, and may use ``..`` only
while it stays inside it. Source ``path`` may also be an ``s3://`` URL; ``deepspeed`` is a
bare name of ``infra/deepspeed/<name>.json`` or a path to a ``.json`` file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from corpuslab.dedup import DedupParams
from corpuslab.eval.decontam import NGRAM
from corpuslab.eval.metrics import parse_metric
from corpuslab.eval.tasks import TaskDecl
from corpuslab.filters import STEPS, StepError, parse_step
from corpuslab.ingest.storage import is_url
from corpuslab.layout import Layout
from corpuslab.lmdata.tokenize import EOS
from corpuslab.quality import QualityParams
from corpuslab.strict import Strict
from corpuslab.training.runspec import SCALES, GroupDROParams, Inherit, ModelSpec, TrainConfig

log = logging.getLogger(__name__)

EXPERIMENTS_ENV = "CORPUSLAB_EXPERIMENTS"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEEPSPEED_DIR = REPO_ROOT / "infra" / "deepspeed"
SECTIONS = ("sources", "recipes", "mixtures", "runs", "evals", "studies")
MAX_YAML_NODES = 100_000  # nodes of a file with every alias expanded: declarations hold hundreds
MAX_YAML_DEPTH = 64  # nesting levels; declarations use fewer than ten
_VAR = re.compile(r"\$(\w+)|\$\{([^}]*)\}")


class DeclarationError(ValueError):
    """A declaration that cannot be used; the message names the file and the key."""


def expand_vars(value: str) -> str:
    """``~`` and ``$VAR`` / ``${VAR}`` expanded; an undefined variable is a ``ValueError``."""
    missing = sorted({a or b for a, b in _VAR.findall(value) if (a or b) not in os.environ})
    if missing:
        raise ValueError(f"undefined environment variable(s) {', '.join(missing)} in {value!r}")
    return os.path.expanduser(os.path.expandvars(value))


def resolve_path(value: str, base: Path) -> Path:
    """A declared local path under the path policy: absolute as is, relative under ``base``.

    A relative path may use ``..`` only while it stays inside ``base``: to point elsewhere,
    write an absolute path or start it with a ``$VAR``.
    """
    if "\x00" in value:
        raise ValueError("a path cannot hold a NUL character")
    expanded = Path(expand_vars(value))
    if expanded.is_absolute():
        return Path(os.path.normpath(expanded))
    base = Path(os.path.normpath(base.absolute()))
    full = Path(os.path.normpath(base / expanded))
    if not full.is_relative_to(base):
        raise ValueError(
            f"relative path {value!r} leaves the base folder {base} (relative paths are under "
            "$CORPUSLAB_HOME); use an absolute path or a $VAR to point elsewhere"
        )
    return full


def default_home() -> Path:
    """The base folder of relative paths: ``$CORPUSLAB_HOME`` (see :mod:`corpuslab.layout`)."""
    return Layout.from_env().home


class SourceStorage(Strict):
    """Per-source S3 settings, strictly typed (``anonymous: 'false'`` is an error, not true)."""

    endpoint_url: StrictStr | None = None
    region: StrictStr | None = None
    anonymous: StrictBool = False
    max_attempts: StrictInt = Field(default=3, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            secret = sorted(k for k in data if isinstance(k, str) and k not in cls.model_fields)
            if secret:
                raise ValueError(
                    f"unknown key(s) {', '.join(secret)}; allowed: "
                    f"{', '.join(sorted(cls.model_fields))} (credentials come from the "
                    "environment or the storage resource, never from YAML)"
                )
        return data


class SourceDecl(Strict):
    """A raw corpus: a folder or ``s3://`` prefix of shards (relative paths: under the home).

    ``format``: ``auto`` (JSONL, Parquet, WARC by suffix), ``jsonl``, ``parquet``, ``warc``
    (HTML responses, main text extracted) or ``text`` (a shard per folder, a document per file).
    ``storage`` holds per-source S3 settings (``endpoint_url``, ``region``, ``anonymous``,
    ``max_attempts``); credentials come from the environment or the storage resource, never
    from YAML.
    """

    path: str
    format: Literal["auto", "jsonl", "parquet", "warc", "text"] = "auto"
    description: str = ""
    storage: SourceStorage = SourceStorage()

    @model_validator(mode="after")
    def _url_or_path(self) -> SourceDecl:
        if "://" in self.path and not is_url(self.path):
            scheme = self.path.split("://", 1)[0]
            raise ValueError(f"path: unsupported scheme {scheme!r}; use s3:// or a local path")
        if self.storage.model_fields_set and not is_url(self.path):
            raise ValueError("storage settings only apply to an s3:// path")
        return self

    def storage_options(self) -> dict[str, Any]:
        """The S3 options this declaration sets (they override the storage resource's)."""
        return self.storage.model_dump(exclude_unset=True)

    def resolve(self, layout: Layout) -> str:
        """The source's location: an ``s3://`` URL as declared, else an absolute local path.

        A relative path is under the home: with an ``s3://`` home that is a prefix of the
        store (read in place, like any S3 source), not the home's local working copy.
        """
        if is_url(self.path):
            return self.path
        if layout.remote is not None and not Path(expand_vars(self.path)).is_absolute():
            inside = resolve_path(self.path, layout.home).relative_to(layout.home.absolute())
            rel = inside.as_posix()
            return layout.remote if rel == "." else f"{layout.remote}/{rel}"
        return str(resolve_path(self.path, layout.home))


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

    ``file`` points to a Hugging Face ``tokenizer.json`` (relative paths: under
    ``$CORPUSLAB_HOME``) used as is; ``mixture`` shares another mixture's tokenizer asset (same
    recipe and held-out split, so the tokenizer never saw either mixture's held-out documents).
    Otherwise
    a BPE with ``vocab_size`` is trained on up to ``train_bytes`` of the training documents.
    ``eos_token`` separates documents in the training stream and must be in the vocabulary.
    """

    vocab_size: int = Field(default=4096, ge=260, le=2**32 - 1)
    min_frequency: int = Field(default=2, ge=1)
    train_bytes: int = Field(default=20_000_000, ge=1000)
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

    def resolve_file(self, home: Path) -> Path | None:
        """The declared tokenizer file as an absolute path (None: not a file tokenizer).

        Relative paths are under ``home`` (``$CORPUSLAB_HOME``), as every declared path is.
        """
        if not self.file:
            return None
        return resolve_path(self.file, home)


class TrainingDecl(Strict):
    """What any training declares: a model, a DeepSpeed config, ranks and optimization.

    ``deepspeed`` names ``infra/deepspeed/<name>.json`` or a path to a ``.json`` file
    (relative: under ``$CORPUSLAB_HOME``), and ``deepspeed_overrides`` is deep-merged into it;
    its keys are checked at load against the base file's keys plus DeepSpeed's documented keys
    (:data:`corpuslab.training.deepspeed.DOCUMENTED_KEYS`); ``train`` is
    :class:`corpuslab.training.runspec.TrainConfig`.
    """

    model: ModelSpec = ModelSpec(n_layer=2, n_head=4, d_model=128)
    deepspeed: str = "zero2"
    deepspeed_overrides: dict[str, Any] = Field(default_factory=dict)
    ranks: int = Field(default=1, ge=1)
    train: TrainConfig = TrainConfig(steps=100)

    @model_validator(mode="after")
    def _finite_overrides(self) -> TrainingDecl:
        bad = _non_finite(self.deepspeed_overrides, "deepspeed_overrides")
        if bad:
            raise ValueError(f"{bad}: NaN and infinity are not allowed")
        return self

    def deepspeed_path(self, home: Path | None = None) -> Path:
        """The DeepSpeed JSON: ``infra/deepspeed/<name>.json``, or a path under the policy."""
        return _deepspeed_path(self.deepspeed, home)


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
    temperature: float | None = Field(default=None, gt=0)
    entropy_normalization: Literal["linear", "softmax"] = "linear"
    doremi: DoReMiDecl | None = None
    token_budget: int = Field(ge=1)
    seq_len: int = Field(default=128, ge=8)
    heldout_fraction: float = Field(default=0.05, gt=0, lt=0.5)
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
    """How a run is evaluated besides its suites (``evals``).

    ``max_docs_per_domain`` and ``batch_size``: bits-per-byte on the run's own mixture's
    held-out split (comparable only between runs of one recipe; suites compare across recipes).
    ``eval_every``: also score the suites on the checkpoints of every ``eval_every`` steps (a
    multiple of ``train.checkpoint_every``), so the trajectory shows in MLflow.
    """

    max_docs_per_domain: int = Field(default=200, ge=1)
    batch_size: int = Field(default=16, ge=1)
    eval_every: int = Field(default=0, ge=0)


class HeldoutDecl(Strict):
    """Documents no run ever trains on: whole ``sources`` and/or an id-hash slice of others.

    ``fraction_of`` maps a source to the share of its documents (by a hash of the id,
    :func:`corpuslab.eval.suite.reserved`) removed from every pool, tokenizer and mixture and
    from the quality classifier's positives; up to ``max_docs`` of each source's held-out
    documents are scored for bits per byte and feed the builtin tasks built from a source.
    """

    sources: list[str] = Field(default_factory=list)
    fraction_of: dict[str, float] = Field(default_factory=dict)
    max_docs: int = Field(default=200, ge=1)

    @model_validator(mode="after")
    def _fractions(self) -> HeldoutDecl:
        for source, f in self.fraction_of.items():
            if not 0.0 < f < 1.0:
                raise ValueError(
                    f"fraction_of.{source}: {f} must lie in (0, 1); reserve a whole source "
                    "under 'sources'"
                )
        both = sorted(set(self.sources) & set(self.fraction_of))
        if both:
            raise ValueError(f"{', '.join(both)}: in both 'sources' and 'fraction_of'")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError("sources: a source is listed twice")
        return self

    def reserved_sources(self) -> dict[str, float]:
        """Source -> held-out fraction (1.0 for a whole source)."""
        return {**dict.fromkeys(self.sources, 1.0), **self.fraction_of}


class DecontaminationDecl(Strict):
    """The decontamination check: at most ``max_overlap`` of an eval text's ``ngram``-grams
    may occur in training documents (GPT-3 and decon use 13-grams; 0.0 tolerates none).

    ``set_aside``: when the eval set is built, held-out documents and builtin task items that
    overlap beyond ``max_overlap`` with any document of the raw corpus that is not held out
    (every declared source, so the set does not depend on recipes) are set aside, listed with
    the documents they overlap in the manifest, and not scored. Items of task files are never
    set aside: the check reports them.
    """

    ngram: int = Field(default=NGRAM, ge=5)
    max_overlap: float = Field(default=0.0, ge=0.0, lt=1.0)
    set_aside: bool = True


class SuiteDecl(Strict):
    """An evaluation suite: held-out text scored in bits per byte, and ICL tasks.

    ``tasks`` take llm-foundry's task keys (:class:`corpuslab.eval.tasks.TaskDecl`);
    ``batch_size`` is rows per forward pass when scoring.
    """

    heldout: HeldoutDecl | None = None
    tasks: list[TaskDecl] = Field(default_factory=list)
    decontamination: DecontaminationDecl = DecontaminationDecl()
    batch_size: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _something(self) -> SuiteDecl:
        if self.heldout is None and not self.tasks:
            raise ValueError("a suite needs 'heldout' text, 'tasks', or both")
        labels = [t.label for t in self.tasks]
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if repeated:
            raise ValueError(f"tasks: label(s) {', '.join(repeated)} declared twice")
        return self

    def task_names(self) -> list[str]:
        return [n for t in self.tasks for n in t.names()]

    def heldout_sources(self) -> list[str]:
        return list(self.heldout.reserved_sources()) if self.heldout else []


class StudyDecl(Strict):
    """A comparison: ``runs`` (with their seeds) on ``metric``, against ``baseline``.

    ``metric`` is ``<suite>.core``, ``<suite>.bpb``, ``<suite>.heldout.<source>.bpb`` or
    ``<suite>.<task>.<metric>``; intervals are ``confidence`` percentile intervals over
    ``n_boot`` bootstrap replicates drawn with ``seed`` (:mod:`corpuslab.eval.stats`).
    """

    runs: list[str] = Field(min_length=2)
    baseline: str
    metric: str
    confidence: float = Field(default=0.95, ge=0.5, lt=1.0)
    n_boot: int = Field(default=2000, ge=100)
    seed: int = 0

    @property
    def suite(self) -> str:
        return self.metric.split(".")[0]


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
    evals: list[str] = Field(default_factory=list, description="suites the run is scored on")
    seeds: list[int] | None = Field(
        None, min_length=1, description="train a replicate per seed (init and data order)"
    )

    @model_validator(mode="after")
    def _distinct(self) -> RunDecl:
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        if len(set(self.evals)) != len(self.evals):
            raise ValueError(f"evals lists a suite twice: {self.evals}")
        return self

    def replicates(self) -> list[int | None]:
        """The seeds of its replicates; ``[None]``: one run with ``train.seed``, no seed key."""
        return list(self.seeds) if self.seeds is not None else [None]


def _non_finite(node: Any, where: str) -> str | None:
    """The key path of the first NaN or infinity in a JSON-like tree, or None."""
    stack = [(node, where)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, float) and (value != value or value in (float("inf"), -float("inf"))):
            return path
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{k}") for k, v in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
    return None


def _deepspeed_path(name: str, home: Path | None = None) -> Path:
    """``infra/deepspeed/<name>.json`` for a bare name, else the path (relative: under home)."""
    if not name.endswith(".json") and "/" not in name:
        return DEEPSPEED_DIR / f"{name}.json"
    return resolve_path(name, home or default_home())


class Experiment(Strict):
    """All declarations, cross-checked, with the file each one came from."""

    root: Path
    home: Path = Field(default_factory=default_home)  # the base of relative paths
    remote: str | None = None  # the s3:// home whose working copy ``home`` is, if any
    sources: dict[str, SourceDecl] = Field(default_factory=dict)
    recipes: dict[str, RecipeDecl] = Field(default_factory=dict)
    mixtures: dict[str, MixtureDecl] = Field(default_factory=dict)
    runs: dict[str, RunDecl] = Field(default_factory=dict)
    evals: dict[str, SuiteDecl] = Field(default_factory=dict)
    studies: dict[str, StudyDecl] = Field(default_factory=dict)
    origin: dict[str, str] = Field(default_factory=dict)  # "recipes.x" -> file

    def where(self, section: str, name: str) -> str:
        return self.origin.get(f"{section}.{name}", str(self.root))

    def mixture_domains(self, mixture: str) -> list[str]:
        return list(self.recipes[self.mixtures[mixture].recipe].sources)

    def tokenizer_owner(self, mixture: str) -> str:
        """The mixture whose ``tokenizer/<name>`` asset ``mixture`` uses (itself unless shared)."""
        return self.mixtures[mixture].tokenizer.mixture or mixture

    def reservation(self, source: str) -> dict[str, float]:
        """Suite -> share of ``source`` it holds out from training (1.0: the whole source)."""
        return {
            suite: decl.heldout.reserved_sources()[source]
            for suite, decl in sorted(self.evals.items())
            if decl.heldout is not None and source in decl.heldout.reserved_sources()
        }

    def reserved_fraction(self, source: str) -> float:
        """The share of ``source`` held out by any suite (slices nest: the largest one)."""
        return max(self.reservation(source).values(), default=0.0)


_MODELS: dict[str, type[Strict]] = {
    "sources": SourceDecl,
    "recipes": RecipeDecl,
    "mixtures": MixtureDecl,
    "runs": RunDecl,
    "evals": SuiteDecl,
    "studies": StudyDecl,
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


# PyYAML's safe loader (libyaml's when PyYAML was built with it); read_yaml adds the checks
_SafeLoader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes in the document with every alias expanded (capped at ``limit + 1``).

    Aliases make the composed graph share nodes, so the count is memoized per node: linear in
    the file, however large the expansion. A recursive alias raises ``ValueError``.
    """
    size: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            visiting.discard(key)
            size[key] = min(limit + 1, 1 + sum(size[id(c)] for c in _children(node)))
            continue
        if key in size:
            continue
        if key in visiting:
            raise ValueError("an alias refers to a node that contains it (a recursive alias)")
        visiting.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    return size[id(root)]


def _check_nodes(root: yaml.Node, file: Path) -> None:
    """Repeated keys (a silent overwrite in YAML) and excessive nesting, with their key paths."""
    stack: list[tuple[yaml.Node, str, int]] = [(root, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_YAML_DEPTH:
            raise DeclarationError(
                f"{file}: {path or '(top level)'}: nested deeper than {MAX_YAML_DEPTH} levels"
            )
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for knode, vnode in node.value:
                if knode.tag == "tag:yaml.org,2002:merge":
                    stack.append((vnode, path, depth + 1))
                    continue
                name = str(knode.value) if isinstance(knode, yaml.ScalarNode) else "(complex key)"
                where = f"{path}.{name}" if path else name
                line = knode.start_mark.line + 1
                if name in seen:
                    raise DeclarationError(
                        f"{file}: {where}: duplicate key at line {line} (first at line "
                        f"{seen[name]}); YAML would silently keep only the last one"
                    )
                seen[name] = line
                stack.append((vnode, where, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((c, f"{path}[{i}]", depth + 1) for i, c in enumerate(node.value))


def read_yaml(file: Path) -> Any:
    """One declaration file, strictly: UTF-8, one document, no repeated keys, bounded size."""
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeclarationError(
            f"{file}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise DeclarationError(f"{file}: cannot be read: {exc.strerror or exc}") from None
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            size = _expanded_size(node, MAX_YAML_NODES)
        except ValueError as exc:
            raise DeclarationError(f"{file}: {exc}") from None
        if size > MAX_YAML_NODES:
            raise DeclarationError(
                f"{file}: expands to more than {MAX_YAML_NODES:,} YAML nodes once its aliases "
                "are followed (an alias bomb?); declarations are far smaller"
            )
        _check_nodes(node, file)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise DeclarationError(f"{file}: not valid YAML: {exc}") from None
    except RecursionError:  # the pure-Python parser on deep nesting (libyaml stops at 1000)
        raise DeclarationError(f"{file}: nested too deeply to parse") from None
    finally:
        loader.dispose()


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
