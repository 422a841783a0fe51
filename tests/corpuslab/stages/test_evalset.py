"""Held-out evaluation text: set aside by the pools, fixed in the eval set, proven absent
from training by the exclusion check, which fails on planted leaks and names them."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpuslab.declarations import Experiment, load_experiment
from corpuslab.eval.suite import reserved
from corpuslab.fileio import write_parquet
from corpuslab.layout import Layout
from corpuslab.stages.corpus import materialize_corpus_shard, source_shards
from corpuslab.stages.evalset import check_excluded, materialize_evalset, require_clean
from corpuslab.stages.pool import materialize_pool_shard

EXPERIMENT = """
    sources:
      reference: {path: raw/reference}
      docstrings: {path: raw/docstrings}
    recipes:
      r: {sources: [docstrings], steps: []}
    mixtures:
      m: {recipe: r, token_budget: 5000, seq_len: 32}
    evals:
      s:
        heldout: {fraction_of: {reference: 0.5, docstrings: 0.3}, max_docs: 10}
        tasks:
          - {label: word, builtin: heldout_lm, source: reference,
             icl_task_type: language_modeling, max_items: 8}
    """


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_raw: Path) -> tuple[Experiment, Layout]:
    """Corpus and pool shards of the tiny raw corpus, and the suite's eval set."""
    root = tmp_path_factory.mktemp("evalset")
    home = root / "home"
    for source in ("reference", "docstrings"):
        shutil.copytree(tiny_raw / source, home / "raw" / source)
    (root / "exp").mkdir()
    (root / "exp" / "all.yaml").write_text(textwrap.dedent(EXPERIMENT))
    exp, layout = load_experiment(root / "exp"), Layout(home)
    for source in ("reference", "docstrings"):
        for shard in source_shards(exp, layout, source):
            materialize_corpus_shard(exp, layout, source, shard)
    for shard in source_shards(exp, layout, "docstrings"):
        materialize_pool_shard(exp, layout, "r", "docstrings", shard)
    materialize_evalset(exp, layout, "s")
    return exp, layout


def test_pools_set_aside_the_held_out_slice_and_still_conserve(
    built: tuple[Experiment, Layout],
) -> None:
    """Every reserved docstrings id is dropped as eval_heldout; the rest reach the pool."""
    exp, layout = built
    reserved_ids, kept_ids = set(), set()
    for path in sorted(layout.decisions_dir("pool", "docstrings", "r").glob("*.parquet")):
        t = pq.read_table(path).to_pylist()
        reserved_ids |= {d["id"] for d in t if d["step"] == "eval_heldout"}
        kept_ids |= {d["id"] for d in t if d["kept"]}
        assert all(d["reason"] == "reserved_for_evaluation" for d in t if not d["kept"])
    assert reserved_ids and kept_ids
    assert all(reserved(i, 0.3) for i in reserved_ids)
    assert not any(reserved(i, 0.3) for i in kept_ids)
    pooled = {
        i
        for p in layout.pool_dir("r", "docstrings").glob("*.parquet")
        for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()
    }
    assert pooled == kept_ids


def _training(layout: Layout, extra: list[dict[str, str]], selected_extra: list[str]) -> None:
    """The pool as the filtered pool, every document selected, plus planted rows."""
    for path in sorted(layout.pool_dir("r", "docstrings").glob("*.parquet")):
        t = pq.read_table(path, columns=["id", "text"])
        if extra and path.stem.endswith("0"):
            t = pa.concat_tables([t, pa.Table.from_pylist(extra, schema=t.schema)])
            extra = []
        write_parquet(t, layout.filtered_dir("r", "docstrings") / path.name)
    ids = [
        (p.stem, i)
        for p in sorted(layout.filtered_dir("r", "docstrings").glob("*.parquet"))
        for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()
    ]
    ids += [("part-00000", i) for i in selected_extra]
    selection = pa.table(
        {
            "domain": ["docstrings"] * len(ids),
            "shard": [s for s, _ in ids],
            "id": [i for _, i in ids],
        }
    )
    write_parquet(selection, layout.mixture_dir("m") / "selection.parquet")


def test_the_exclusion_check_passes_on_clean_training_data(
    built: tuple[Experiment, Layout],
) -> None:
    exp, layout = built
    _training(layout, [], [])
    result = check_excluded(exp, layout, "s")
    assert result["passed"], result
    assert result["eval_texts"] > 8 and result["training_documents"] > 10
    require_clean(layout, "s")


def test_the_exclusion_check_fails_on_planted_leaks_and_names_them(
    built: tuple[Experiment, Layout],
) -> None:
    """A training document quoting 40 words of held-out text, and a held-out docstrings id in
    the token file's selection, both fail the check by name; evaluation then refuses to run."""
    exp, layout = built
    held = pq.read_table(layout.evalset_dir("s") / "heldout.parquet").to_pylist()
    victim = next(d for d in held if d["source"] == "reference" and len(d["text"].split()) > 80)
    quote = " ".join(victim["text"].split()[20:60])
    leaked_id = next(
        d["id"] for d in pq.read_table(layout.evalset_dir("s") / "reserved.parquet").to_pylist()
        if d["source"] == "docstrings"
    )  # fmt: skip
    _training(layout, [{"id": "planted/quote", "text": f"Notes.\n\n{quote}\n"}], [leaked_id])
    result = check_excluded(exp, layout, "s")
    assert not result["passed"]
    assert {"document": f"docstrings/{leaked_id}", "found_in": "tokens/m"} in result["in_training"]
    bad = {c["text"]: c for c in result["contaminated"]}
    key = f"heldout:reference:{victim['id']}"
    assert key in bad
    assert any(doc.endswith("/planted/quote") for doc in bad[key]["training_documents"])
    with pytest.raises(RuntimeError, match="failed its exclusion check"):
        require_clean(layout, "s")


def test_generated_text_quoted_elsewhere_in_the_raw_corpus_is_set_aside(
    built: tuple[Experiment, Layout], tmp_path: Path
) -> None:
    """A raw docstrings document quoting a held-out section: the section is set aside (named
    with the quoting document in the manifest), neither scored nor used to build items."""
    exp, layout = built
    held = pq.read_table(layout.evalset_dir("s") / "heldout.parquet").to_pylist()
    victim = next(d for d in held if d["source"] == "reference" and len(d["text"].split()) > 80)
    home = tmp_path / "home"
    shutil.copytree(layout.data / "corpus", home / "data" / "corpus")
    other = Layout(home)
    doc_id = next(f"planted/{i}" for i in range(100) if not reserved(f"planted/{i}", 0.3))
    quote = " ".join(victim["text"].split()[10:50])
    write_parquet(
        pa.table({"id": [doc_id], "text": [f"See also.\n\n{quote}\n"]}),
        other.corpus_dir("docstrings") / "part-99999.parquet",
    )
    manifest = materialize_evalset(exp, other, "s")
    key = f"heldout:reference:{victim['id']}"
    assert manifest["set_aside"]["texts"][key]["overlaps"] == [
        f"corpus/docstrings/part-99999/{doc_id}"
    ]
    scored = pq.read_table(other.evalset_dir("s") / "heldout.parquet").column("id").to_pylist()
    assert victim["id"] not in scored
    items = (other.evalset_dir("s") / "tasks" / "word.jsonl").read_text()
    assert f'"{victim["id"]}#' not in items
    # the held-out document stays reserved from training all the same
    keys = pq.read_table(other.evalset_dir("s") / "reserved.parquet").column("id").to_pylist()
    assert victim["id"] in keys
