"""Regenerate ``language_samples.json``: real non-English text for the language-ID tests.

The tests read the committed JSON, so they run (and never skip) on machines without these
sources, such as slim or Debian-packaged Pythons and container images. This script records
where the text came from and rebuilds the file on a machine that has both sources:

- ``cjk``: the Japanese, Chinese and Korean prose about Python in CPython's test data
  (``Lib/test/cjkencodings/*-utf8.txt``; Python Software Foundation License).
- ``translations``: (English original, translation) pairs of PostgreSQL 15's server messages
  from its gettext catalogues (``/usr/share/locale/<lang>/LC_MESSAGES/postgres-15.mo``; the
  PostgreSQL License), the longest prose messages (at least three sentences) of each language.

The copyright notices and license terms are in ``NOTICE`` next to this file.

Run: ``python tests/corpuslab/filters/data/make_language_samples.py``.
"""

from __future__ import annotations

import gettext
import json
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
CJK = Path(sysconfig.get_paths()["stdlib"]) / "test" / "cjkencodings"
CJK_FILES = {"ja": "euc_jp-utf8.txt", "zh": "gb2312-utf8.txt", "ko": "euc_kr-utf8.txt"}
CATALOG = "/usr/share/locale/{lang}/LC_MESSAGES/postgres-15.mo"
LANGUAGES = ("de", "es", "fr", "it", "ru", "sv", "uk")
PAIRS_PER_LANGUAGE = 3


def translation_pairs(lang: str, n: int = PAIRS_PER_LANGUAGE) -> list[list[str]]:
    """The ``n`` longest prose messages of a catalogue with their translations."""
    with open(CATALOG.format(lang=lang), "rb") as fh:
        # gettext has no public way to list a catalogue's messages: read its parsed dict
        catalog = gettext.GNUTranslations(fh)._catalog  # pyright: ignore[reportAttributeAccessIssue]
    pairs = [
        [k, v]
        for k, v in catalog.items()
        if isinstance(k, str) and isinstance(v, str) and k and v != k and k.count(". ") >= 2
    ]
    pairs.sort(key=lambda kv: (-len(kv[0]), kv[0]))
    if len(pairs) < n:
        raise SystemExit(f"{CATALOG.format(lang=lang)} has only {len(pairs)} prose messages")
    return pairs[:n]


def main() -> None:
    samples = {
        "sources": {
            "cjk": "CPython Lib/test/cjkencodings/*-utf8.txt (Python Software Foundation License)",
            "translations": "PostgreSQL 15 message catalogues postgres-15.mo (PostgreSQL License)",
        },
        "cjk": {lang: (CJK / name).read_text(encoding="utf-8") for lang, name in CJK_FILES.items()},
        "translations": {lang: translation_pairs(lang) for lang in LANGUAGES},
    }
    out = HERE / "language_samples.json"
    out.write_text(json.dumps(samples, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
