"""Per-document steps on real text: each drop names the step and reason that caused it."""

from __future__ import annotations

import ast
import builtins
import codecs
import importlib.util
import inspect
import json
import re
import socketserver
from collections import Counter
from pathlib import Path
from pydoc_data.topics import topics

import pytest
from pydantic import ValidationError

from corpuslab.declarations import load_experiment
from corpuslab.filters import STEPS, Pipeline, PipelineResult, Step, StepError, parse_step
from corpuslab.filters.words import count_sentences, spacy_splitter, spacy_words, whitespace_words
from corpuslab.ingest.democorpus import stdlib_dir, stdlib_files

PROSE = inspect.getdoc(json) or ""  # the json module's docstring: English prose and examples
# socketserver's module docstring: English prose that passes every Gopher and C4 rule
KEEPER = inspect.getdoc(socketserver) or ""
LINES = [line.strip() for line in KEEPER.splitlines() if len(line.split()) >= 6]
SENTENCES = [line for line in LINES if line.endswith(".")]  # lines C4 keeps


def zen() -> str:
    """The Zen of Python, read from this.py (rot13) without importing it (it prints)."""
    spec = importlib.util.find_spec("this")
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    s = next(
        n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "s"
    )
    return codecs.decode(s, "rot13")


def reason(decl: dict | str, text: str) -> str | None:
    return parse_step(decl).reason(text)


# ---------------------------------------------------------------- the step API and pipeline


def test_prose_passes_the_gopher_rules() -> None:
    pipe = Pipeline.from_decls(["gopher_quality", "gopher_repetition", "exact_dedup"])
    result = pipe.run([KEEPER])
    assert result.decisions == [None]
    assert result.texts == [KEEPER] and result.modified == [False]


def test_gopher_word_count_reasons() -> None:
    pipe = Pipeline.from_decls([{"gopher_quality": {"min_words": 50, "max_words": 200}}])
    short = " ".join(KEEPER.split()[:10])
    long = " ".join(KEEPER.split() * 10)
    assert pipe.run([short, long]).decisions == [
        ("gopher_quality", "gopher_short_doc"),
        ("gopher_quality", "gopher_long_doc"),
    ]


@pytest.mark.parametrize(
    ("retired", "replacement"),
    [
        ("word_count", "gopher_quality (min_words, max_words)"),
        ("mean_word_length", "gopher_quality (min_mean_word_length, max_mean_word_length)"),
        ("symbol_ratio", "gopher_quality (max_symbol_word_ratio)"),
        ("repeated_lines", "gopher_repetition (dup_line_frac)"),
    ],
)
def test_retired_single_rule_steps_name_their_replacement(retired: str, replacement: str) -> None:
    with pytest.raises(StepError, match=re.escape(f"step {retired!r} was retired")) as err:
        parse_step({retired: {}})
    assert replacement in str(err.value)
    assert retired not in STEPS


def test_first_failing_step_names_the_reason() -> None:
    pipe = Pipeline.from_decls([{"gopher_quality": {"min_words": 10}}, "gopher_repetition"])
    assert pipe.run(["# a # b # c"]).decisions == [("gopher_quality", "gopher_short_doc")]


def test_exact_dedup_within_shard_is_whitespace_and_case_blind() -> None:
    pipe = Pipeline.from_decls(["exact_dedup"])
    variant = "  " + PROSE.upper().replace(" ", "   ")
    assert pipe.run([PROSE, variant, PROSE[:-5]]).decisions == [
        None,
        ("exact_dedup", "exact_duplicate"),
        None,
    ]
    assert pipe.run([variant]).decisions == [None]  # state resets per shard


def test_result_counts_drops_edits_and_removed_lines() -> None:
    """Counters per step: documents in, dropped per reason, modified and lines removed."""
    short = " ".join(KEEPER.split()[:20])
    pipe = Pipeline.from_decls(["gopher_quality", "c4_quality", "exact_dedup"])
    result = pipe.run([KEEPER, short, KEEPER])
    assert isinstance(result, PipelineResult)
    assert result.decisions == [
        None,
        ("gopher_quality", "gopher_short_doc"),
        ("exact_dedup", "exact_duplicate"),
    ]
    assert result.kept == [True, False, False] and result.n_kept == 1 and result.n_dropped == 2
    assert result.drop_reasons() == Counter(
        {"gopher_quality:gopher_short_doc": 1, "exact_dedup:exact_duplicate": 1}
    )
    gq, c4, ed = result.steps
    assert (gq.name, gq.documents_in, dict(gq.dropped)) == (
        "gopher_quality",
        3,
        {"gopher_short_doc": 1},
    )
    # C4 removed the lines of KEEPER without terminal punctuation, in both copies
    kept_lines = result.texts[0].splitlines()
    n_removed = len([ln for ln in KEEPER.splitlines() if ln.strip()]) - len(kept_lines)
    assert (c4.documents_in, c4.modified, c4.unit) == (2, 2, "line")
    assert c4.removed == 2 * n_removed > 0
    assert result.modified == [True, False, True]
    # exact_dedup saw the cleaned texts: the second copy is a duplicate of the first
    assert (ed.documents_in, dict(ed.dropped)) == (2, {"exact_duplicate": 1})
    assert result.texts[2] == result.texts[0]  # a dropped document keeps the text it had
    assert gq.as_dict()["dropped"] == {"gopher_short_doc": 1}
    assert all(s.seconds >= 0 for s in result.steps)


def test_apply_and_reason_agree() -> None:
    c4 = parse_step("c4_quality")
    text, why = c4.apply(KEEPER)
    assert why is None and text != KEEPER and c4.reason(KEEPER) is None
    gq = parse_step("gopher_quality")
    assert gq.apply(KEEPER) == (KEEPER, None)


def test_a_step_must_decide_something() -> None:
    with pytest.raises(TypeError, match="must override reason"):

        class Nothing(Step):  # noqa: F841 - defining it is the test
            name = "nothing"


def test_bad_declarations() -> None:
    with pytest.raises(StepError, match="unknown step 'nope'; allowed: c4_quality"):
        parse_step({"nope": {}})
    with pytest.raises(ValidationError, match="min_words 10 > max_words 5"):
        parse_step({"gopher_quality": {"min_words": 10, "max_words": 5}})
    with pytest.raises(ValidationError, match="extra"):
        parse_step({"gopher_quality": {"maximum": 0.2}})
    with pytest.raises(ValidationError, match="min_mean_word_length 8.0 > max_mean_word_length"):
        parse_step({"gopher_quality": {"min_mean_word_length": 8, "max_mean_word_length": 4}})
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        parse_step({"gopher_repetition": {"dup_line_frac": 1.5}})
    with pytest.raises(ValidationError, match="n must be >= 1"):
        parse_step({"gopher_repetition": {"top_n_grams": {0: 0.2}}})
    with pytest.raises(ValidationError, match="min_score"):
        parse_step({"language_id": {"min_score": 2}})
    with pytest.raises(ValidationError, match="extra"):
        parse_step({"c4_quality": {"min_sentences": 3}})
    with pytest.raises(StepError, match="exactly one key"):
        parse_step({"c4_quality": {}, "gopher_quality": {}})


def test_every_step_declares_and_documents_its_params() -> None:
    for name, cls in STEPS.items():
        assert cls.name == name and (cls.__doc__ or "").strip()
        assert cls.Params.model_config.get("extra") == "forbid"
        parse_step(name)  # defaults validate


def test_declared_recipes_build_their_pipelines() -> None:
    """Every recipe the repo declares builds a pipeline of the steps it names, in order."""
    exp = load_experiment()
    assert exp.recipes
    for recipe in exp.recipes.values():
        pipe = Pipeline.from_decls(recipe.steps)
        names = [d if isinstance(d, str) else next(iter(d)) for d in recipe.steps]
        assert [step.name for step in pipe.steps] == names


# ---------------------------------------------------------------- word split


def test_words_follow_spacys_english_rules() -> None:
    text = (
        "Don't split e.g. or U.S. twice; (see https://docs.python.org/3/library/json.html), "
        "well-known 10km runs cost $5.00... I'm sure we'll see :) and it's fine."
    )
    assert spacy_words(text) == [
        "Do", "n't", "split", "e.g.", "or", "U.S.", "twice", ";", "(", "see",
        "https://docs.python.org/3/library/json.html", ")", ",", "well", "-", "known",
        "10", "km", "runs", "cost", "$", "5.00", "...", "I", "'m", "sure", "we", "'ll",
        "see", ":)", "and", "it", "'s", "fine", ".",
    ]  # fmt: skip
    assert whitespace_words("a  b\nc") == ["a", "b", "c"]


def test_sentences_are_counted_as_spacys_sentencizer() -> None:
    assert count_sentences("Hello there. This is e.g. one? Yes!") == 3
    assert count_sentences("No end here") == 1
    assert count_sentences("") == 0


# ---------------------------------------------------------------- Gopher quality


def _bulleted() -> str:
    return "\n".join(f"- {line}" for line in LINES)


@pytest.mark.parametrize(
    ("params", "make", "expected"),
    [
        ({}, lambda: " ".join(KEEPER.split()[:30]), "gopher_short_doc"),
        ({"max_words": 300}, lambda: KEEPER, "gopher_long_doc"),
        ({"min_mean_word_length": 6}, lambda: KEEPER, "gopher_below_avg_threshold"),
        ({"max_mean_word_length": 4}, lambda: KEEPER, "gopher_above_avg_threshold"),
        ({}, lambda: " ".join(f"#{w}" for w in KEEPER.split()), "gopher_too_many_hashes"),
        ({}, lambda: " ".join(f"{w}..." for w in KEEPER.split()), "gopher_too_many_ellipsis"),
        ({}, _bulleted, "gopher_too_many_bullets"),
        (
            {"max_symbol_word_ratio": None},
            lambda: "\n".join(f"{line.rstrip('.')}..." for line in LINES),
            "gopher_too_many_end_ellipsis",
        ),
        ({}, lambda: inspect.getsource(json), "gopher_below_alpha_threshold"),
        (
            {},
            lambda: " ".join(n for n in dir(builtins) if n.isalpha()),  # names, no stop words
            "gopher_too_few_stop_words",
        ),
    ],
)
def test_gopher_quality_reasons(params: dict, make, expected: str) -> None:
    assert reason({"gopher_quality": params}, make()) == expected


def test_gopher_quality_keeps_prose_and_rules_can_be_turned_off() -> None:
    assert reason("gopher_quality", KEEPER) is None
    assert reason("gopher_quality", zen()) is None
    # without the bullet rule the '-' tokens make too few words hold a letter; without both, kept
    off = {"max_bullet_lines_ratio": None}
    assert reason({"gopher_quality": off}, _bulleted()) == "gopher_below_alpha_threshold"
    off["min_alpha_words_ratio"] = None
    assert reason({"gopher_quality": off}, _bulleted()) is None


# ---------------------------------------------------------------- Gopher repetition

_ONLY = {"dup_line_frac": None, "dup_para_frac": None, "dup_line_char_frac": None}
_ONLY |= {"dup_para_char_frac": None, "top_n_grams": {}, "dup_n_grams": {}}


def _paragraphs() -> list[str]:
    return [p for p in KEEPER.split("\n\n") if p.strip()]


@pytest.mark.parametrize(
    ("params", "make", "expected"),
    [
        ({}, lambda: "\n\n".join(_paragraphs() * 2), "dup_para_frac"),
        # the paragraph-character rule alone still drops the repeated paragraphs
        (
            {**_ONLY, "dup_para_char_frac": 0.2},
            lambda: "\n\n".join(_paragraphs() * 2),
            "dup_para_char_frac",
        ),
        ({"dup_para_frac": None}, lambda: "\n\n".join(_paragraphs() * 2), "dup_para_char_frac"),
        ({}, lambda: "\n".join(LINES * 2), "dup_line_frac"),
        ({"dup_line_frac": None}, lambda: "\n".join(LINES * 2), "dup_line_char_frac"),
        ({**_ONLY, "top_n_grams": {2: 0.08}}, zen, "top_2_gram"),  # "better than" x 8
        ({**_ONLY, "top_n_grams": {3: 0.1}}, zen, "top_3_gram"),  # "is better than" x 8
        ({}, lambda: topics["formatstrings"], "duplicated_5_n_grams"),
    ],
)
def test_gopher_repetition_reasons(params: dict, make, expected: str) -> None:
    assert reason({"gopher_repetition": params}, make()) == expected


def test_gopher_repetition_keeps_prose() -> None:
    assert reason("gopher_repetition", KEEPER) is None
    assert reason("gopher_repetition", zen()) is None
    assert reason("gopher_repetition", "") == "empty"


def _reference_ngram_reason(words_: list[str], n_text: int, top: dict, dup: dict) -> str | None:
    """datatrove's GopherRepetitionFilter n-gram rules, written plainly (its own algorithm)."""
    for n, frac in top.items():
        grams = [" ".join(words_[i : i + n]) for i in range(len(words_) - n + 1)]
        if grams:
            gram, count = Counter(grams).most_common(1)[0]
            if len(gram) * count / n_text > frac:
                return f"top_{n}_gram"
    for n, frac in dup.items():
        seen: set[str] = set()
        chars = idx = 0
        while idx < len(words_) - n + 1:
            gram = "".join(words_[idx : idx + n])
            if gram in seen:
                chars += len(gram)
                idx += n
            else:
                seen.add(gram)
                idx += 1
        if chars / n_text > frac:
            return f"duplicated_{n}_n_grams"
    return None


def test_fast_ngram_rules_match_the_plain_algorithm_on_stdlib_text() -> None:
    """The hashed, pruned n-gram scan decides as the plain one on real sources and docstrings."""
    params = {"dup_line_frac": None, "dup_para_frac": None}
    params |= {"dup_line_char_frac": None, "dup_para_char_frac": None}
    step = parse_step({"gopher_repetition": params})
    defaults = step.params
    files = stdlib_files()[::25][:40]
    texts = [p.read_text(encoding="utf-8") for p in files]
    texts = [t[:20_000] for t in texts if t.strip()]
    texts += [topics[k][:20_000] for k in sorted(topics)[::8]]
    decided = Counter()
    for text in texts:
        expected = _reference_ngram_reason(
            spacy_words(text), len(text), defaults.top_n_grams, defaults.dup_n_grams
        )
        assert step.reason(text) == expected, text[:200]
        decided[expected is None] += 1
    assert decided[True] and decided[False]  # both outcomes were exercised


# ---------------------------------------------------------------- C4


def test_c4_removes_lines_and_keeps_prose() -> None:
    text, why = parse_step("c4_quality").apply(KEEPER)
    assert why is None
    kept = text.splitlines()
    removed = {ln.strip() for ln in KEEPER.splitlines()} - set(kept)
    # lines without terminal punctuation went, including the one holding a curly bracket
    assert "- AF_INET{,6}: IP (Internet Protocol) sockets (default)" in removed
    assert "For socket-based servers:" in removed
    assert "| BaseServer |" in removed
    assert all(ln.endswith((".", "?", "!", '"', "'")) and len(ln.split()) >= 3 for ln in kept)
    assert "Generic socket server classes." in kept


def test_c4_page_level_drops() -> None:
    c4 = parse_step("c4_quality")
    first = SENTENCES[0]
    assert c4.reason(first) == "too_few_sentences"
    lorem = "\n".join([*LINES, "Lorem ipsum dolor sit amet, consectetur adipiscing elit."])
    assert c4.reason(lorem) == "lorem_ipsum"
    # real prose about format strings: kept lines hold '{'
    assert c4.reason(topics["formatstrings"]) == "curly_bracket"
    relaxed = parse_step({"c4_quality": {"filter_curly_bracket": False}})
    assert relaxed.reason(topics["formatstrings"]) is None
    assert parse_step({"c4_quality": {"min_num_sentences": 1}}).reason(first) is None


def test_c4_line_rules() -> None:
    web = [
        *SENTENCES[:6],
        "Please enable JavaScript to view the comments on this page.",
        "This site uses cookies to improve your experience.",
        "Read our privacy policy before you continue.",
        "Python is widely used in science.[1]",
        "Two words.",
        "Not ending in punctuation at all",
        "An ellipsis at the end...",
    ]
    text, why = parse_step("c4_quality").apply("\n".join(web))
    assert why is None
    assert text.splitlines() == [*SENTENCES[:6], "Python is widely used in science."]
    keep_js = parse_step({"c4_quality": {"filter_javascript": False, "filter_policy": False}})
    assert (
        "Please enable JavaScript to view the comments on this page."
        in keep_js.apply("\n".join(web))[0].splitlines()
    )


# ---------------------------------------------------------------- line / paragraph dedup


def _sources(*names: str) -> list[str]:
    root = stdlib_dir()
    return [(root / "encodings" / f"{n}.py").read_text(encoding="utf-8") for n in names]


def test_line_dedup_removes_lines_seen_earlier_in_the_shard() -> None:
    first, second = _sources("cp1252", "cp1250")  # codecs generated from one template

    def keys(text: str) -> list[str]:
        return [" ".join(ln.split()) for ln in text.split("\n") if ln.strip()]

    result = Pipeline.from_decls(["line_dedup"]).run([first, second])
    assert result.decisions == [None, None]
    out = keys(result.texts[0]) + keys(result.texts[1])
    assert len(out) == len(set(out))  # no line left twice in the shard
    assert set(out) == set(keys(first)) | set(keys(second))  # every distinct line kept once
    assert keys(result.texts[0])[:3] == keys(first)[:3]  # first occurrences stay in place
    (st,) = result.steps
    n_lines = len(keys(first)) + len(keys(second))
    assert (st.modified, st.removed, st.unit) == (2, n_lines - len(out), "line")
    assert len(keys(second)) - len(keys(result.texts[1])) > 100  # the shared template went
    solo = Pipeline.from_decls(["line_dedup"]).run(["\n".join(LINES * 2)])
    assert solo.texts == ["\n".join(LINES)]


def test_paragraph_dedup_and_empty_documents() -> None:
    paras = _paragraphs()
    doc_a = "\n\n".join(paras[:10])
    doc_b = "\n\n".join(paras[5:15])
    result = Pipeline.from_decls(["paragraph_dedup"]).run([doc_a, doc_b, doc_a])
    assert result.texts[1] == "\n\n".join(paras[10:15])
    assert result.decisions == [None, None, ("paragraph_dedup", "too_short_after_dedup")]
    (st,) = result.steps
    assert (st.removed, st.unit, dict(st.dropped)) == (5, "paragraph", {"too_short_after_dedup": 1})
    strict = parse_step({"paragraph_dedup": {"min_words_left": 500}})
    strict.edit(doc_a)
    assert strict.apply(doc_b)[1] == "too_short_after_dedup"


def test_rule_by_rule_affixes_match_spacys_compiled_regexes() -> None:
    """The Python prefix and infix rules give what spaCy's regexes give, on real stdlib chunks."""
    splitter = spacy_splitter()
    chunks = {c for p in stdlib_files()[::20] for c in p.read_text(encoding="utf-8").split()}
    chunks |= set(topics["formatstrings"].split()) | set(KEEPER.split())
    assert len(chunks) > 5000
    for chunk in sorted(chunks):
        m = splitter.prefix_regex.match(chunk)
        assert splitter._find_prefix(chunk) == (m.end() if m else 0), chunk
        spans = [(m.start(), m.end()) for m in splitter.infix_regex.finditer(chunk)]
        assert splitter._infix_spans(chunk) == spans, chunk
