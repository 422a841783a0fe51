"""Stage functions without Dagster: dedup across shards with clashing ids; mixtures and tokens."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet
import pytest

from corpuslab.declarations import load_experiment
from corpuslab.fileio import digest, write_parquet
from corpuslab.ingest.readers import SCHEMA
from corpuslab.layout import Layout
from corpuslab.lmdata import mixture as mix_lib
from corpuslab.lmdata import tokenize as tok_lib
from corpuslab.lmdata.tokenfile import TokenFile
from corpuslab.stages.dedup import DedupIndexError, materialize_dedup_shard, recipe_decisions
from corpuslab.stages.mixture import materialize_mixture, materialize_tokenizer, materialize_tokens


def _docs(source: str, rows: list[tuple[str, str]]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"id": i, "text": t, "source": source, "url": None, "metadata": "{}"} for i, t in rows],
        schema=SCHEMA,
    )


def _decisions(layout: Layout) -> dict[tuple[str, str], tuple[str, str]]:
    """(shard, id) -> (status, duplicate_of) over every decided shard of recipe ``r``."""
    t = recipe_decisions(load_experiment(layout.home.parent / "exp"), layout, "r")
    return {
        (d["shard"], d["id"]): (d["status"], d["duplicate_of"])
        for d in t.to_pylist()
        if d["status"] != "kept"
    }


def test_dedup_across_shards_with_clashing_ids_and_a_later_shard(tmp_path: Path) -> None:
    """Shards decided in one batch equal the global clustering; a later shard is decided
    against them without changing their files; a full recompute decides everything again."""
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "e.yaml").write_text(
        textwrap.dedent("""
        sources:
          a: {path: raw/a}
        recipes:
          r: {sources: [a], dedup: {threshold: 0.8}}
    """)
    )
    exp = load_experiment(tmp_path / "exp")
    layout = Layout(tmp_path / "home")
    base = inspect.getsource(textwrap)  # a real module's source
    near = base.replace("whitespace", "blank space", 3)  # a near duplicate of it
    assert near != base
    other = inspect.getsource(inspect.getmodule(Path))  # unrelated
    pool = layout.pool_dir("r", "a")
    # the same id "1" in both shards names different documents
    write_parquet(_docs("a", [("1", base), ("2", other)]), pool / "s0.parquet")
    write_parquet(_docs("a", [("1", near), ("3", base.upper())]), pool / "s1.parquet")
    summary = materialize_dedup_shard(exp, layout, "r", "a", "s0")
    assert summary["documents"] == 2 and summary["survivors_kept"]
    assert summary["batch"]["batch_shards"] == 2  # every undecided shard, in one batch
    s1 = materialize_dedup_shard(exp, layout, "r", "a", "s1")
    assert s1["batch"] == "decided in an earlier batch" and s1["survivors_kept"]
    # exact (case-folded) copy and the near copy both point at the one kept survivor
    assert _decisions(layout) == {
        ("s1", "3"): ("exact_duplicate", "a/s0/1"),
        ("s1", "1"): ("near_duplicate", "a/s0/1"),
    }
    old = {p.name: digest(p) for p in layout.dedup_decisions_dir("r", "a").glob("*.parquet")}

    # a later shard whose near duplicate sorts first: it is dropped, the old survivor stays
    later = near.replace("paragraph", "section", 2)
    write_parquet(_docs("a", [("0", later)]), layout.pool_dir("r", "a") / "r0.parquet")
    s2 = materialize_dedup_shard(exp, layout, "r", "a", "r0")
    assert s2["batch"]["batch_shards"] == 1 and s2["batch"]["index_documents"] == 4
    assert s2["near_duplicates"] == 1
    assert _decisions(layout)[("r0", "0")] == ("near_duplicate", "a/s0/1")
    for p in layout.dedup_decisions_dir("r", "a").glob("s*.parquet"):
        assert digest(p) == old[p.name]  # existing decisions untouched

    # a full recompute is the global clustering: now the earliest key (r0/0) survives
    materialize_dedup_shard(exp, layout, "r", "a", "s0", full_recompute="again")
    assert _decisions(layout) == {
        ("s0", "1"): ("near_duplicate", "a/r0/0"),
        ("s1", "1"): ("near_duplicate", "a/r0/0"),
        ("s1", "3"): ("exact_duplicate", "a/r0/0"),
    }
    # the same token again does not clear the index a second time
    again = materialize_dedup_shard(exp, layout, "r", "a", "s1", full_recompute="again")
    assert again["batch"] == "decided in an earlier batch"

    # a pool shard that changed under an index whose other shards lean on it: a clear error
    write_parquet(_docs("a", [("0", other)]), layout.pool_dir("r", "a") / "r0.parquet")
    with pytest.raises(DedupIndexError, match="full-recompute"):
        materialize_dedup_shard(exp, layout, "r", "a", "r0")


# ---------------------------------------------------------------- mixtures and tokens

CODE_MODULES = [
    "json.decoder", "json.encoder", "textwrap", "string", "heapq", "bisect", "fnmatch", "glob",
    "queue", "sched", "shlex", "fractions", "calendar", "difflib", "csv", "statistics",
]  # fmt: skip
PROSE_MODULES = [
    "argparse", "ast", "collections", "dataclasses", "inspect", "logging", "pathlib", "shutil",
    "tempfile", "typing", "unittest", "zipfile",
]  # fmt: skip
LM_SOURCES = """
    sources:
      code: {path: raw/code}
      prose: {path: raw/prose}
    recipes:
      r: {sources: [code, prose]}
"""


def _module_texts(names: list[str], doc: bool) -> list[str]:
    import importlib

    mods = [importlib.import_module(n) for n in names]
    return [inspect.getdoc(m) or "" if doc else inspect.getsource(m) for m in mods]


def _lm_setup(tmp_path: Path, mixtures: str) -> tuple[Any, Layout]:
    """An experiment over two filtered domains of real text; ``code`` has clashing ids."""
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir(exist_ok=True)
    (exp_dir / "e.yaml").write_text(textwrap.dedent(LM_SOURCES) + textwrap.dedent(mixtures))
    layout = Layout(tmp_path / "home")
    code = _module_texts(CODE_MODULES, doc=False)
    half = len(code) // 2
    for shard, texts in (("s0", code[:half]), ("s1", code[half:])):  # ids 0.. in both shards
        rows = [(str(i), t) for i, t in enumerate(texts)]
        write_parquet(_docs("code", rows), layout.filtered_dir("r", "code") / f"{shard}.parquet")
    prose = [(f"p{i}", t) for i, t in enumerate(_module_texts(PROSE_MODULES, doc=True))]
    write_parquet(_docs("prose", prose), layout.filtered_dir("r", "prose") / "s0.parquet")
    return load_experiment(exp_dir, home=layout.home), layout


def _filtered_docs(layout: Layout, domain: str) -> dict[tuple[str, str], str]:
    """(shard, id) -> text of a filtered domain."""
    out = {}
    for path in sorted(layout.filtered_dir("r", domain).glob("*.parquet")):
        t = pa.parquet.read_table(path)
        for doc_id, text in zip(
            t.column("id").to_pylist(), t.column("text").to_pylist(), strict=True
        ):
            out[(path.stem, doc_id)] = text
    return out


def _in_rows(rows: np.ndarray, doc: list[int]) -> bool:
    """Whether some row equals a window of the document's tokens."""
    width = rows.shape[1]
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(doc), width)
    found = {w.tobytes() for w in windows.astype(rows.dtype)}
    return any(r.tobytes() in found for r in rows)


def test_natural_mixture_keeps_heldout_out_of_training(tmp_path: Path) -> None:
    exp, layout = _lm_setup(
        tmp_path,
        """
        mixtures:
          nat: {recipe: r, token_budget: 30000, seq_len: 32, heldout_fraction: 0.25,
                tokenizer: {vocab_size: 400, train_bytes: 100000}}
        """,
    )
    tok_summary = materialize_tokenizer(exp, layout, "nat")
    assert tok_summary["kind"] == "trained" and tok_summary["eos_id"] == 0
    mix = materialize_mixture(exp, layout, "nat")
    assert mix["strategy"] == "natural" and mix["encoded_shards"] == 3
    assert {"weights", "token_budget", "domains", "repeated", "over_repeated"} <= set(mix)
    assert mix["data_version"] and json.loads(
        (layout.mixture_dir("nat") / "mixture.json").read_text()
    )["weights"] == pytest.approx(mix["weights"])

    tok = tok_lib.load_tokenizer(layout.tokenizer_dir("nat") / "tokenizer.json")
    held = pa.parquet.read_table(layout.mixture_dir("nat") / "heldout.parquet").to_pylist()
    sel = pa.parquet.read_table(layout.mixture_dir("nat") / "selection.parquet").to_pylist()
    assert mix["heldout_documents"] == len(held) > 0
    held_keys = {(h["domain"], h["shard"], h["id"]) for h in held}
    sel_keys = {(s["domain"], s["shard"], s["id"]) for s in sel}
    assert not held_keys & sel_keys
    assert not {h["id"] for h in held} & {s["id"] for s in sel}  # not even a clashing id
    for domain in ("code", "prose"):  # available tokens: a direct encode of training documents
        docs = _filtered_docs(layout, domain)
        train = [t for (shard, i), t in docs.items() if (domain, shard, i) not in held_keys]
        assert mix["domains"][domain]["available_tokens"] == sum(
            len(tok.encode(t).ids) for t in train
        )
        for h in held:
            if h["domain"] == domain:
                assert docs[(h["shard"], h["id"])] == h["text"]
    total = sum(d["available_tokens"] for d in mix["domains"].values())
    assert mix["weights"]["code"] == pytest.approx(
        mix["domains"]["code"]["available_tokens"] / total
    )
    selected_shards = {(s["shard"], s["id"]) for s in sel if s["domain"] == "code"}
    assert {shard for shard, _ in selected_shards} == {"s0", "s1"}

    summary = materialize_tokens(exp, layout, "nat")
    assert summary["encoded_shards"] == 0 and summary["reused_shards"] == 3  # no second encode
    tf = TokenFile.open(layout.tokens_dir("nat"))
    rows = np.asarray(tf.tokens)
    assert tf.meta.domains == ["code", "prose"] and tf.meta.eos_id == tok.token_to_id(
        "<|endoftext|>"
    )
    assert tf.meta.tokenizer == str(layout.tokenizer_dir("nat") / "tokenizer.json")
    assert summary["tokens"] == rows.size == sum(summary["tokens_per_domain"].values())
    for domain in ("code", "prose"):
        d = summary["domains"][domain]
        assert (
            d["packed_tokens"] == int((tf.domains() == ["code", "prose"].index(domain)).sum()) * 33
        )
        assert d["selected_tokens"] == mix["domains"][domain]["selected_tokens"]
    # a document of >= 2 rows' worth of tokens that was packed fills at least one whole row
    long_held = [tok.encode(h["text"]).ids for h in held]
    long_held = [ids for ids in long_held if len(ids) >= 2 * rows.shape[1]]
    assert long_held
    assert not any(_in_rows(rows, ids) for ids in long_held)
    code_docs = _filtered_docs(layout, "code")
    trained = [tok.encode(code_docs[k]).ids for k in sorted(selected_shards)]
    assert any(_in_rows(rows, ids) for ids in trained if len(ids) >= 2 * rows.shape[1])


STRATEGY_MIXTURES = """
    mixtures:
      nat: {recipe: r, token_budget: 20000, seq_len: 32, heldout_fraction: 0.2,
            tokenizer: {vocab_size: 400, train_bytes: 100000}}
      uni: {recipe: r, strategy: uniform, token_budget: 20000, seq_len: 32,
            heldout_fraction: 0.2, tokenizer: {mixture: nat}}
      temp: {recipe: r, strategy: temperature, temperature: 3.0, token_budget: 20000,
             seq_len: 32, heldout_fraction: 0.2, tokenizer: {mixture: nat}}
      ent: {recipe: r, strategy: entropy, token_budget: 20000, seq_len: 32,
            heldout_fraction: 0.2, tokenizer: {mixture: nat}}
      soft: {recipe: r, strategy: entropy, entropy_normalization: softmax, token_budget: 20000,
             seq_len: 32, heldout_fraction: 0.2, tokenizer: {mixture: nat}}
      dor: {recipe: r, strategy: doremi, doremi: {reference: nat}, token_budget: 200000,
            seq_len: 32, heldout_fraction: 0.2, tokenizer: {mixture: nat}}
"""


def test_strategies_share_one_tokenizer_and_cache(tmp_path: Path) -> None:
    exp, layout = _lm_setup(tmp_path, STRATEGY_MIXTURES)
    with pytest.raises(ValueError, match="shares mixture 'nat'.s tokenizer"):
        materialize_tokenizer(exp, layout, "uni")
    materialize_tokenizer(exp, layout, "nat")
    nat = materialize_mixture(exp, layout, "nat")
    assert nat["encoded_shards"] == 3
    available = {d: p["available_tokens"] for d, p in nat["domains"].items()}

    uni = materialize_mixture(exp, layout, "uni")
    assert uni["encoded_shards"] == 0 and uni["reused_shards"] == 3  # the shared cache
    assert uni["weights"] == {"code": 0.5, "prose": 0.5}
    assert uni["domains"]["prose"]["target_tokens"] == 10000
    assert {d: p["available_tokens"] for d, p in uni["domains"].items()} == available

    temp = materialize_mixture(exp, layout, "temp")
    assert temp["temperature"] == 3.0
    assert temp["weights"] == pytest.approx(
        {
            d: n ** (1 / 3) / sum(m ** (1 / 3) for m in available.values())
            for d, n in available.items()
        }
    )
    assert nat["weights"]["prose"] < temp["weights"]["prose"] < 0.5

    # BiMix entropy: recomputed here from a direct encode of the training documents
    tok = tok_lib.load_tokenizer(layout.tokenizer_dir("nat") / "tokenizer.json")
    held = pa.parquet.read_table(layout.mixture_dir("nat") / "heldout.parquet").to_pylist()
    held_keys = {(h["domain"], h["shard"], h["id"]) for h in held}
    entropy = {}
    for domain in ("code", "prose"):
        docs = _filtered_docs(layout, domain)
        ids = [tok.encode(t).ids for (s, i), t in docs.items() if (domain, s, i) not in held_keys]
        offsets = np.cumsum([0] + [len(x) for x in ids])
        entropy[domain] = mix_lib.conditional_entropy(np.concatenate(ids), offsets)
    ent = materialize_mixture(exp, layout, "ent")
    assert ent["entropy"] == pytest.approx(entropy) and ent["entropy_normalization"] == "linear"
    assert 0 < entropy["prose"] < np.log2(400) and entropy["code"] != entropy["prose"]
    total = sum(entropy.values())
    assert ent["weights"] == pytest.approx({d: h / total for d, h in entropy.items()})
    soft = materialize_mixture(exp, layout, "soft")
    z = sum(np.exp(h) for h in entropy.values())
    assert soft["weights"] == pytest.approx({d: np.exp(h) / z for d, h in entropy.items()})

    weights_file = layout.doremi_dir("dor") / "weights.json"
    with pytest.raises(
        FileNotFoundError,
        match=r"weights\.json is missing: materialize the asset doremi/dor/weights",
    ):
        materialize_mixture(exp, layout, "dor")
    weights_file.parent.mkdir(parents=True)
    weights_file.write_text(json.dumps({"weights": {"code": 0.2, "prose": 0.6}}))
    dor = materialize_mixture(exp, layout, "dor")
    assert dor["weights"] == pytest.approx({"code": 0.25, "prose": 0.75})
    assert dor["over_repeated"] and set(dor["over_repeated"]) <= set(dor["repeated"])
    assert all(dor["domains"][d]["repetition"] > 4 for d in dor["over_repeated"])

    toks = materialize_tokens(exp, layout, "soft")
    meta = TokenFile.open(layout.tokens_dir("soft")).meta
    assert meta.tokenizer == str(layout.tokenizer_dir("nat") / "tokenizer.json")
    assert toks["encoded_shards"] == 0 and toks["tokenizer"] == meta.tokenizer

    # a changed shard: the next mixture re-encodes that shard only, and drops its old entry
    code_s1 = layout.filtered_dir("r", "code") / "s1.parquet"
    write_parquet(_docs("code", [("0", _module_texts(["tokenize"], doc=False)[0])]), code_s1)
    again = materialize_mixture(exp, layout, "uni")
    assert again["encoded_shards"] == 1 and again["reused_shards"] == 2
    entries = list((layout.encoded_dir("nat") / "recipe=r").rglob("*.npz"))
    assert len(entries) == 3


def test_tokenizer_from_a_file(tmp_path: Path) -> None:
    src = tmp_path / "home" / "tokenizers" / "tok.json"  # relative paths: under the home
    src.parent.mkdir(parents=True)
    tok_lib.train_tokenizer(_module_texts(PROSE_MODULES, doc=True), 300, 2, src, eos_token="</s>")
    exp, layout = _lm_setup(
        tmp_path,
        """
        mixtures:
          own: {recipe: r, token_budget: 5000, seq_len: 16,
                tokenizer: {file: tokenizers/tok.json, eos_token: "</s>"}}
          plain: {recipe: r, token_budget: 5000, seq_len: 16,
                  tokenizer: {file: tokenizers/tok.json}}
          shared: {recipe: r, strategy: uniform, token_budget: 5000, seq_len: 16,
                   tokenizer: {mixture: own}}
        """,
    )
    with pytest.raises(ValueError, match=r"tok\.json has no token '<\|endoftext\|>'"):
        materialize_tokenizer(exp, layout, "plain")
    assert not (layout.tokenizer_dir("plain") / "tokenizer.json").exists()

    summary = materialize_tokenizer(exp, layout, "own")
    dest = layout.tokenizer_dir("own") / "tokenizer.json"
    assert summary["kind"] == "file" and summary["file"] == str(src)
    assert dest.read_bytes() == src.read_bytes() and summary["vocab_size"] == 300
    materialize_mixture(exp, layout, "own")
    materialize_tokens(exp, layout, "own")
    own = TokenFile.open(layout.tokens_dir("own"))
    eos = tok_lib.load_tokenizer(dest).token_to_id("</s>")
    assert own.meta.eos_id == eos and (np.asarray(own.tokens) == eos).any()
    shared = materialize_mixture(exp, layout, "shared")
    assert shared["encoded_shards"] == 0 and shared["tokenizer"] == str(dest)
    materialize_tokens(exp, layout, "shared")
    assert TokenFile.open(layout.tokens_dir("shared")).meta.eos_id == eos
