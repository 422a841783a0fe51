"""The declaration models: one strict pydantic model per section and the ``Experiment``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from corpuslab.declarations.paths import _deepspeed_path, default_home, expand_vars, resolve_path
from corpuslab.dedup import DedupParams
from corpuslab.eval.decontam import NGRAM
from corpuslab.eval.tasks import TaskDecl
from corpuslab.filters import STEPS, StepError, parse_step
from corpuslab.ingest.storage import is_url
from corpuslab.layout import Layout
from corpuslab.lmdata.tokenize import EOS
from corpuslab.quality import QualityParams
from corpuslab.strict import Strict
from corpuslab.training.runspec import GroupDROParams, Inherit, ModelSpec, TrainConfig


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
