"""The built-in suite: deterministic, well-formed items from text on this machine."""

from __future__ import annotations

from corpuslab.eval.suite import (
    heldout_lm_items,
    in_stdlib_sources,
    next_sentence_items,
    reserved,
    signature_docstring_items,
)
from corpuslab.ingest.democorpus import reference_records

DOCS = [(r["id"], r["text"]) for r in reference_records() if reserved(r["id"], 0.3)]


def test_held_out_slices_are_nested_and_near_their_fraction() -> None:
    ids = [f"doc/{i}" for i in range(4000)]
    small = {i for i in ids if reserved(i, 0.05)}
    large = {i for i in ids if reserved(i, 0.2)}
    assert small <= large
    assert 0.04 < len(small) / len(ids) < 0.06 and 0.18 < len(large) / len(ids) < 0.22
    assert all(reserved(i, 1.0) for i in ids[:10])


def test_signature_docstring_items_are_fixed_and_not_in_stdlib_sources() -> None:
    """Two builds agree; each item has 4 distinct choices, the gold one not in any .py file."""
    a, b = signature_docstring_items(60), signature_docstring_items(60)
    assert a == b and len(a) == 60
    for item in a:
        assert len(set(item.continuations)) == 4 and 0 <= item.gold < 4
        assert "(" in item.contexts[0]  # a signature
        assert not in_stdlib_sources(item.continuations[item.gold])


def test_next_sentence_items_take_distractors_from_other_documents() -> None:
    items = next_sentence_items(DOCS, 80)
    assert items == next_sentence_items(DOCS, 80) and len(items) == 80
    text_of = dict(DOCS)
    for item in items:
        doc = item.id.split("#")[0]
        source = " ".join(text_of[doc].split())
        gold = item.continuations[item.gold]
        assert gold in source  # the right sentence follows in its own document
        for i, choice in enumerate(item.continuations):
            if i != item.gold:
                assert choice not in source


def test_heldout_lm_items_predict_a_sentence_final_word() -> None:
    items = heldout_lm_items(DOCS, 50)
    assert len(items) == 50
    text_of = {d: " ".join(t.split()) for d, t in DOCS}
    for item in items:
        word = item.continuations[0]
        assert word.isalpha() and len(word) >= 3
        assert f"{item.contexts[0].split()[-1]} {word}" in text_of[item.id.split("#")[0]]
