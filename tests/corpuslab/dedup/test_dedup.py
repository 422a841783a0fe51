"""MinHash near-dedup and exact dedup on real standard-library text."""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH
from pydantic import ValidationError

from corpuslab import dedup
from corpuslab.dedup import (  # noqa: F401 - patched below as dedup.lsh, dedup.minhash
    DedupParams,
    DedupResult,
    compute_signatures,
    exact_duplicates,
    find_duplicates_from_signatures,
    optimal_lsh_params,
    shard_signatures,
    shingles,
)
from corpuslab.dedup.cache import load_signatures, save_signatures


def signatures(ids: list[str], texts: list[str], params: DedupParams) -> dict[str, LeanMinHash]:
    """Our signatures as datasketch ``LeanMinHash`` objects keyed by id (the reference's type)."""
    sigs = compute_signatures(ids, texts, params)
    return {
        doc_id: LeanMinHash(seed=params.seed, hashvalues=row, scheme=params.scheme)
        for doc_id, row in zip(ids, sigs, strict=True)
    }


def find_duplicates(ids: list[str], texts: list[str], params: DedupParams) -> DedupResult:
    """Signatures then clusters, in one call."""
    return find_duplicates_from_signatures(ids, compute_signatures(ids, texts, params), params)


STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _source(name: str) -> str:
    return (STDLIB / name).read_text(encoding="utf-8")


def _jaccard(a: str, b: str, ngram: int = 5) -> float:
    sa, sb = shingles(a, ngram), shingles(b, ngram)
    return len(sa & sb) / len(sa | sb)


@pytest.fixture(scope="module")
def corpus() -> dict[str, str]:
    """Unrelated stdlib modules and reference topics, plus an edited copy of textwrap.py."""
    textwrap_src = _source("textwrap.py")
    edited = textwrap_src.replace("width", "breadth", 3).replace("paragraph", "passage", 2)
    assert edited != textwrap_src
    docs = {
        "b-textwrap": textwrap_src,
        "a-textwrap-edited": edited,
        "heapq": _source("heapq.py"),
        "bisect": _source("bisect.py"),
        "shlex": _source("shlex.py"),
        "json-decoder": _source("json/decoder.py"),
        "topic-for": topics["for"],
        "topic-while": topics["while"],
        "topic-with": topics["with"],
        "topic-numbers": topics["numbers"],
    }
    return docs


@pytest.fixture(scope="module")
def mixed_texts() -> dict[str, str]:
    """Real text that exercises every path: non-ASCII words, >55-byte shingles, short, empty."""
    docs = {
        "casefix": _source("re/_casefix.py"),  # hundreds of non-ASCII letters
        "shlex": _source("shlex.py"),  # ASCII and Latin-1 letters in one string
        "topic-strings": topics["strings"],  # typographic quotes in prose
        "topic-assert": topics["assert"],
        "codecs": _source("codecs.py"),
        "short": "Too short.",
        "empty": "",
        "symbols": "--- *** ...",
    }
    words = [w for text in docs.values() for w in dedup.minhash.normalize_words(text)]
    assert any(not w.isascii() for w in words)
    longest = max(len(" ".join(words[i : i + 5]).encode()) for i in range(len(words) - 4))
    assert longest > 55  # some shingles take more than one SHA-1 block
    return docs


def test_shingles_normalize_case_punctuation_and_short_texts():
    assert shingles("Hello,   World!  foo bar baz", 5) == shingles("hello world foo bar baz", 5)
    assert shingles("hello world foo bar baz", 5) == {b"hello world foo bar baz"}
    assert shingles("Too short.", 5) == {b"too short"}
    assert len(shingles("one two three four five six", 5)) == 2


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_equal_datasketch_minhash(mixed_texts, scheme):
    params = DedupParams(num_perm=64, seed=7, scheme=scheme)
    ids, texts = list(mixed_texts), list(mixed_texts.values())
    sigs = compute_signatures(ids, texts, params)
    assert sigs.shape == (len(texts), 64) and sigs.dtype == np.uint64
    theirs = []
    for text in texts:
        m = MinHash(num_perm=64, seed=7, scheme=scheme)
        m.update_batch(list(shingles(text, params.ngram)))
        theirs.append(m)
        assert np.array_equal(m.hashvalues.astype(np.uint64), sigs[len(theirs) - 1])
    # LeanMinHash built from our values estimates exactly what datasketch's own objects do
    ours = [LeanMinHash(seed=7, hashvalues=row, scheme=scheme) for row in sigs]
    for i in range(len(texts)):
        for j in range(len(texts)):
            assert ours[i].jaccard(ours[j]) == theirs[i].jaccard(theirs[j])
    # the compiled path and datasketch's own algorithm (numpy/hashlib) agree bit for bit
    assert np.array_equal(dedup.minhash._signatures_reference(texts, params), sigs)


def test_signature_rows_do_not_depend_on_batching(corpus, monkeypatch):
    ids, texts = list(corpus), list(corpus.values())
    whole = compute_signatures(ids, texts, DedupParams())
    monkeypatch.setattr(dedup.minhash, "BATCH_DOCS", 3)
    monkeypatch.setattr(dedup.minhash, "BATCH_CHARS", 10_000)
    assert np.array_equal(compute_signatures(ids, texts, DedupParams()), whole)
    assert compute_signatures([], [], DedupParams()).shape == (0, 128)


def test_optimal_lsh_params_match_datasketch():
    for threshold, num_perm in [(0.8, 128), (0.5, 64), (0.9, 256)]:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        assert optimal_lsh_params(threshold, num_perm) == (lsh.b, lsh.r)


def test_edited_module_is_found_and_unrelated_docs_are_not(corpus):
    assert _jaccard(corpus["b-textwrap"], corpus["a-textwrap-edited"]) > 0.9
    result = find_duplicates(list(corpus), list(corpus.values()), DedupParams())
    assert result.drop == {"b-textwrap"}
    assert result.keep_of == {"b-textwrap": "a-textwrap-edited"}  # the smallest id is kept
    assert result.clusters == {
        "a-textwrap-edited": "a-textwrap-edited",
        "b-textwrap": "a-textwrap-edited",
    }
    assert result.counts()["n_kept"] == len(corpus) - 1
    assert result.n_clusters == 1


def test_result_does_not_depend_on_input_order(corpus):
    items = list(corpus.items()) + [("copy-of-heapq", corpus["heapq"])]  # identical signatures
    baseline = find_duplicates([k for k, _ in items], [v for _, v in items], DedupParams())
    assert baseline.keep_of["heapq"] == "copy-of-heapq"
    for seed in range(3):
        random.Random(seed).shuffle(items)
        shuffled = find_duplicates([k for k, _ in items], [v for _, v in items], DedupParams())
        assert shuffled.clusters == baseline.clusters
        assert shuffled.keep_of == baseline.keep_of
        assert shuffled.drop == baseline.drop
        assert shuffled.counts() == baseline.counts()


def test_chain_of_near_duplicates_collapses_to_one_kept_doc():
    words = " ".join(topics[k] for k in sorted(topics)).split()
    length, shift = 2000, 200
    a, b, c = (" ".join(words[i * shift : i * shift + length]) for i in range(3))
    # A~B and B~C are near-duplicates at 0.74, A and C are not.
    assert _jaccard(a, b) > 0.8 and _jaccard(b, c) > 0.8 and _jaccard(a, c) < 0.7
    params = DedupParams(threshold=0.74, num_perm=512, bands=128, rows=4)
    result = find_duplicates(["doc-c", "doc-a", "doc-b"], [c, a, b], params)
    assert result.drop == {"doc-b", "doc-c"}
    assert result.keep_of == {"doc-b": "doc-a", "doc-c": "doc-a"}
    assert set(result.clusters.values()) == {"doc-a"}
    assert result.n_candidate_pairs == 3
    assert result.n_verified_pairs == 2  # the A-C candidate failed verification
    alone = find_duplicates(["doc-a", "doc-c"], [a, c], params)
    assert alone.drop == set() and alone.clusters == {}


def test_signatures_estimate_jaccard(corpus):
    params = DedupParams(num_perm=256)
    sigs = signatures(list(corpus), list(corpus.values()), params)
    assert set(sigs) == set(corpus)
    assert sigs["a-textwrap-edited"].jaccard(sigs["b-textwrap"]) > 0.9
    assert sigs["heapq"].jaccard(sigs["bisect"]) < 0.2


@pytest.fixture(scope="module")
def encodings() -> dict[str, str]:
    """The stdlib codec modules: generated from one template, so many real near-duplicates
    (Jaccard spread from 0.5 to 1.0) and many pairs just around 0.8."""
    return {
        p.name: p.read_text(encoding="utf-8") for p in sorted((STDLIB / "encodings").glob("*.py"))
    }


def _exact_truth(docs: dict[str, str], threshold: float) -> tuple[set[str], set[str]]:
    """Docs with an exact-Jaccard partner >= threshold, and what exact dedup would remove."""
    ids = list(docs)
    sets = [shingles(docs[i], 5) for i in ids]
    pairs = []
    for x in range(len(ids)):
        for y in range(x + 1, len(ids)):
            inter = len(sets[x] & sets[y])
            if inter / (len(sets[x]) + len(sets[y]) - inter) >= threshold:
                pairs.append((ids[x], ids[y]))
    exact = dedup.exact._result_from_pairs(ids, pairs, len(ids))
    return {d for p in pairs for d in p}, exact.drop


def test_precision_and_recall_against_exact_jaccard(encodings):
    has_partner, exact_removed = _exact_truth(encodings, 0.8)
    assert len(exact_removed) >= 15
    params = DedupParams(num_perm=512, bands=64, rows=8)
    removed = find_duplicates(list(encodings), list(encodings.values()), params).drop
    precision = len(removed & has_partner) / len(removed)
    recall = len(removed & exact_removed) / len(exact_removed)
    assert precision >= 0.95 and recall >= 0.9, (precision, recall)


def test_same_removals_as_plain_datasketch_lsh(encodings):
    """The project's former implementation: datasketch MinHash + MinHashLSH + verification."""
    params = DedupParams()
    ids = sorted(encodings)
    sets = [shingles(encodings[i], params.ngram) for i in ids]
    minhashes = [LeanMinHash(m) for m in MinHash.generator(sets, num_perm=128, seed=1)]
    lsh = MinHashLSH(threshold=params.threshold, num_perm=128)
    for doc_id, m in zip(ids, minhashes, strict=True):
        lsh.insert(doc_id, m)
    sig_of = dict(zip(ids, minhashes, strict=True))
    candidates = {(min(i, o), max(i, o)) for i in ids for o in lsh.query(sig_of[i]) if o != i}
    verified = [(a, b) for a, b in candidates if sig_of[a].jaccard(sig_of[b]) >= 0.8]
    expected = dedup.exact._result_from_pairs(ids, verified, len(ids))
    result = find_duplicates(ids, [encodings[i] for i in ids], params)
    assert result.clusters == expected.clusters and result.drop == expected.drop
    assert (result.n_candidate_pairs, result.n_verified_pairs) == (len(candidates), len(verified))


def test_incremental_shards_recompute_only_the_new_one(corpus, tmp_path):
    shards = {
        "part-a": ["topic-for", "topic-while", "b-textwrap"],
        "part-b": ["heapq", "bisect", "shlex"],
        "part-c": ["a-textwrap-edited", "json-decoder", "topic-with", "topic-numbers"],
    }
    params = DedupParams()
    reads: list[str] = []

    def reader(name: str):  # noqa: ANN202
        def read() -> tuple[list[str], list[str]]:
            reads.append(name)
            return shards[name], [corpus[i] for i in shards[name]]

        return read

    def run(names: list[str]) -> tuple[list[str], np.ndarray]:
        ids, sigs = [], []
        for name in names:
            got_ids, got, _ = shard_signatures(
                tmp_path / f"{name}.npz", params, reader(name), key=f"{name}-v1"
            )
            ids += got_ids
            sigs.append(got)
        return ids, np.concatenate(sigs)

    ids, sigs = run(["part-a", "part-b"])
    assert reads == ["part-a", "part-b"]
    assert find_duplicates_from_signatures(ids, sigs, params).drop == set()

    ids, sigs = run(["part-a", "part-b", "part-c"])
    assert reads == ["part-a", "part-b", "part-c"]  # a and b came from their caches
    incremental = find_duplicates_from_signatures(ids, sigs, params)
    scratch = find_duplicates(list(corpus), list(corpus.values()), params)
    assert incremental.clusters == scratch.clusters and incremental.drop == {"b-textwrap"}
    assert incremental.counts() == scratch.counts()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "part-a.npz",
        "part-b.npz",
        "part-c.npz",
    ]  # no temporary files left behind


def test_stale_or_broken_caches_are_detected(corpus, tmp_path):
    ids, texts = list(corpus)[:4], list(corpus.values())[:4]
    params = DedupParams()
    sigs = compute_signatures(ids, texts, params)
    path = tmp_path / "shard.npz"
    save_signatures(path, ids, sigs, params, key="digest-1")

    loaded = load_signatures(path, params, key="digest-1")
    assert loaded is not None and loaded[0] == ids and np.array_equal(loaded[1], sigs)
    # LSH settings do not shape signatures: the cache stays valid
    assert load_signatures(path, DedupParams(threshold=0.7, bands=16, rows=8)) is not None
    for other in (
        DedupParams(ngram=4),
        DedupParams(num_perm=64),
        DedupParams(seed=2),
        DedupParams(scheme="legacy"),
    ):
        assert load_signatures(path, other) is None
    assert load_signatures(path, params, key="digest-2") is None  # the shard changed
    assert load_signatures(tmp_path / "missing.npz", params) is None
    path.write_bytes(path.read_bytes()[:100])  # truncated by a crash outside atomic_path
    assert load_signatures(path, params) is None
    with pytest.raises(ValueError, match="shape"):
        save_signatures(path, ids[:2], sigs, params)


def test_exact_duplicates_catch_whitespace_and_case_variants():
    text = topics["assert"]
    variants = {
        "v3": text.upper(),
        "v1": text,
        "v2": "  " + text.replace(" ", "\n\t ") + "\n",
        "other": text.replace("assert", "insist"),
        "unrelated": topics["pass"],
    }
    result = exact_duplicates(list(variants), list(variants.values()))
    assert result.drop == {"v2", "v3"}
    assert result.keep_of == {"v2": "v1", "v3": "v1"}
    assert result.n_kept == 3


def test_params_are_validated():
    assert DedupParams(num_perm=128, bands=16, rows=8).lsh_params() == (16, 8)
    bands, rows = DedupParams(threshold=0.8).lsh_params()
    assert bands * rows <= 128
    with pytest.raises(ValidationError, match="exceeds num_perm"):
        DedupParams(num_perm=64, bands=16, rows=8)
    with pytest.raises(ValidationError, match="both bands and rows"):
        DedupParams(bands=16)
    with pytest.raises(ValidationError):
        DedupParams(shingle_size=5)
    with pytest.raises(ValidationError):
        DedupParams(scheme="affine64")
    with pytest.raises(ValueError, match="unique"):
        find_duplicates(["x", "x"], ["a b", "c d"], DedupParams())
    with pytest.raises(ValueError, match="shape"):
        find_duplicates_from_signatures(["x"], np.zeros((1, 64), np.uint64), DedupParams())


def test_band_key_collisions_fall_back_to_exact_grouping(corpus, monkeypatch):
    ids, texts = list(corpus), list(corpus.values())
    sigs = compute_signatures(ids, texts, DedupParams())
    expected = find_duplicates_from_signatures(ids, sigs, DedupParams())
    # every row gets the same 64-bit key: only the exact check keeps the buckets apart
    monkeypatch.setattr(dedup.lsh, "_row_keys", lambda rows: np.zeros(len(rows), dtype=np.uint64))
    collided = find_duplicates_from_signatures(ids, sigs, DedupParams())
    assert collided.clusters == expected.clusters
    assert collided.counts() == expected.counts()


def test_without_numba_the_reference_path_gives_the_same_signatures(mixed_texts, monkeypatch):
    ids, texts = list(mixed_texts), list(mixed_texts.values())
    compiled = compute_signatures(ids, texts, DedupParams(num_perm=32))
    monkeypatch.setattr(dedup.minhash, "numba", None)
    assert np.array_equal(compute_signatures(ids, texts, DedupParams(num_perm=32)), compiled)
