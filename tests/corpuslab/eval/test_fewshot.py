"""Few-shot demonstrations: fixed by the seed, independent of other items, never leaking."""

from __future__ import annotations

import pytest

from corpuslab.eval.fewshot import fewshot_indices, twin_groups


def test_the_same_seed_gives_the_same_demonstrations() -> None:
    """A draw depends on (seed, index, item count) only; another seed gives another draw."""
    a = [fewshot_indices(50, i, 5, seed=1234) for i in range(50)]
    assert a == [fewshot_indices(50, i, 5, seed=1234) for i in range(50)]
    # scoring item 7 alone (or in another order) gives it the same demonstrations
    assert fewshot_indices(50, 7, 5, seed=1234) == a[7]
    assert [fewshot_indices(50, i, 5, seed=99) for i in range(50)] != a
    assert all(len(set(d)) == 5 for d in a)


def test_an_item_is_never_its_own_demonstration_nor_a_twins() -> None:
    """With k = every other allowed item, the item and its twins are still left out."""
    contexts = ["a", "b", "a", "c", "d", "a"]  # items 0, 2, 5 share their context
    twins = twin_groups(contexts)
    assert twins[0] == (2, 5) and 1 not in twins
    for i in range(len(contexts)):
        banned = {i, *twins.get(i, ())}
        k = len(contexts) - len(banned)
        shots = fewshot_indices(len(contexts), i, k, seed=0, exclude=twins.get(i, ()))
        assert set(shots) == set(range(len(contexts))) - banned


def test_too_few_items_is_an_error() -> None:
    with pytest.raises(ValueError, match="only 2 other items"):
        fewshot_indices(3, 0, 3, seed=0)
    assert fewshot_indices(3, 0, 0, seed=0) == []
