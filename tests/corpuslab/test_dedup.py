"""MinHash near-dedup and exact dedup on real standard-library text."""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path
from pydoc_data.topics import topics

import pytest
from pydantic import ValidationError

from corpuslab.dedup import (
    DedupParams,
    exact_duplicates,
    find_duplicates,
    shingles,
    signatures,
)

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


def test_shingles_normalize_case_punctuation_and_short_texts():
    assert shingles("Hello,   World!  foo bar baz", 5) == shingles("hello world foo bar baz", 5)
    assert shingles("hello world foo bar baz", 5) == {b"hello world foo bar baz"}
    assert shingles("Too short.", 5) == {b"too short"}
    assert len(shingles("one two three four five six", 5)) == 2


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
    items = list(corpus.items())
    baseline = find_duplicates([k for k, _ in items], [v for _, v in items], DedupParams())
    for seed in range(3):
        random.Random(seed).shuffle(items)
        shuffled = find_duplicates([k for k, _ in items], [v for _, v in items], DedupParams())
        assert shuffled.clusters == baseline.clusters
        assert shuffled.keep_of == baseline.keep_of
        assert shuffled.drop == baseline.drop


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
    with pytest.raises(ValueError, match="unique"):
        find_duplicates(["x", "x"], ["a b", "c d"], DedupParams())
