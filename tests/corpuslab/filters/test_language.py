"""Language ID on real text found offline: Python's English docs against real translations.

Non-English text: the Japanese, Chinese and Korean prose about Python that CPython's test suite
ships (``test/cjkencodings``), and the translated help texts of GNU coreutils in the system's
gettext catalogues (``/usr/share/locale/*/LC_MESSAGES/coreutils.mo``), whose English originals
(the catalogue keys) are English of the same kind.
"""

from __future__ import annotations

import gettext
import inspect
import keyword
import socketserver
import sysconfig
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from corpuslab.filters import language as langid
from corpuslab.filters import parse_step

LOCALE = Path("/usr/share/locale")
CJK = Path(sysconfig.get_paths()["stdlib"]) / "test" / "cjkencodings"
EUROPEAN = ("de", "fr", "es", "it", "nl", "pl", "pt_BR", "ru", "sv", "uk")


def cjk_texts() -> dict[str, str]:
    """Real CJK prose (UTF-8 copies) from CPython's test data: expected language -> text."""
    files = {"ja": "euc_jp-utf8.txt", "zh": "gb2312-utf8.txt", "ko": "euc_kr-utf8.txt"}
    return {lang: (CJK / name).read_text(encoding="utf-8") for lang, name in files.items()}


def coreutils_help(lang: str, n: int = 5) -> list[tuple[str, str]]:
    """(English original, translation) pairs of coreutils' longest prose help paragraphs."""
    try:
        catalog = gettext.translation("coreutils", str(LOCALE), [lang])._catalog  # type: ignore[attr-defined]
    except OSError:
        return []
    pairs = [
        (k, v)
        for k, v in catalog.items()
        if isinstance(k, str) and isinstance(v, str) and k and v != k and k.count(". ") >= 2
    ]
    pairs.sort(key=lambda kv: (-len(kv[0]), kv[0]))
    return pairs[:n]


def test_english_documentation_is_english_above_dclm_threshold() -> None:
    texts = [inspect.getdoc(socketserver) or ""] + [topics[k] for k in ("if", "while", "try")]
    for text in texts:
        lang, score = langid.predict(text)
        assert lang == "en" and score >= 0.65, (lang, score, text[:80])


@pytest.mark.skipif(not CJK.is_dir(), reason="this Python was installed without its test suite")
def test_cjk_prose_about_python_is_not_english() -> None:
    for expected, text in cjk_texts().items():
        lang, score = langid.predict(text)
        assert lang == expected and score > 0.9, (expected, lang, score)
        assert parse_step("language_id").reason(text) == "other_language"
        assert parse_step({"language_id": {"languages": [expected]}}).reason(text) is None


def test_translated_help_texts_against_their_english_originals() -> None:
    pairs = {lang: coreutils_help(lang) for lang in EUROPEAN}
    pairs = {lang: p for lang, p in pairs.items() if p}
    if not pairs:
        pytest.skip("no coreutils translations under /usr/share/locale on this machine")
    step = parse_step("language_id")
    for lang, items in pairs.items():
        for english, translated in items:
            got, _ = langid.predict(translated)
            assert got == lang.split("_")[0], (lang, got, translated[:80])
            assert step.reason(translated) == "other_language"
            assert langid.predict(english)[0] == "en", english[:80]


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
