"""Each stage's inputs and outputs (``corpuslab.stages.io``): every asset has them, and they name
what the stage reads, relative to the home. The end-to-end S3 test (``tests/cli/test_s3_home.py``)
checks them for real: there every step starts from an empty working copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpuslab.declarations import load_experiment
from corpuslab.layout import Layout
from corpuslab.stages import io
from corpuslab.sync import check_spec
from tests.conftest import write_experiment


def test_every_asset_of_the_code_location_declares_what_it_reads_and_writes() -> None:
    """A new asset without an entry fails here, before it fails on an s3:// home."""
    import definitions

    exp = load_experiment()
    layout = Layout(exp.home)
    graph = definitions.defs.resolve_asset_graph()
    for key in graph.materializable_asset_keys:
        partition = "part-00000" if graph.get(key).partitions_def is not None else None
        got = io.stage_io(exp, layout, key.path, partition)
        assert got.outputs, key
        for spec in (*got.inputs, *got.outputs, *got.last):
            assert check_spec(spec) == spec and not spec.startswith("/"), (key, spec)
        for marker in got.last:  # a commit marker is one of the outputs
            assert any(marker == o or (o.endswith("/") and marker.startswith(o))
                       for o in got.outputs), (key, marker)  # fmt: skip


def test_an_unknown_asset_is_refused_by_name(tmp_path: Path) -> None:
    exp = load_experiment(write_experiment(tmp_path / "exp"), home=tmp_path / "home")
    with pytest.raises(KeyError, match="nonesuch/x.*corpuslab/stages/io.py"):
        io.stage_io(exp, Layout(tmp_path / "home"), ["nonesuch", "x"])
    with pytest.raises(KeyError, match="no study 'study'.*tiny_study"):
        io.stage_io(exp, Layout(tmp_path / "home"), ["compare", "study"])
    with pytest.raises(ValueError, match="per shard"):
        io.stage_io(exp, Layout(tmp_path / "home"), ["pool", "lenient", "code"])


def test_stage_lists_name_their_reads(tmp_path: Path) -> None:
    """Per shard: the shard's own files; globals: the folders they glob; training: the token
    file, its own folder (to resume), and a parent's weights, never its checkpoints."""
    exp = load_experiment(write_experiment(tmp_path / "exp"), home=tmp_path / "home")
    layout = Layout(tmp_path / "home")

    def of(*key: str, shard: str | None = None) -> io.StageIO:
        return io.stage_io(exp, layout, list(key), shard)

    assert of("pool", "lenient", "code", shard="part-00001") == io.StageIO(
        inputs=("data/corpus/source=code/part-00001.parquet",),
        outputs=(
            "data/pool/recipe=lenient/source=code/part-00001.parquet",
            "data/decisions/stage=pool/recipe=lenient/source=code/part-00001.parquet",
        ),
    )
    dedup = of("dedup", "lenient", "code", shard="part-00001")
    assert dedup.inputs == (
        "data/pool/recipe=lenient/source=docstrings/",
        "data/pool/recipe=lenient/source=code/",
        "data/dedup/recipe=lenient/",
    )
    assert dedup.outputs == ("data/dedup/recipe=lenient/",)  # index: decisions + signatures
    assert "data/corpus/source=reference/" in of("quality_model", "lenient").inputs
    assert "data/quality/recipe=lenient/" in of("filtered", "lenient", "code", shard="p").inputs
    child = of("train", "child")
    assert "runs/smoke/model.pt" in child.inputs and "runs/smoke/model_config.json" in (
        child.inputs
    )
    assert "runs/smoke/" not in child.inputs  # the parent's weights, not its checkpoints
    assert {"data/tokens/mixture=small/", "runs/child/"} <= set(child.inputs)
    assert child.outputs == ("runs/child/",)
    assert child.last == ("runs/child/checkpoints/latest", "runs/child/summary.json")
    proxy = of("doremi", "dro", "proxy")
    assert "doremi/dro/reference/model.pt" in proxy.inputs
    assert proxy.outputs == ("doremi/dro/proxy/",)
    assert "doremi/dro/weights.json" in of("mixture", "dro").inputs
    # mixtures sharing a tokenizer share its encoded cache, and write it back
    assert "data/encoded/tokenizer=small/recipe=lenient/" in of("tokens", "entropic").outputs
    ev = of("eval", "smoke")  # eval_every: its trajectory scores the checkpoints
    assert {"runs/smoke/model_lawa.pt", "runs/smoke/checkpoints/"} <= set(ev.inputs)
    seeded = of("eval", "smoke_b", "seed1")  # no trajectory: final weights only
    assert "runs/smoke_b/seed1/model.pt" in seeded.inputs
    assert not any("checkpoints" in p for p in seeded.inputs)
    assert seeded.outputs == ("data/eval/run=smoke_b/seed=1/",)
    assert of("stats", "stage_counts").outputs == ("stats.duckdb",)


def test_checkpoint_marker_is_the_trainers() -> None:
    from corpuslab.training.checkpoints import LATEST

    assert io.LATEST == LATEST


def test_the_report_reads_summaries_and_statistics_not_weights(tmp_path: Path) -> None:
    """``corpuslab report`` on an s3:// home pulls these first: small files only."""
    exp = load_experiment(write_experiment(tmp_path / "exp"), home=tmp_path / "home")
    specs = io.report_inputs(exp, Layout(tmp_path / "home"))
    assert {
        "stats.duckdb",
        "runs/smoke/summary.json",
        "data/eval/run=smoke/",
        "data/mixture/mixture=dro/mixture.json",
        "doremi/dro/weights.json",
    } <= set(specs)
    assert not [s for s in specs if s.endswith((".pt", "/train.bin")) or "checkpoints" in s]
