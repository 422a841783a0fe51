"""What each stage reads and writes under the home, as paths relative to it (from :class:`Layout`).

With an ``s3://`` home (:mod:`corpuslab.home`) a step pulls its :attr:`StageIO.inputs` into the
working copy before it runs and pushes its :attr:`StageIO.outputs` after it succeeds; with a
local home the lists are not used. A spec is a file, or a folder ending in ``/`` (every file
below it). The lists are the stage functions' reads and writes, kept here in one place rather
than in the assets: a stage whose inputs are missing from its list fails on a fresh working
copy (``per_step`` homes, the end-to-end S3 test) with the upstream it needs named.

Stages that build on their own earlier outputs list them as inputs too: dedup's index (decision
files and signature cache), the quality model's recorded sample, the encoded-token cache, and a
training run's folder (the checkpoints it resumes from).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from corpuslab.layout import Layout

if TYPE_CHECKING:  # the training process imports this module: keep it light
    from corpuslab.declarations import Experiment

SUMMARY = "summary.json"  # a finished run's marker: pushed after everything else of the run
LATEST = "latest"  # corpuslab.training.checkpoints.LATEST (not imported: that module needs torch)


@dataclass(frozen=True)
class StageIO:
    """Specs relative to the home: pulled before a step, pushed after it; ``last`` last."""

    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    last: tuple[str, ...] = ()


def _file(layout: Layout, path: Path) -> str:
    return layout.relative(path)


def _folder(layout: Layout, path: Path) -> str:
    return layout.relative(path) + "/"


def run_folder(layout: Layout, run_dir: Path) -> StageIO:
    """A training run's folder: resumed from (checkpoints), pushed as checkpoints complete.

    ``checkpoints/latest`` goes up after the checkpoint it names and ``summary.json`` after
    the final weights, so a reader of the store never sees a marker before what it marks.
    """
    rel = _folder(layout, run_dir)
    return StageIO(
        inputs=(rel,),
        outputs=(rel,),
        last=(f"{rel}checkpoints/{LATEST}", f"{rel}{SUMMARY}"),
    )


def _trained(layout: Layout, run_dir: Path) -> tuple[str, ...]:
    """What reading a finished run needs (its weights and config), not its checkpoints."""
    names = ("model.pt", "model_lawa.pt", "model_config.json", "mlflow.json", SUMMARY)
    return tuple(_file(layout, run_dir / n) for n in names)


def _mixture_inputs(exp: Experiment, layout: Layout, mixture: str) -> tuple[str, ...]:
    """A mixture's filtered pools, its tokenizer and the encoded cache of both."""
    mdecl = exp.mixtures[mixture]
    owner = exp.tokenizer_owner(mixture)
    return (
        *(
            _folder(layout, layout.filtered_dir(mdecl.recipe, d))
            for d in exp.mixture_domains(mixture)
        ),
        _folder(layout, layout.tokenizer_dir(owner)),
        _encoded(layout, owner, mdecl.recipe),
    )


def _encoded(layout: Layout, owner: str, recipe: str) -> str:
    return _folder(layout, layout.encoded_dir(owner) / f"recipe={recipe}")


def _training(layout: Layout, mixture: str, run_dir: Path, parents: Sequence[Path] = ()) -> StageIO:
    """A training run on ``mixture``'s tokens, reading the finished runs ``parents``."""
    run = run_folder(layout, run_dir)
    inputs = (
        _folder(layout, layout.tokens_dir(mixture)),
        _file(layout, layout.mixture_dir(mixture) / "mixture.json"),
        *(spec for parent in parents for spec in _trained(layout, parent)),
        *run.inputs,
    )
    return StageIO(inputs, run.outputs, run.last)


def _replicate(names: Sequence[str]) -> tuple[str, int | None]:
    """(run, seed) of ``train``/``eval`` keys: ``[run]`` or ``[run, "seed<k>"]``."""
    if len(names) == 2 and names[1].startswith("seed") and names[1][4:].isdigit():
        return names[0], int(names[1][4:])
    (run,) = names
    return run, None


def stage_io(
    exp: Experiment | None, layout: Layout, key: Sequence[str], partition: str | None = None
) -> StageIO:
    """The inputs and outputs of the asset ``key`` (``["pool", recipe, source]``...) for
    ``partition`` (a shard key of a per-shard asset); ``exp`` may be None only for ``stats``.

    Raises ``KeyError`` for an asset this module does not know, so a new stage cannot run on
    an ``s3://`` home without saying what it reads and writes.
    """
    stage, *names = key
    if stage == "stats":
        # dbt-duckdb reads the decision and score Parquet files of the working copy (DuckDB's
        # httpfs extension would be a download at run time) into stats.duckdb, one database
        # that a subset of the models updates: its earlier tables are an input too
        duckdb = _file(layout, layout.duckdb_path)
        return StageIO(
            inputs=(
                _folder(layout, layout.data / "decisions"),
                _folder(layout, layout.data / "scores"),
                duckdb,
            ),
            outputs=(duckdb,),
        )
    if exp is None:
        raise ValueError(f"stage_io({'/'.join(key)}) needs the experiment")
    sharded = {"corpus", "pool", "dedup", "filtered"}
    if stage in sharded and partition is None:
        raise ValueError(f"{'/'.join(key)} is per shard: give the shard")
    if stage == "corpus":
        (source,) = names  # the raw file is read where it lies (a local path or s3://)
        return StageIO(
            outputs=(
                _file(layout, layout.corpus_dir(source) / f"{partition}.parquet"),
                _file(layout, layout.quarantine_dir(source) / f"{partition}.jsonl"),
                _file(layout, layout.decisions_dir("corpus", source) / f"{partition}.parquet"),
            )
        )
    if stage == "pool":
        recipe, source = names
        outputs = [
            _file(layout, layout.pool_dir(recipe, source) / f"{partition}.parquet"),
            _file(layout, layout.decisions_dir("pool", source, recipe) / f"{partition}.parquet"),
        ]
        if exp.recipes[recipe].write_dropped:
            outputs.append(
                _file(layout, layout.dropped_dir(recipe, source) / f"{partition}.parquet")
            )
        return StageIO(
            inputs=(_file(layout, layout.corpus_dir(source) / f"{partition}.parquet"),),
            outputs=tuple(outputs),
        )
    if stage == "dedup":
        recipe, _source = names
        index = _folder(layout, layout.dedup_dir(recipe))  # decisions + signature cache
        pools = (_folder(layout, layout.pool_dir(recipe, s)) for s in exp.recipes[recipe].sources)
        return StageIO(inputs=(*pools, index), outputs=(index,))
    if stage == "quality_model":
        (recipe,) = names
        decl = exp.recipes[recipe]
        qdir = _folder(layout, layout.quality_dir(recipe))
        inputs = [
            *(_folder(layout, layout.pool_dir(recipe, s)) for s in decl.sources),
            *(_folder(layout, layout.dedup_decisions_dir(recipe, s)) for s in decl.sources),
            qdir,
        ]
        if decl.quality is not None:
            inputs.append(_folder(layout, layout.corpus_dir(decl.quality.positive_source)))
        return StageIO(inputs=tuple(inputs), outputs=(qdir,))
    if stage == "filtered":
        recipe, source = names
        return StageIO(
            inputs=(
                _file(layout, layout.pool_dir(recipe, source) / f"{partition}.parquet"),
                _file(layout, layout.dedup_decisions_dir(recipe, source) / f"{partition}.parquet"),
                _folder(layout, layout.quality_dir(recipe)),
            ),
            outputs=(
                _file(layout, layout.filtered_dir(recipe, source) / f"{partition}.parquet"),
                _file(layout, layout.scores_dir(recipe, source) / f"{partition}.parquet"),
                _file(
                    layout,
                    layout.decisions_dir("filtered", source, recipe) / f"{partition}.parquet",
                ),
            ),
        )
    if stage == "tokenizer":
        (mixture,) = names
        mdecl = exp.mixtures[mixture]
        pools = (_folder(layout, layout.filtered_dir(mdecl.recipe, d))
                 for d in exp.mixture_domains(mixture))  # fmt: skip
        return StageIO(
            inputs=tuple(pools), outputs=(_folder(layout, layout.tokenizer_dir(mixture)),)
        )
    if stage == "mixture":
        (mixture,) = names
        mdecl = exp.mixtures[mixture]
        inputs = list(_mixture_inputs(exp, layout, mixture))
        if mdecl.doremi is not None:
            inputs.append(_file(layout, layout.doremi_dir(mixture) / "weights.json"))
        encoded = _encoded(layout, exp.tokenizer_owner(mixture), mdecl.recipe)
        return StageIO(
            inputs=tuple(inputs), outputs=(_folder(layout, layout.mixture_dir(mixture)), encoded)
        )
    if stage == "tokens":
        (mixture,) = names
        mdecl = exp.mixtures[mixture]
        encoded = _encoded(layout, exp.tokenizer_owner(mixture), mdecl.recipe)
        return StageIO(
            inputs=(
                *_mixture_inputs(exp, layout, mixture),
                _folder(layout, layout.mixture_dir(mixture)),
            ),
            outputs=(_folder(layout, layout.tokens_dir(mixture)), encoded),
        )
    if stage == "train":
        run, seed = _replicate(names)
        rdecl = exp.runs[run]
        parents = [layout.run_dir(rdecl.init_from.run)] if rdecl.init_from is not None else []
        return _training(layout, rdecl.mixture, layout.run_dir(run, seed), parents)
    if stage == "doremi":
        mixture, role = names
        decl = exp.mixtures[mixture].doremi
        if decl is None:
            raise KeyError(f"mixture {mixture!r} declares no doremi")
        ddir = layout.doremi_dir(mixture)
        if role == "reference":
            return _training(layout, decl.reference, ddir / "reference")
        if role == "proxy":
            return _training(layout, decl.reference, ddir / "proxy", [ddir / "reference"])
        if role == "weights":
            return StageIO(
                inputs=(
                    _file(layout, ddir / "proxy" / "doremi.json"),
                    _file(layout, ddir / "proxy" / "mlflow.json"),
                    _file(layout, layout.mixture_dir(decl.reference) / "mixture.json"),
                ),
                outputs=(
                    _file(layout, ddir / "weights.json"),
                    _file(layout, ddir / "weights_trajectory.png"),
                ),
            )
    if stage == "eval":
        run, seed = _replicate(names)
        rdecl = exp.runs[run]
        mixture, run_dir = rdecl.mixture, layout.run_dir(run, seed)
        inputs = [
            *_trained(layout, run_dir),
            _file(layout, layout.mixture_dir(mixture) / "heldout.parquet"),
            _folder(layout, layout.tokenizer_dir(exp.tokenizer_owner(mixture))),
            *(_folder(layout, layout.evalset_dir(suite)) for suite in rdecl.evals),
        ]
        if rdecl.eval.eval_every:  # the trajectory scores the run's checkpoints
            inputs.append(_folder(layout, run_dir / "checkpoints"))
        return StageIO(inputs=tuple(inputs), outputs=(_folder(layout, layout.eval_dir(run, seed)),))
    if stage == "evalset":
        (suite,) = names
        # held-out documents and builtin tasks come from the corpus; the exclusion check reads
        # every filtered pool and mixture selection that training draws from
        inputs = [_folder(layout, layout.corpus_dir(source)) for source in exp.sources]
        for recipe, rdecl in exp.recipes.items():
            inputs += [_folder(layout, layout.filtered_dir(recipe, s)) for s in rdecl.sources]
        inputs += [_file(layout, layout.mixture_dir(m) / "selection.parquet") for m in exp.mixtures]
        for task in exp.evals[suite].tasks:
            path = task.resolve_file(exp.home)
            if path is not None and path.is_relative_to(layout.home):  # else read where it is
                inputs.append(_file(layout, path))
        return StageIO(inputs=tuple(inputs), outputs=(_folder(layout, layout.evalset_dir(suite)),))
    if stage == "compare":
        (study,) = names
        if study not in exp.studies:
            raise KeyError(f"no study {study!r} declared; declared: {sorted(exp.studies)}")
        decl = exp.studies[study]
        evals = (
            _file(layout, layout.eval_dir(run, seed) / "eval.json")
            for run in decl.runs
            for seed in exp.runs[run].replicates()
        )
        return StageIO(
            inputs=(*evals, _folder(layout, layout.evalset_dir(decl.suite))),
            outputs=(_folder(layout, layout.compare_dir(study)),),
        )
    raise KeyError(
        f"no inputs and outputs declared for asset {'/'.join(key)}: add it to "
        "corpuslab/stages/io.py to run it on an s3:// home"
    )


def report_inputs(exp: Experiment, layout: Layout) -> tuple[str, ...]:
    """What ``corpuslab report`` reads: the dbt statistics and every stage's summary."""
    specs = [_file(layout, layout.duckdb_path)]
    for recipe in exp.recipes:
        specs += [_folder(layout, layout.quality_dir(recipe))]
        specs += [
            _folder(layout, layout.dedup_decisions_dir(recipe, s))
            for s in exp.recipes[recipe].sources
        ]
    for mixture, mdecl in exp.mixtures.items():
        specs += [
            _file(layout, layout.mixture_dir(mixture) / "mixture.json"),
            _file(layout, layout.tokens_dir(mixture) / "summary.json"),
        ]
        if mdecl.doremi is not None:
            specs.append(_file(layout, layout.doremi_dir(mixture) / "weights.json"))
    for run, rdecl in exp.runs.items():
        for seed in rdecl.replicates():
            run_dir = layout.run_dir(run, seed)
            specs += [_file(layout, run_dir / n) for n in (SUMMARY, "mlflow.json")]
            specs.append(_folder(layout, layout.eval_dir(run, seed)))
    specs += [_folder(layout, layout.compare_dir(study)) for study in exp.studies]
    return tuple(specs)
