"""Language ID on real text: Python's English docs against real translations.

Non-English text comes from ``data/language_samples.json``, committed so that no test depends on
what this machine happens to have installed (slim and Debian-packaged Pythons lack CPython's
test data; containers lack gettext catalogues): the Japanese, Chinese and Korean prose about
Python from CPython's ``test/cjkencodings``, and PostgreSQL's translated server messages with
their English originals, English of the same kind. ``data/make_language_samples.py`` says
where each came from and rebuilds the file.
"""

from __future__ import annotations

import inspect
import json
import keyword
import socketserver
from pathlib import Path
from pydoc_data.topics import topics

from corpuslab.filters import language as langid
from corpuslab.filters import parse_step

SAMPLES = json.loads(
    (Path(__file__).parent / "data" / "language_samples.json").read_text(encoding="utf-8")
)
EUROPEAN = ("de", "es", "fr", "it", "ru", "sv", "uk")


def test_english_documentation_is_english_above_dclm_threshold() -> None:
    texts = [inspect.getdoc(socketserver) or ""] + [topics[k] for k in ("if", "while", "try")]
    for text in texts:
        lang, score = langid.predict(text)
        assert lang == "en" and score >= 0.65, (lang, score, text[:80])


def test_cjk_prose_about_python_is_not_english() -> None:
    assert set(SAMPLES["cjk"]) == {"ja", "zh", "ko"}
    for expected, text in SAMPLES["cjk"].items():
        lang, score = langid.predict(text)
        assert lang == expected and score > 0.9, (expected, lang, score)
        assert parse_step("language_id").reason(text) == "other_language"
        assert parse_step({"language_id": {"languages": [expected]}}).reason(text) is None


def test_translated_messages_against_their_english_originals() -> None:
    """Each translation is identified as its language and dropped; each original is English."""
    pairs = SAMPLES["translations"]
    assert tuple(sorted(pairs)) == tuple(sorted(EUROPEAN))
    step = parse_step("language_id")
    for lang, items in pairs.items():
        assert len(items) == 3, lang
        for english, translated in items:
            got, score = langid.predict(translated)
            assert got == lang and score > 0.9, (lang, got, score, translated[:80])
            assert step.reason(translated) == "other_language"
            assert parse_step({"language_id": {"languages": [lang]}}).reason(translated) is None
            assert langid.predict(english)[0] == "en", english[:80]
            assert step.reason(english) is None


def test_english_that_is_mostly_code_scores_low() -> None:
    """Python source is English to fastText, below DCLM's 0.65: the step's second reason."""
    source = inspect.getsource(keyword)
    lang, score = langid.predict(source)
    assert lang == "en" and score < 0.65
    assert parse_step("language_id").reason(source) == "language_score_below_min"
    assert parse_step({"language_id": {"min_score": score - 0.01}}).reason(source) is None


def test_model_ships_in_a_wheel_and_knows_176_languages() -> None:
    path = langid.model_path()
    assert path.name == "lid.176.ftz" and path.stat().st_size < 2_000_000
    labels = langid.labels()
    assert len(labels) == 176 and {"en", "de", "ja", "zh"} <= set(labels)
    assert langid.predict("") == ("unknown", 0.0)  # nothing to identify
    assert langid.predict("Dies ist ein ganz normaler deutscher Satz.")[0] == "de"
