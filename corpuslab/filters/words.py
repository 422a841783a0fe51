"""Word splitting shared by the filter steps: spaCy's English rules, and whitespace words.

datatrove splits words with spaCy's blank English tokenizer (whitespace, then prefixes,
suffixes, infixes, URLs and special cases such as "don't" -> "do", "n't"). The rules below are
spaCy's (spacy/lang/punctuation.py, char_classes.py, en/tokenizer_exceptions.py, MIT licence),
rewritten for Python's ``re``; the letter classes come from ``unicodedata`` instead of spaCy's
hand-listed ranges. One coherent piece (about 700 lines): the tables, the splitter and its
caches belong together, and every Gopher/C4 rule reads words through it.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from itertools import chain, pairwise
from typing import Any, TypeGuard

import numpy as np

# datatrove's PUNCTUATION (datatrove/utils/text.py): a word made only of these is a "symbol".
_PUNCTUATION_CHARS = frozenset(
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
    + "".join(chr(x) for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b))
)

# Each whitespace-free chunk is split once and cached, so a word costs a dict
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
    base: dict[str, tuple[str, ...]] = {f"{c}.": (f"{c}.",) for c in "abcdefghijklmnopqrstuvwxyz"}
    base.update({e: (e,) for e in _EMOTICONS.split()})
    base.update({f"°{u}.": ("°", u, ".") for u in "cfkCFK"})
    base["\u2014"] = ("\u2014",)
    base.update(exc)
    for key, parts in list(base.items()):  # spaCy adds typographic-apostrophe variants
        if "'" in key:
            base[key.replace("'", "\u2019")] = tuple(p.replace("'", "\u2019") for p in parts)
    return base


def _all_known(ids: tuple[int | None, ...]) -> TypeGuard[tuple[int, ...]]:
    """Whether every token of a chunk already has an id (``dict.get`` found them all)."""
    return None not in ids


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
        return ids if _all_known(ids) else tuple(map(self._token_id, tokens))

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


_WHITESPACE_WORD = re.compile(r"\S+")


def whitespace_words(text: str) -> list[str]:
    """Whitespace-separated words (what "words left" counts after line/paragraph dedup)."""
    return _WHITESPACE_WORD.findall(text)
