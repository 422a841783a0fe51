"""``corpus/<source>``: one raw shard normalized to Parquet, malformed records quarantined.

Its ``documents_conserved`` check holds what was written (documents, and quarantine entries
read back from their files) plus the records skipped as no documents against an independent
count of the raw file's records (:mod:`corpuslab.ingest.census`): any shortfall, and any cut
or corrupt stream, that no quarantine reason explains fails it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from corpuslab.arrow import pc
from corpuslab.declarations import Experiment
from corpuslab.fileio import digest, read_parquet, write_jsonl, write_parquet
from corpuslab.ingest.census import count_records, reconcile
from corpuslab.ingest.readers import CorpusError, list_shards, read_raw_shard
from corpuslab.ingest.storage import StorageError, open_fs
from corpuslab.layout import Layout
from corpuslab.stages.common import decisions_table


def source_fs(
    exp: Experiment, layout: Layout, source: str, storage: Mapping[str, Any] | None = None
) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a source: local, or S3 with the resource's and YAML settings."""
    decl = exp.sources[source]
    return open_fs(decl.resolve(layout), **{**(storage or {}), **decl.storage_options()})


def source_shards(
    exp: Experiment,
    layout: Layout,
    source: str,
    storage: Mapping[str, Any] | None = None,
    skipped: list[str] | None = None,
) -> dict[str, Path | str]:
    """Shard key -> raw file (or folder) of a source, as the shard partitions name them.

    Files whose names are not valid UTF-8 are left out and appended to ``skipped`` if given.
    """
    decl = exp.sources[source]
    try:
        fs, path = source_fs(exp, layout, source, storage)
        return list_shards(path, decl.format, fs=fs, skipped=skipped)
    except (CorpusError, StorageError) as exc:
        raise CorpusError(f"source {source!r} ({exp.where('sources', source)}): {exc}") from None


def materialize_corpus_shard(
    exp: Experiment,
    layout: Layout,
    source: str,
    shard: str,
    storage: Mapping[str, Any] | None = None,
) -> dict:
    """Normalize one raw shard into Parquet; malformed records go to quarantine with reasons."""
    shards = source_shards(exp, layout, source, storage)
    if shard not in shards:
        raise CorpusError(
            f"source {source!r} has no shard {shard!r} under "
            f"{exp.sources[source].resolve(layout)}; "
            f"known shards: {', '.join(sorted(shards)) or '(none)'}"
        )
    fs, _ = source_fs(exp, layout, source, storage)
    result = read_raw_shard(shards[shard], source, fs=fs, shard=shard)
    census = count_records(shards[shard], fs=fs)  # a pass of its own over the raw bytes
    out = layout.corpus_dir(source) / f"{shard}.parquet"
    qpath = layout.quarantine_dir(source) / f"{shard}.jsonl"
    write_jsonl(result.quarantined, qpath)
    write_parquet(result.table, out)
    ids = result.table.column("id").to_pylist()
    records = [q for q in result.quarantined if q["scope"] == "record"]
    q_ids = [f"{q['file']}:{q['line']}" for q in records]
    reasons = [q["reason"].split(":", 1)[0] for q in records]
    decisions = pa.concat_tables(
        [
            decisions_table(ids, shard, [None] * len(ids)),
            decisions_table(q_ids, shard, [("read", r) for r in reasons]),
        ]
    )
    write_parquet(decisions, layout.decisions_dir("corpus", source) / f"{shard}.parquet")
    # the check reads back what was written rather than trusting the counters above
    written = read_parquet(out, columns=["id"]).num_rows
    with open(qpath, encoding="utf-8") as fh:
        entries = [json.loads(line) for line in fh]
    skipped = sum(result.skipped.values())
    check = reconcile(census, written, entries, skipped)
    flags = [q["reason"] for q in entries if q.get("scope") == "file"]
    return {
        "path": layout.url(out),
        "raw_file": str(shards[shard]),
        "records": census.records,  # counted in the raw bytes, not by the reader
        "records_unit": census.unit,
        "raw_stream": census.ended if not census.detail else f"{census.ended}: {census.detail}",
        "accounted": check.accounted,
        "documents": written,
        "quarantined": sum(1 for q in entries if q.get("scope") == "record"),
        "quarantine_reasons": dict(Counter(reasons)),
        "file_flags": flags,
        "skipped": dict(result.skipped),
        "text_bytes": int(
            pc.sum(pc.binary_length(result.table.column("text").cast(pa.binary()))).as_py() or 0
        ),
        "conserved": check.conserved,
        "conservation": check.explanation,
        "data_version": digest(out, qpath),
    }
