"""Incremental dedup on real near-duplicates (the stdlib codec modules, made from one template)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest

from corpuslab.dedup import DedupParams, compute_signatures, exact_duplicates, normalized_hash
from corpuslab.dedup.incremental import EXACT, KEPT, NEAR, Index, decide, in_memory
from corpuslab.dedup.lsh import find_duplicates_from_signatures

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PARAMS = DedupParams(num_perm=128, threshold=0.8, bands=16, rows=8)


@pytest.fixture(scope="module")
def docs() -> dict[str, str]:
    """Codec modules, plus exact copies (whitespace and case changed) of three of them."""
    found = {p.stem: p.read_text("utf-8") for p in sorted((STDLIB / "encodings").glob("*.py"))}
    for name in ("cp1250", "latin_1", "utf_8"):
        found[f"zz-copy-{name}"] = "  " + found[name].upper().replace(" ", "   ")
    return found


def _global(keys: list[str], texts: list[str]) -> dict[str, str]:
    """The from-scratch answer: exact dedup, then near dedup of the rest (survivor per key)."""
    exact = exact_duplicates(keys, texts)
    rest = [i for i, k in enumerate(keys) if k not in exact.drop]
    sigs = compute_signatures(keys, texts, PARAMS)
    near = find_duplicates_from_signatures([keys[i] for i in rest], sigs[rest], PARAMS)
    out = {k: k for k in keys}
    for k in exact.drop:
        out[k] = near.keep_of.get(exact.keep_of[k], exact.keep_of[k])
    for k in near.drop:
        out[k] = near.keep_of[k]
    return out


NONE = np.zeros((0, PARAMS.num_perm), np.uint64)


def _index(keys: list[str], texts: list[str], found) -> tuple[Index, np.ndarray]:  # noqa: ANN001
    """The index a first batch leaves, and its signatures (the caller keeps them)."""
    index = Index(list(keys), found.exact, found.status, found.survivor)
    return index, compute_signatures(keys, texts, PARAMS)


def _batch(index: Index, sigs: np.ndarray, keys: list[str], texts: list[str]):  # noqa: ANN202
    """Decide ``keys`` against ``index`` (whose signatures are ``sigs``), in memory."""
    digests = [normalized_hash(t) for t in texts]
    near = in_memory(sigs, compute_signatures(keys, texts, PARAMS), PARAMS)
    return decide(index, keys, digests, near)


def test_empty_index_gives_the_global_clustering(docs: dict[str, str]) -> None:
    keys, texts = list(docs), list(docs.values())
    found = _batch(Index(), NONE, keys, texts)
    expected = _global(keys, texts)
    assert dict(zip(found.keys, found.survivor, strict=True)) == expected
    assert found.status.count(EXACT) == 3  # the three copies
    assert found.status.count(NEAR) > 10  # the codec family collapses
    dropped = {k for k, s in zip(found.keys, found.status, strict=True) if s != KEPT}
    assert dropped == {k for k, s in expected.items() if s != k}


def test_new_documents_never_change_existing_decisions(docs: dict[str, str]) -> None:
    """Second batch: its duplicates of first-batch documents are dropped in favour of the
    first batch's survivors, even when a new document's key sorts first (a from-scratch run
    would keep it); first-batch decisions are untouched."""
    keys = sorted(docs)
    first = [k for k in keys if not k.startswith(("cp12", "zz-"))]
    second = [k for k in keys if k.startswith(("cp12", "zz-"))]
    texts = {k: docs[k] for k in keys}
    batch1 = _batch(Index(), NONE, first, [texts[k] for k in first])
    index, sigs = _index(first, [texts[k] for k in first], batch1)
    batch2 = _batch(index, sigs, second, [texts[k] for k in second])
    kept1 = {k for k, s in zip(batch1.keys, batch1.status, strict=True) if s == KEPT}
    for status, survivor in zip(batch2.status, batch2.survivor, strict=True):
        if status != KEPT:
            assert survivor in kept1 or survivor in batch2.keys
    # an exact copy of a first-batch document points at that document's survivor
    copy = batch2.keys.index("zz-copy-latin_1")
    assert batch2.status[copy] == EXACT
    latin = batch1.keys.index("latin_1")
    assert batch2.survivor[copy] == batch1.survivor[latin]
    # a new page whose cluster (from scratch) holds first-batch pages joins that cluster, and
    # the cluster's first-batch survivor stays its survivor
    whole = _global(keys, [texts[k] for k in keys])
    members: dict[str, set[str]] = {}
    for k, s in whole.items():
        members.setdefault(s, set()).add(k)
    joined = [k for k in second if not k.startswith("zz-") and members[whole[k]] & set(first)]
    assert joined
    for k in joined:
        i = batch2.keys.index(k)
        assert batch2.status[i] == NEAR and batch2.survivor[i] in kept1
    # re-deciding a document already in the index is refused, not silently duplicated
    with pytest.raises(ValueError, match="already in the dedup index"):
        _batch(index, sigs, first[:1], [texts[first[0]]])


def _decide(index: Index, sigs: np.ndarray, keys: list[str], docs: dict[str, str]):  # noqa: ANN202
    return _batch(index, sigs, keys, [docs[k] for k in keys])


def test_two_batches_never_drop_more_than_one(docs: dict[str, str]) -> None:
    """Deciding in two batches drops no more documents than one batch (a frozen survivor is
    never dropped; two old clusters a new document bridges both keep theirs), and the same
    exact duplicates; the later batch's keys are the smaller ones, so survivors differ."""
    keys = sorted(docs)
    half = len(keys) // 2
    one = _decide(Index(), NONE, keys, docs)
    later, earlier = keys[:half], keys[half:]
    first = _decide(Index(), NONE, earlier, docs)
    index, sigs = _index(earlier, [docs[k] for k in earlier], first)
    second = _decide(index, sigs, later, docs)
    assert 0 < first.dropped() + second.dropped() <= one.dropped()
    assert first.status.count(EXACT) + second.status.count(EXACT) == one.status.count(EXACT)
    survivors_one = {s for s, st in zip(one.survivor, one.status, strict=True) if st != KEPT}
    survivors_two = {
        s
        for batch in (first, second)
        for s, st in zip(batch.survivor, batch.status, strict=True)
        if st != KEPT
    }
    assert survivors_two != survivors_one  # the earlier batch's members stay the survivors
