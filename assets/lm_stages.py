"""Stage functions from filtered pools to training data and evaluation (no Dagster here)."""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from assets.stages import file_digest, read_json, write_json
from corpuslab import mixture as mix_lib
from corpuslab import tokenize as tok_lib
from corpuslab.config import Experiment
from corpuslab.documents import read_parquet_dir, write_parquet
from corpuslab.tokenfile import write_token_file

log = logging.getLogger(__name__)


def _split_domain(
    exp: Experiment, layout: Any, mixture: str, domain: str
) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train ids, train texts, held-out ids, held-out texts) of one domain's filtered pool."""
    mdecl = exp.mixtures[mixture]
    t = read_parquet_dir(layout.filtered_dir(mdecl.recipe, domain), columns=["id", "text"])
    ids, texts = t.column("id").to_pylist(), t.column("text").to_pylist()
    train_i, held_i = [], []
    for i, d in enumerate(ids):
        (held_i if mix_lib.is_heldout(d, mdecl.heldout_fraction, mdecl.seed) else train_i).append(i)
    return (
        [ids[i] for i in train_i],
        [texts[i] for i in train_i],
        [ids[i] for i in held_i],
        [texts[i] for i in held_i],
    )


def materialize_tokenizer(exp: Experiment, layout: Any, mixture: str) -> dict:
    """Byte-level BPE trained on the mixture's training documents (held-out ones never seen)."""
    mdecl = exp.mixtures[mixture]
    budget = mdecl.tokenizer.train_bytes
    domains = exp.mixture_domains(mixture)
    per_domain = budget // max(1, len(domains))
    sample: list[str] = []
    used: dict[str, int] = {}
    for domain in domains:
        _, texts, _, _ = _split_domain(exp, layout, mixture, domain)
        n = 0
        for text in texts:
            if n >= per_domain:
                break
            sample.append(text)
            n += len(text.encode("utf-8"))
        used[domain] = n
    if not sample:
        raise ValueError(f"mixture {mixture!r}: no training documents to train a tokenizer on")
    path = layout.tokenizer_dir(mixture) / "tokenizer.json"
    tok = tok_lib.train_tokenizer(
        sample, mdecl.tokenizer.vocab_size, mdecl.tokenizer.min_frequency, path
    )
    return {
        "path": str(path),
        "vocab_size": tok.get_vocab_size(),
        "train_bytes": used,
        "data_version": file_digest(path),
    }


def materialize_mixture(exp: Experiment, layout: Any, mixture: str) -> dict:
    """Domain weights (natural or manual) and the documents that fill the token budget."""
    mdecl = exp.mixtures[mixture]
    tok = tok_lib.load_tokenizer(layout.tokenizer_dir(mixture) / "tokenizer.json")
    domains = exp.mixture_domains(mixture)
    doc_tokens: dict[str, list[int]] = {}
    train_ids: dict[str, list[str]] = {}
    held_rows: list[dict[str, str]] = []
    for domain in domains:
        ids, texts, hids, htexts = _split_domain(exp, layout, mixture, domain)
        train_ids[domain] = ids
        doc_tokens[domain] = tok_lib.count_tokens(tok, texts)
        held_rows += [
            {"id": i, "domain": domain, "text": t} for i, t in zip(hids, htexts, strict=True)
        ]
    available = {d: sum(v) for d, v in doc_tokens.items()}
    if mdecl.strategy == "natural":
        weights = mix_lib.natural_weights(available)
    else:
        weights = mix_lib.manual_weights(mdecl.weights or {}, domains)
    plan = mix_lib.plan_mixture(doc_tokens, weights, mdecl.token_budget, mdecl.seed)
    for domain, factor in plan.repeated_domains.items():
        log.warning(
            "mixture %s: domain %s repeated %.2fx to meet its share of the budget",
            mixture,
            domain,
            factor,
        )
    mdir = layout.mixture_dir(mixture)
    selection = pa.table(
        {
            "domain": [d for d, _ in plan.selection],
            "id": [train_ids[d][i] for d, i in plan.selection],
        }
    )
    write_parquet(selection, mdir / "selection.parquet")
    write_parquet(
        pa.Table.from_pylist(
            held_rows,
            schema=pa.schema([("id", pa.string()), ("domain", pa.string()), ("text", pa.string())]),
        ),
        mdir / "heldout.parquet",
    )
    summary = {
        "strategy": mdecl.strategy,
        "weights": plan.weights,
        "token_budget": mdecl.token_budget,
        "domains": {d: vars(p) for d, p in plan.domains.items()},
        "repeated": plan.repeated_domains,
        "heldout_documents": len(held_rows),
    }
    write_json(summary, mdir / "mixture.json")
    summary["data_version"] = file_digest(mdir / "selection.parquet", mdir / "heldout.parquet")
    return summary


def materialize_tokens(exp: Experiment, layout: Any, mixture: str) -> dict:
    """Encode the selected documents and pack shuffled fixed-length rows into a memmap file."""
    mdecl = exp.mixtures[mixture]
    tok_path = layout.tokenizer_dir(mixture) / "tokenizer.json"
    tok = tok_lib.load_tokenizer(tok_path)
    mdir = layout.mixture_dir(mixture)
    sel = pq.read_table(mdir / "selection.parquet")
    texts_by_id: dict[str, str] = {}
    for domain in exp.mixture_domains(mixture):
        t = read_parquet_dir(layout.filtered_dir(mdecl.recipe, domain), columns=["id", "text"])
        texts_by_id.update(
            zip(t.column("id").to_pylist(), t.column("text").to_pylist(), strict=True)
        )
    by_domain: dict[str, list[str]] = {}
    for domain, doc_id in zip(
        sel.column("domain").to_pylist(), sel.column("id").to_pylist(), strict=True
    ):
        by_domain.setdefault(domain, []).append(texts_by_id[doc_id])
    rows, dom, kept = tok_lib.pack_sequences(tok, by_domain, mdecl.seq_len, mdecl.seed)
    names = sorted(by_domain)
    tdir = layout.tokens_dir(mixture)
    write_token_file(
        tdir, rows, dom, tok.get_vocab_size(), tok.token_to_id(tok_lib.EOS), names, tok_path
    )
    summary = {
        "sequences": int(rows.shape[0]),
        "seq_len": mdecl.seq_len,
        "tokens": int(rows.size),
        "tokens_per_domain": kept,
        "path": str(tdir),
    }
    write_json(summary, tdir / "summary.json")
    summary["data_version"] = file_digest(tdir / "train.bin")
    return summary


def read_heldout(layout: Any, mixture: str, max_docs: int) -> dict[str, list[str]]:
    t = pq.read_table(layout.mixture_dir(mixture) / "heldout.parquet")
    out: dict[str, list[str]] = {}
    for domain, text in zip(
        t.column("domain").to_pylist(), t.column("text").to_pylist(), strict=True
    ):
        bucket = out.setdefault(domain, [])
        if len(bucket) < max_docs:
            bucket.append(text)
    return out


__all__ = [
    "materialize_tokenizer",
    "materialize_mixture",
    "materialize_tokens",
    "read_heldout",
    "read_json",
]
