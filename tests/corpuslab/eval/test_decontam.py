"""13-gram decontamination: a planted overlap is found and named, clean text passes."""

from __future__ import annotations

from pydoc_data.topics import topics

import pytest

from corpuslab.eval.decontam import NGramHasher, overlap

EVAL = topics["exceptions"]
TRAIN = {k: topics[k] for k in ("assert", "pass", "lambda", "import")}


def test_clean_evaluation_text_passes() -> None:
    report = overlap({"eval/exceptions": EVAL}, TRAIN.items())
    assert report.passed and report.training_documents == 4
    assert report.texts["eval/exceptions"].ngrams > 100


def test_a_planted_passage_fails_and_names_the_training_document() -> None:
    """Thirty words of the evaluation text pasted into one training document are caught."""
    words = EVAL.split()
    planted = dict(TRAIN, leaky=TRAIN["pass"] + "\n\n" + " ".join(words[100:130]) + "\n")
    report = overlap({"eval/exceptions": EVAL, "eval/other": topics["for"]}, planted.items())
    assert not report.passed
    (bad,) = report.contaminated
    assert bad.key == "eval/exceptions" and bad.examples == ["leaky"]
    # about 30 - 13 + 1 shared 13-grams (the text's own punctuation may join a few words)
    assert 12 <= bad.found <= 20
    # the same overlap is tolerated under a threshold above its fraction
    loose = overlap({"eval/exceptions": EVAL}, planted.items(), threshold=bad.fraction + 0.01)
    assert loose.passed


def test_texts_shorter_than_n_words_are_unchecked_not_clean() -> None:
    report = overlap({"short": "raise an exception"}, TRAIN.items())
    assert report.unchecked == ["short"] and report.texts["short"].ngrams == 0


def test_ngrams_ignore_case_and_punctuation() -> None:
    h = NGramHasher(3)
    assert list(h.hashes("The Quick, brown fox!")) == list(h.hashes("the quick brown fox"))
    assert len(h.hashes("one two")) == 0
    with pytest.raises(ValueError):
        overlap({}, [], threshold=1.0)
