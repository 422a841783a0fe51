"""``tokenizer/<mixture>``, ``mixture/<mixture>`` and ``tokens/<mixture>``: filtered pools to
training data.

A mixture reads its tokenizer from its tokenizer owner (itself, or the mixture named in
``tokenizer.mixture``); token ids come from the owner's encoded cache
(:mod:`corpuslab.lmdata.encoded`), so each filtered shard is encoded once per tokenizer.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from corpuslab.arrow import pc
from corpuslab.compute import Compute
from corpuslab.declarations import Experiment
from corpuslab.fileio import digest, read_json, write_json, write_parquet
from corpuslab.layout import Layout
from corpuslab.lmdata import encoded as enc_lib
from corpuslab.lmdata import mixture as mix_lib
from corpuslab.lmdata import tokenize as tok_lib
from corpuslab.lmdata.tokenfile import write_token_file

log = logging.getLogger(__name__)

HELDOUT_SCHEMA = pa.schema(
    [("id", pa.string()), ("domain", pa.string()), ("shard", pa.string()), ("text", pa.string())]
)


def tokenizer_path(exp: Experiment, layout: Layout, mixture: str) -> Path:
    """The ``tokenizer.json`` a mixture uses: its tokenizer owner's asset."""
    return layout.tokenizer_dir(exp.tokenizer_owner(mixture)) / "tokenizer.json"


def eos_token(exp: Experiment, mixture: str) -> str:
    """The document separator: the mixture's ``tokenizer.eos_token``, or, when it shares
    another mixture's tokenizer without declaring one, the owner's (the tokenizer's own)."""
    tdecl = exp.mixtures[mixture].tokenizer
    if tdecl.mixture and "eos_token" not in tdecl.model_fields_set:
        return exp.mixtures[exp.tokenizer_owner(mixture)].tokenizer.eos_token
    return tdecl.eos_token


def encode_mixture_pools(
    exp: Experiment, layout: Layout, mixture: str, compute: Compute | None = None
) -> enc_lib.EncodedPools:
    """Cache entries of every filtered shard of the mixture's domains (encoding what is new,
    one shard a task through ``compute``: local threads by default, or Ray tasks)."""
    mdecl = exp.mixtures[mixture]
    pools = {d: layout.filtered_dir(mdecl.recipe, d) for d in exp.mixture_domains(mixture)}
    cache_dir = layout.encoded_dir(exp.tokenizer_owner(mixture)) / f"recipe={mdecl.recipe}"
    return enc_lib.encode_pools(
        tokenizer_path(exp, layout, mixture), pools, cache_dir, compute=compute
    )


def _heldout_mask(ids: list[str], fraction: float, seed: int) -> np.ndarray:
    return np.fromiter(
        (mix_lib.is_heldout(i, fraction, seed) for i in ids), dtype=bool, count=len(ids)
    )


def materialize_tokenizer(exp: Experiment, layout: Layout, mixture: str) -> dict:
    """The mixture's tokenizer: a user's file (checked, copied) or a BPE trained on its text.

    Training sees only training documents (held-out ones never). A mixture that shares another
    mixture's tokenizer (``tokenizer.mixture``) has no tokenizer of its own to materialize.
    """
    mdecl = exp.mixtures[mixture]
    tdecl = mdecl.tokenizer
    if tdecl.mixture:
        raise ValueError(
            f"mixture {mixture!r} shares mixture {tdecl.mixture!r}'s tokenizer: it has no "
            f"tokenizer asset of its own (materialize tokenizer/{tdecl.mixture})"
        )
    path = layout.tokenizer_dir(mixture) / "tokenizer.json"
    src = tdecl.resolve_file(layout.home)
    if src is not None:
        tok = tok_lib.install_tokenizer_file(src, path, tdecl.eos_token)
        return {
            "kind": "file",
            "file": str(src),
            "path": layout.url(path),
            "vocab_size": tok_lib.vocab_size(tok),
            "eos_token": tdecl.eos_token,
            "eos_id": tok_lib.eos_id(tok, tdecl.eos_token, path),
            "data_version": digest(path),
        }
    domains = exp.mixture_domains(mixture)
    per_domain = tdecl.train_bytes // max(1, len(domains))
    sample: list[str] = []
    used: dict[str, int] = {}
    for domain in domains:
        n = 0
        for shard in enc_lib.pool_shards(layout.filtered_dir(mdecl.recipe, domain)).values():
            if n >= per_domain:
                break
            t = pq.read_table(shard, columns=["id", "text"])
            held = _heldout_mask(t.column("id").to_pylist(), mdecl.heldout_fraction, mdecl.seed)
            for text, is_held in zip(t.column("text").to_pylist(), held, strict=True):
                if n >= per_domain:
                    break
                if not is_held:
                    sample.append(text)
                    n += len(text.encode("utf-8"))
        used[domain] = n
    if not sample:
        raise ValueError(f"mixture {mixture!r}: no training documents to train a tokenizer on")
    tok = tok_lib.train_tokenizer(
        sample, tdecl.vocab_size, tdecl.min_frequency, path, eos_token=tdecl.eos_token
    )
    return {
        "kind": "trained",
        "path": layout.url(path),
        "vocab_size": tok_lib.vocab_size(tok),
        "eos_token": tdecl.eos_token,
        "eos_id": tok_lib.eos_id(tok, tdecl.eos_token, path),
        "train_bytes": used,
        "data_version": digest(path),
    }


def doremi_weights(layout: Layout, mixture: str) -> dict[str, float]:
    """Weights written by the ``doremi/<mixture>/weights`` asset (domain -> weight)."""
    path = layout.doremi_dir(mixture) / "weights.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"mixture {mixture!r} uses strategy 'doremi' but {path} is missing: "
            f"materialize the asset doremi/{mixture}/weights first"
        )
    weights = read_json(path).get("weights")
    if not isinstance(weights, dict):
        raise ValueError(f"{path} has no 'weights' object (domain -> weight)")
    return {d: float(w) for d, w in weights.items()}


def materialize_mixture(
    exp: Experiment, layout: Layout, mixture: str, compute: Compute | None = None
) -> dict:
    """Domain weights by the declared strategy and the documents that fill the token budget.

    Token counts (and, for ``entropy``, the bigram statistics) come from the encoded cache
    of the training documents; held-out documents are set aside with their text.
    """
    mdecl = exp.mixtures[mixture]
    domains = exp.mixture_domains(mixture)
    cache = encode_mixture_pools(exp, layout, mixture, compute)
    need_tokens = mdecl.strategy == "entropy"
    doc_tokens: dict[str, np.ndarray] = {}
    train_shard: dict[str, pa.Array] = {}
    train_id: dict[str, pa.Array] = {}
    entropy: dict[str, float] = {}
    held_tables: list[pa.Table] = []
    for domain in domains:
        shards = cache.load(domain, tokens=need_tokens)
        counts, shard_col, id_col, train_docs = [], [], [], []
        base = 0
        for s in shards:
            ids = s.ids.tolist()
            held = _heldout_mask(ids, mdecl.heldout_fraction, mdecl.seed)
            keep = np.flatnonzero(~held)
            counts.append(s.doc_tokens[keep])
            train_docs.append(keep + base)
            base += len(ids)
            shard_col.append(pa.array([s.shard] * len(keep), pa.string()))
            id_col.append(pa.array(s.ids[keep], pa.string()))
            if held.any():
                src = layout.filtered_dir(mdecl.recipe, domain) / f"{s.shard}.parquet"
                t = pq.read_table(src, columns=["id", "text"]).take(np.flatnonzero(held))
                if t.column("id").to_pylist() != s.ids[held].tolist():
                    raise RuntimeError(f"{src} changed while the mixture was being built: rerun")
                n = t.num_rows
                held_tables.append(
                    pa.table(
                        {
                            "id": t.column("id"),
                            "domain": pa.array([domain] * n, pa.string()),
                            "shard": pa.array([s.shard] * n, pa.string()),
                            "text": t.column("text"),
                        },
                        schema=HELDOUT_SCHEMA,
                    )
                )
        doc_tokens[domain] = np.concatenate(counts) if counts else np.zeros(0, np.int64)
        train_shard[domain] = (
            pa.concat_arrays(shard_col) if shard_col else pa.array([], pa.string())
        )
        train_id[domain] = pa.concat_arrays(id_col) if id_col else pa.array([], pa.string())
        if need_tokens:
            tokens, offsets, _ = enc_lib.concat_shards(shards)
            docs = np.concatenate(train_docs) if train_docs else np.zeros(0, np.int64)
            flat, flat_offsets = enc_lib.gather_documents(tokens, offsets, docs)
            entropy[domain] = mix_lib.conditional_entropy(flat, flat_offsets)
    available = {d: int(v.sum()) for d, v in doc_tokens.items()}
    summary: dict[str, Any] = {"strategy": mdecl.strategy}
    learned = None
    if mdecl.strategy == "doremi":
        learned = doremi_weights(layout, mixture)
        summary["doremi_weights_file"] = str(layout.doremi_dir(mixture) / "weights.json")
    weights = mix_lib.strategy_weights(
        mdecl.strategy,
        domains,
        available,
        weights=mdecl.weights,
        temperature=mdecl.temperature,
        entropy=entropy if need_tokens else None,
        entropy_normalization=mdecl.entropy_normalization,
        learned=learned,
    )
    if mdecl.strategy == "temperature":
        summary["temperature"] = mdecl.temperature
    if mdecl.strategy == "entropy":
        summary["entropy"] = entropy
        summary["entropy_normalization"] = mdecl.entropy_normalization
    plan = mix_lib.plan_mixture(doc_tokens, weights, mdecl.token_budget, mdecl.seed)
    for domain, factor in plan.repeated_domains.items():
        log.warning(
            "mixture %s: domain %s repeated %.2fx to meet its share of the budget",
            mixture,
            domain,
            factor,
        )
    for domain, factor in plan.over_repeated_domains.items():
        log.warning(
            "mixture %s: domain %s repeated %.2fx, beyond the ~%g epochs that still help",
            mixture,
            domain,
            factor,
            mix_lib.MAX_USEFUL_EPOCHS,
        )
    mdir = layout.mixture_dir(mixture)
    parts = []
    for domain, run in itertools.groupby(plan.selection, key=lambda x: x[0]):
        idx = pa.array([i for _, i in run], pa.int64())
        n = len(idx)
        parts.append(
            pa.table(
                {
                    "domain": pa.array([domain] * n, pa.string()),
                    "shard": train_shard[domain].take(idx),
                    "id": train_id[domain].take(idx),
                }
            )
        )
    schema = pa.schema([("domain", pa.string()), ("shard", pa.string()), ("id", pa.string())])
    selection = pa.concat_tables(parts) if parts else schema.empty_table()
    write_parquet(selection, mdir / "selection.parquet")
    heldout = pa.concat_tables(held_tables) if held_tables else HELDOUT_SCHEMA.empty_table()
    write_parquet(heldout, mdir / "heldout.parquet")
    summary |= {
        "weights": plan.weights,
        "token_budget": mdecl.token_budget,
        "domains": {d: vars(p) for d, p in plan.domains.items()},
        "repeated": plan.repeated_domains,
        "over_repeated": plan.over_repeated_domains,
        "heldout_documents": heldout.num_rows,
        "tokenizer": layout.url(tokenizer_path(exp, layout, mixture)),
        "encoded_shards": len(cache.encoded),
        "reused_shards": cache.reused,
    }
    write_json(summary, mdir / "mixture.json")
    summary["data_version"] = digest(mdir / "selection.parquet", mdir / "heldout.parquet")
    return summary


def selection_keys(selection: pa.Table) -> dict[str, pa.Array]:
    """Domain -> cache keys (shard + id) of ``selection.parquet``, in sampling order."""
    keys = pc.binary_join_element_wise(
        selection.column("shard"), selection.column("id"), enc_lib.KEY_SEP
    )
    domain = selection.column("domain")
    return {
        d: pc.filter(keys, pc.equal(domain, d)).combine_chunks()
        for d in pc.unique(domain).to_pylist()
    }


def materialize_tokens(
    exp: Experiment, layout: Layout, mixture: str, compute: Compute | None = None
) -> dict:
    """Pack the selected documents' cached ids into shuffled EOS-separated rows of one domain.

    No text is encoded here unless a shard's cache entry is missing or stale.
    """
    mdecl = exp.mixtures[mixture]
    tok_path = tokenizer_path(exp, layout, mixture)
    tok = tok_lib.load_tokenizer(tok_path)
    eos_tok = eos_token(exp, mixture)
    eos = tok_lib.eos_id(tok, eos_tok, tok_path)
    vocab = tok_lib.vocab_size(tok)
    mdir = layout.mixture_dir(mixture)
    if not (mdir / "selection.parquet").is_file():
        raise FileNotFoundError(
            f"{mdir / 'selection.parquet'} is missing: materialize mixture/{mixture} first"
        )
    chosen = selection_keys(pq.read_table(mdir / "selection.parquet"))
    empty = pa.array([], pa.string())
    # every domain of the mixture gets an index (stable for per-domain losses), even if unused
    selection = {d: chosen.get(d, empty) for d in exp.mixture_domains(mixture)}
    cache = encode_mixture_pools(exp, layout, mixture, compute)
    rows, dom, packed, selected = enc_lib.pack_selection(
        cache, selection, eos, mdecl.seq_len, mdecl.seed
    )
    names = sorted(selection)
    tdir = layout.tokens_dir(mixture)
    write_token_file(tdir, rows, dom, vocab, eos, names, tok_path)
    mix_path = mdir / "mixture.json"
    plan = read_json(mix_path).get("domains", {}) if mix_path.is_file() else {}
    summary = {
        "sequences": int(rows.shape[0]),
        "seq_len": mdecl.seq_len,
        "tokens": int(rows.size),
        "tokens_per_domain": packed,
        "domains": {
            d: {
                "available_tokens": plan.get(d, {}).get("available_tokens"),
                "selected_tokens": selected[d],
                "packed_tokens": packed[d],
            }
            for d in names
        },
        "tokenizer": layout.url(tok_path),
        "eos_token": eos_tok,
        "encoded_shards": len(cache.encoded),
        "reused_shards": cache.reused,
        "path": layout.url(tdir),
    }
    write_json(summary, tdir / "summary.json")
    summary["data_version"] = digest(tdir / "train.bin")
    return summary


def read_heldout(layout: Layout, mixture: str, max_docs: int) -> dict[str, list[str]]:
    """Up to ``max_docs`` held-out texts per domain (never trained on) for evaluation."""
    t = pq.read_table(layout.mixture_dir(mixture) / "heldout.parquet", columns=["domain", "text"])
    out: dict[str, list[str]] = {}
    for domain, text in zip(
        t.column("domain").to_pylist(), t.column("text").to_pylist(), strict=True
    ):
        bucket = out.setdefault(domain, [])
        if len(bucket) < max_docs:
            bucket.append(text)
    return out
