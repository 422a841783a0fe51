"""The fastText quality classifier separates reference prose from source code."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from corpuslab import quality
from corpuslab.ingest.democorpus import code_records, package_records, reference_records, take
from corpuslab.quality import (
    LABEL_HQ,
    LABEL_LQ,
    QualityParams,
    load_model,
    normalize_batch,
    normalize_for_fasttext,
    roc_auc,
    score_texts,
    select,
    train_quality_model,
    training_sample,
)

# Edge cases around the compiled normalizer's byte/code-point handling: empty and blank text,
# NUL and file-separator controls (whitespace to Python), no-break and em spaces, full-width
# letters and ligatures (NFKC), dotted capital I (lowercases to two code points), astral
# letters and emoji, and a lone surrogate.
EDGE_TEXTS = [
    "",
    " \t\n ",
    "a\x00b\x1cc\x1fd",
    "Caf\u00e9\u00a0au\u2003lait \u2014 \u201cquoted\u201d, \uff26\uff35\uff2c\uff2c \ufb01ne",
    "\u0130stanbul \u01c4emal STRASSE stra\u00dfe",
    "\U00020000\U0001d400x \U0001f600 ok_1 snake_case x+=1",
    "x\ud800y",
]


@pytest.fixture(scope="module")
def texts() -> tuple[list[str], list[str]]:
    positives = [r["text"] for r in reference_records()]
    negatives = [r["text"] for r in take(code_records(), 200)]
    return positives, negatives


@pytest.fixture(scope="module")
def trained(tmp_path_factory, texts):
    positives, negatives = texts
    params = QualityParams(positive_source="reference", negative_sample=150, bucket=20_000)
    path = tmp_path_factory.mktemp("quality") / "model.bin"
    _, neg_idx = training_sample(len(positives), range(len(negatives)), params)
    metrics = train_quality_model(positives, [negatives[i] for i in neg_idx], params, path)
    return params, path, metrics


def test_classifier_separates_reference_from_code(trained, texts):
    params, path, metrics = trained
    assert path.is_file() and path.stat().st_size > 0
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
    assert metrics["auc"] > 0.9
    n_pos = len(texts[0])
    assert metrics["n_train"] + metrics["n_heldout"] == n_pos + params.negative_sample
    assert metrics["n_heldout"] == round(0.2 * n_pos) + round(0.2 * params.negative_sample)
    assert 0.0 <= metrics["precision"] <= 1.0 and 0.0 <= metrics["recall"] <= 1.0


def test_scores_are_probabilities_and_rank_prose_first(trained, texts):
    _, path, _ = trained
    positives, negatives = texts
    sample = positives[:10] + negatives[-10:]
    scores = score_texts(path, sample)
    assert scores.shape == (20,) and np.all((scores >= 0) & (scores <= 1))
    assert np.array_equal(scores, score_texts(load_model(path), sample))
    assert roc_auc(np.array([True] * 10 + [False] * 10), scores) > 0.9


def test_training_is_deterministic(trained, texts, tmp_path):
    params, path, metrics = trained
    _, neg_idx = training_sample(len(texts[0]), range(len(texts[1])), params)
    negatives = [texts[1][i] for i in neg_idx]
    again = train_quality_model(texts[0], negatives, params, tmp_path / "again.bin")
    assert again == metrics
    probe = texts[0][:5] + texts[1][:5]
    assert np.array_equal(score_texts(path, probe), score_texts(tmp_path / "again.bin", probe))


def test_select_keeps_top_fraction_with_deterministic_ties():
    scores = np.array([0.1, 0.9, 0.5, 0.5, 0.7, 0.2, 0.5, 0.3, 0.8, 0.4])
    keep = select(scores, QualityParams(positive_source="r", keep_fraction=0.3))
    assert keep.sum() == 3 and set(np.flatnonzero(keep)) == {1, 4, 8}
    keep = select(scores, QualityParams(positive_source="r", keep_fraction=0.5))
    assert set(np.flatnonzero(keep)) == {1, 2, 3, 4, 8}  # ties at 0.5: earlier position wins
    ids = ["j", "i", "h", "g", "f", "e", "d", "c", "b", "a"]
    keep = select(scores, QualityParams(positive_source="r", keep_fraction=0.5), ids=ids)
    assert set(np.flatnonzero(keep)) == {1, 4, 6, 8, 3}  # ties at 0.5: smallest ids "d", "g"
    keep = select(scores, QualityParams(positive_source="r", min_score=0.5))
    assert set(np.flatnonzero(keep)) == {1, 2, 3, 4, 6, 8}
    assert select(scores, QualityParams(positive_source="r", keep_fraction=1.0)).all()


def test_roc_auc_matches_hand_computed_values():
    labels = np.array([True, True, False, False])
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 1.0
    assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert roc_auc(labels, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert roc_auc(labels, np.array([0.9, 0.3, 0.5, 0.1])) == 0.75


def test_normalize_for_fasttext_gives_one_lowercased_line():
    line = normalize_for_fasttext("Hello, World!\nThe `for` loop:\tdef f(x):")
    assert line == "hello , world ! the ` for ` loop : def f ( x ) :"


def test_params_need_exactly_one_selection_rule():
    assert QualityParams(positive_source="r").keep_fraction == 0.9
    only_score = QualityParams(positive_source="r", min_score=0.6)
    assert only_score.keep_fraction is None and only_score.min_score == 0.6
    with pytest.raises(ValidationError, match="exactly one"):
        QualityParams(positive_source="r", keep_fraction=0.5, min_score=0.5)
    with pytest.raises(ValidationError, match="exactly one"):
        QualityParams(positive_source="r", keep_fraction=None)
    with pytest.raises(ValidationError):
        QualityParams(positive_source="r", top_k=3)


def test_model_path_accepts_str(trained, texts):
    _, path, _ = trained
    assert np.array_equal(score_texts(str(path), texts[0][:2]), score_texts(path, texts[0][:2]))


def test_batch_normalization_equals_the_regex_definition(texts):
    positives, negatives = texts
    real = positives[:40] + negatives[:40] + [r["text"] for r in take(package_records(), 40)]
    batch = real + EDGE_TEXTS
    assert any(not t.isascii() for t in real)
    assert normalize_batch(batch) == [normalize_for_fasttext(t) for t in batch]
    assert normalize_batch(real[:3]) == [normalize_for_fasttext(t) for t in real[:3]]  # ASCII
    assert normalize_batch([]) == []


def test_scores_equal_one_predict_per_normalized_text(trained, texts):
    _, path, _ = trained
    model = load_model(path)
    sample = texts[0][:30] + texts[1][:30] + EDGE_TEXTS[:-1]
    expected = []
    for text in sample:
        labels, probs = model.predict([normalize_for_fasttext(text)], k=-1)
        p = dict(zip(labels[0], np.asarray(probs[0], dtype=np.float64), strict=True))
        expected.append(p.get(LABEL_HQ, 1.0 - p.get(LABEL_LQ, 1.0)))
    assert np.array_equal(score_texts(model, sample), np.clip(expected, 0.0, 1.0))


def test_hq_probability_reads_rows_with_one_label(trained, texts):
    _, path, _ = trained
    model = load_model(path)
    sample = normalize_batch(texts[0][:50] + texts[1][-50:])
    top_labels, top_probs = model.predict(sample, k=1)  # one label per row: the general path
    scores = quality._hq_probability(top_labels, top_probs)
    both = quality._hq_probability(*model.predict(sample, k=-1))  # the two-column path
    assert np.allclose(scores, both, atol=1e-4)  # fastText reports p + 1e-5 for each label
    assert {row[0] for row in top_labels} == {LABEL_HQ, LABEL_LQ}


def test_without_numba_normalization_takes_the_regex_path(texts, monkeypatch):
    sample = texts[0][:5] + texts[1][:5] + EDGE_TEXTS
    compiled = normalize_batch(sample)
    monkeypatch.setattr(quality, "numba", None)
    assert normalize_batch(sample) == compiled
