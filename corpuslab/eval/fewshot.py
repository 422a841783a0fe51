"""Few-shot demonstrations: a fixed seeded sample per item, never the item itself.

llm-foundry draws demonstrations from one ``random.Random(fewshot_random_seed)`` shared across
the dataset, so an item's demonstrations depend on every item before it. Here each item's draw
is seeded by ``(seed, index)`` alone: the same item gets the same demonstrations whatever was
scored before it, in any batch order or subset. An item is never its own demonstration, and
neither is a *twin* (another item with the same context text), whose answer would give the
item's away.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def twin_groups(keys: Sequence[Hashable]) -> dict[int, tuple[int, ...]]:
    """Index -> the other indices with the same key (only for keys that repeat)."""
    by_key: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(i)
    out: dict[int, tuple[int, ...]] = {}
    for group in by_key.values():
        if len(group) > 1:
            for i in group:
                out[i] = tuple(j for j in group if j != i)
    return out


def fewshot_indices(
    n_items: int, index: int, k: int, seed: int, exclude: Sequence[int] = ()
) -> list[int]:
    """``k`` distinct item indices for item ``index``'s demonstrations, in prompt order.

    Drawn uniformly without replacement from all items but ``index`` and ``exclude`` (its
    twins), by a generator seeded with ``(seed, index)``. Raises ValueError when fewer than
    ``k`` items are left to draw from.
    """
    if not 0 <= index < n_items:
        raise ValueError(f"item index {index} outside [0, {n_items})")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0:
        return []
    banned = {index, *exclude}
    available = n_items - len(banned)
    if k > available:
        raise ValueError(
            f"{k} demonstrations asked for item {index}, but only {available} other items "
            "(not twins of it) exist"
        )
    rng = np.random.default_rng([seed, index])
    picked: list[int] = []
    # a permutation prefix: the first k allowed entries of one seeded shuffle
    for j in rng.permutation(n_items):
        j = int(j)
        if j not in banned:
            picked.append(j)
            if len(picked) == k:
                break
    return picked
