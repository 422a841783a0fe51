"""The built-in suite: ICL tasks generated deterministically from text on this machine.

Version :data:`SUITE_VERSION` (bump it, and the ``evalset`` stage revision, when a generator's
output changes). Nothing is downloaded; the same Python and the same held-out documents give
byte-identical items. Three generators, named in a suite's task entries with ``builtin:``:

``signature_docstring`` (multiple choice, 4 choices): "which docstring belongs to this
signature". The query is a C-implemented standard-library callable with its signature
(``math.isqrt(n, /)``), the choices are the first paragraph of its docstring and of three other
callables'. C callables are used because their docstrings live in compiled code, not in any
``.py`` file, so no demo source (stdlib sources, their docstrings, package READMEs) holds them;
a summary that shares six consecutive words with a standard-library ``.py`` file (pure-Python
twins such as ``_pyio``) is left out, as are summaries under six words (too short to check)
and summaries shared by two callables.

``next_sentence`` (multiple choice, 4 choices): "which sentence comes next". The query is one or
two consecutive sentences of a held-out document's prose (at most 50 words), the right choice
the sentence that follows (5 to 30 words), the distractors sentences of *other* held-out
documents of similar length (half to twice as many words).

``heldout_lm`` (language modeling): LAMBADA-style, the last word (alphabetic, 3+ letters) of a
sentence of 8+ words of held-out prose, given up to 50 words before it in its paragraph.

Prose is what remains of a document's paragraphs after dropping code blocks (indented lines,
``>>>`` prompts), underlined headings and paragraphs under 10 words, with whitespace runs
collapsed to one space; sentences are split after
``.``, ``!`` or ``?`` followed by a capital. Items are ordered by a hash of their id, so
``max_items`` keeps a stable, spread-out subset; choice order is shuffled by a generator seeded
with the item id.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
import sysconfig
import warnings
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from corpuslab.eval.tasks import Item, TaskDecl

SUITE_VERSION = 1
RESERVE_SALT = "corpuslab-eval"  # held-out slices hash ids with this salt (not a mixture's)
N_CHOICES = 4
MAX_WORDS = 30  # longest sentence a choice may be (a choice must fit a small model's window)
MAX_CONTEXT_WORDS = 50  # longest context of a next-sentence or language-modeling item
# C modules whose import has side effects or which are test fixtures
_SKIP_MODULES = frozenset({"readline", "xxsubtype", "antigravity", "this"})
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")
_WORDS = re.compile(r"\S+")


def reserved(doc_id: str, fraction: float) -> bool:
    """Whether a document falls in the held-out slice of ``fraction`` of its source.

    A hash of the id alone, salted apart from mixtures' held-out splits: the slice is the same
    in every process and for every suite, and a smaller fraction's slice lies inside a larger
    one's.
    """
    if fraction >= 1.0:
        return True
    h = hashlib.blake2b(f"{RESERVE_SALT}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < fraction


def order_key(key: str) -> bytes:
    """A fixed pseudo-random sort key: items and held-out documents are taken in this order."""
    return hashlib.blake2b(key.encode(), digest_size=8).digest()


def _rng(key: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(order_key("rng:" + key), "big"))


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def c_module_names() -> list[str]:
    """Public standard-library modules implemented in C on this interpreter, sorted."""
    dyn = Path(sysconfig.get_paths()["stdlib"]) / "lib-dynload"
    names = set(sys.builtin_module_names) | {p.name.split(".")[0] for p in dyn.glob("*.so")}
    return sorted(
        n
        for n in names
        if not n.startswith("_") and n in sys.stdlib_module_names and n not in _SKIP_MODULES
    )


def _summary(obj: object) -> str | None:
    doc = inspect.getdoc(obj)
    if not doc:
        return None
    first = " ".join(doc.strip().split("\n\n")[0].split())
    n = len(first.split())
    return first if 4 <= n <= 40 else None


def _signature(obj: Callable[..., Any]) -> str | None:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return None


def c_callables() -> list[tuple[str, str, str]]:
    """(qualified name, signature, docstring summary) of every public C callable found."""
    found: list[tuple[str, str, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for modname in c_module_names():
            try:
                mod = importlib.import_module(modname)
            except Exception:  # a C module that cannot load on this machine
                continue
            if getattr(mod, "__file__", "").endswith(".py"):
                continue
            prefix = "" if modname == "builtins" else f"{modname}."
            for name, obj in sorted(vars(mod).items()):
                if name.startswith("_"):
                    continue
                targets: list[tuple[str, Callable[..., Any]]] = []
                if inspect.isbuiltin(obj):
                    targets.append((f"{prefix}{name}", obj))
                elif isinstance(obj, type) and obj.__module__ == modname:
                    targets.append((f"{prefix}{name}", obj))
                    for attr, value in sorted(vars(obj).items()):
                        if not attr.startswith("_") and callable(value):
                            targets.append((f"{prefix}{name}.{attr}", value))
                for qual, target in targets:
                    sig, summary = _signature(target), _summary(target)
                    if sig is not None and summary is not None:
                        found.append((qual, sig, summary))
    return found


SOURCE_NGRAM = 6  # a summary sharing 6 consecutive words with a stdlib .py file is left out


@cache
def stdlib_source_ngrams(n: int = SOURCE_NGRAM) -> np.ndarray:
    """Sorted distinct hashes of every word ``n``-gram of the standard library's ``.py`` files."""
    from corpuslab.eval.decontam import NGramHasher, sorted_unique

    hasher = NGramHasher(n)
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            parts.append(hasher.hashes(path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return sorted_unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)


def in_stdlib_sources(text: str, n: int = SOURCE_NGRAM) -> bool:
    """Whether any ``n`` consecutive words of ``text`` occur in a standard-library ``.py`` file."""
    from corpuslab.eval.decontam import NGramHasher

    table = stdlib_source_ngrams(n)
    h = NGramHasher(n).hashes(text)
    if not len(h) or not len(table):
        return False
    pos = np.searchsorted(table, h)
    pos[pos == len(table)] = 0
    return bool((table[pos] == h).any())


def _shuffle(gold: str, distractors: Sequence[str], key: str) -> tuple[tuple[str, ...], int]:
    choices = [gold, *distractors]
    perm = _rng(key).permutation(len(choices))
    shuffled = tuple(choices[int(i)] for i in perm)
    return shuffled, int(np.flatnonzero(perm == 0)[0])


def _capped(items: list[Item], max_items: int | None) -> list[Item]:
    items.sort(key=lambda it: (order_key(it.id), it.id))
    return items[:max_items] if max_items else items


def signature_docstring_items(max_items: int | None = None) -> list[Item]:
    """Multiple choice: a C callable's signature, its docstring summary among three others."""
    pool = c_callables()
    counts: dict[str, int] = {}
    for _, _, summary in pool:
        counts[summary] = counts.get(summary, 0) + 1
    usable = [
        (q, s, d)
        for q, s, d in pool
        if counts[d] == 1 and len(d.split()) >= SOURCE_NGRAM and not in_stdlib_sources(d)
    ]
    summaries = [d for _, _, d in usable]
    items = []
    for qual, sig, summary in usable:
        rng = _rng(qual)
        others = [d for d in rng.permutation(summaries).tolist() if d != summary]
        choices, gold = _shuffle(summary, others[: N_CHOICES - 1], qual)
        items.append(Item(id=qual, contexts=(f"{qual}{sig}",), continuations=choices, gold=gold))
    return _capped(items, max_items)


def prose_paragraphs(text: str) -> list[str]:
    """A document's prose paragraphs, each on one line (see the module docstring)."""
    out = []
    for para in text.split("\n\n"):
        lines = [ln for ln in para.split("\n") if ln.strip()]
        if not lines or any(ln[:1].isspace() or ln.lstrip().startswith(">>>") for ln in lines):
            continue
        if any(set(ln.strip()) <= set("=-*~^#") for ln in lines):
            continue
        joined = " ".join(" ".join(lines).split())
        if len(joined.split()) >= 10:
            out.append(joined)
    return out


def sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def next_sentence_items(
    docs: Sequence[tuple[str, str]], max_items: int | None = None
) -> list[Item]:
    """Multiple choice: one or two sentences, the next one among three from other documents."""
    per_doc: list[tuple[str, list[list[str]]]] = []
    pool: list[tuple[str, str, int]] = []  # (doc id, sentence, words)
    for doc_id, text in docs:
        paras = [sentences(p) for p in prose_paragraphs(text)]
        per_doc.append((doc_id, paras))
        for para in paras:
            pool += [(doc_id, s, len(s.split())) for s in para if 5 <= len(s.split()) <= MAX_WORDS]
    items = []
    for doc_id, paras in per_doc:
        for p, para in enumerate(paras):
            for i in range(1, len(para)):
                gold = para[i]
                n = len(gold.split())
                if not 5 <= n <= MAX_WORDS:
                    continue
                context = " ".join(para[max(0, i - 2) : i])
                if len(context.split()) > MAX_CONTEXT_WORDS:
                    context = para[i - 1]
                if len(context.split()) > MAX_CONTEXT_WORDS:
                    continue
                key = f"{doc_id}#{p}.{i}"
                near = [s for d, s, w in pool if d != doc_id and n / 2 <= w <= 2 * n and s != gold]
                if len(near) < N_CHOICES - 1:
                    continue
                picks = _rng(key).choice(len(near), N_CHOICES - 1, replace=False)
                choices, g = _shuffle(gold, [near[int(j)] for j in picks], key)
                items.append(Item(id=key, contexts=(context,), continuations=choices, gold=g))
    return _capped(items, max_items)


def heldout_lm_items(docs: Sequence[tuple[str, str]], max_items: int | None = None) -> list[Item]:
    """Language modeling: the last word of a sentence given its paragraph up to that word."""
    items = []
    for doc_id, text in docs:
        for p, para in enumerate(prose_paragraphs(text)):
            done: list[str] = []
            for i, sent in enumerate(sentences(para)):
                words = sent.split()
                last = words[-1].rstrip(".!?:;,)\"'”") if words else ""
                if len(words) >= 8 and last.isalpha() and len(last) >= 3:
                    context = " ".join([*done, *words[:-1]][-MAX_CONTEXT_WORDS:])
                    items.append(
                        Item(id=f"{doc_id}#{p}.{i}", contexts=(context,), continuations=(last,))
                    )
                done += words
    return _capped(items, max_items)


def builtin_items(
    task: TaskDecl, heldout: dict[str, list[tuple[str, str]]], capped: bool = True
) -> list[Item]:
    """The items of a builtin task, in their fixed order; ``heldout`` maps sources to their
    (id, text) documents. ``capped=False`` ignores ``max_items`` (the caller caps after
    setting items aside)."""
    limit = task.max_items if capped else None
    if task.builtin == "signature_docstring":
        items = signature_docstring_items(limit)
    else:
        if task.source not in heldout:
            raise ValueError(
                f"task {task.label!r}: builtin {task.builtin!r} needs held-out documents of "
                f"{task.source!r}, which the suite does not hold out"
            )
        docs = heldout[task.source]
        if task.builtin == "next_sentence":
            items = next_sentence_items(docs, limit)
        elif task.builtin == "heldout_lm":
            items = heldout_lm_items(docs, limit)
        else:
            raise ValueError(f"unknown builtin {task.builtin!r}")
    if not items:
        raise ValueError(f"task {task.label!r}: builtin {task.builtin!r} produced no items")
    return items
