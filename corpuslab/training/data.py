"""Batch order: which token-file rows each rank reads at each step, independent of world size."""

from __future__ import annotations

import numpy as np
import torch


class BatchSampler:
    """Deterministic row order: each step takes the next ``global_batch`` rows of a stream.

    The stream concatenates one seeded permutation of all rows per epoch, so the rows of a step
    depend only on (seed, step, global batch), not on the world size: the data position of a
    run is its step. A step's rows are laid out as (accum, world, micro) and rank ``r`` takes
    ``[:, r, :]``: the ranks' slices are disjoint and together cover the global batch.
    """

    def __init__(self, n_rows: int, micro: int, accum: int, world_size: int, seed: int) -> None:
        if n_rows < 1:
            raise ValueError("the token file has no sequences")
        self.n_rows = n_rows
        self.micro, self.accum, self.world_size = micro, accum, world_size
        self.global_batch = micro * accum * world_size
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {
                epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
            }
        return self._perms[epoch]

    def global_rows(self, step: int) -> np.ndarray:
        """Row indices of the whole global batch of ``step`` (0-based), in stream order."""
        positions = np.arange(step * self.global_batch, (step + 1) * self.global_batch)
        rows = np.empty(self.global_batch, dtype=np.int64)
        for epoch in np.unique(positions // self.n_rows):
            mask = positions // self.n_rows == epoch
            rows[mask] = self._perm(int(epoch))[positions[mask] % self.n_rows]
        return rows

    def rank_rows(self, step: int, rank: int) -> np.ndarray:
        """Rows for ``rank`` at ``step``, shape (accum, micro): one line per micro-batch."""
        grid = self.global_rows(step).reshape(self.accum, self.world_size, self.micro)
        return grid[:, rank, :]


class DomainBalancedSampler(BatchSampler):
    """DoReMi's proxy batches: rows sampled uniformly over domains (Algorithm 1 samples from
    the uniform domain mixture and lets the weights act on the loss).

    Position ``p`` of the stream (``step * global_batch + i``) takes domain ``p % k`` and that
    domain's ``p // k``-th row in its own stream of seeded per-epoch permutations, so every
    domain fills an equal share of each batch (within one row) whatever its size, small
    domains are revisited as needed, and a step's rows do not depend on the world size.
    """

    def __init__(
        self, domains: np.ndarray, micro: int, accum: int, world_size: int, seed: int
    ) -> None:
        super().__init__(len(domains), micro, accum, world_size, seed)
        doms = np.asarray(domains)
        present = np.unique(doms)
        self.by_domain = [np.flatnonzero(doms == d) for d in present]
        self.k = len(self.by_domain)

    def global_rows(self, step: int) -> np.ndarray:
        positions = np.arange(step * self.global_batch, (step + 1) * self.global_batch)
        rows = np.empty(self.global_batch, dtype=np.int64)
        for d, members in enumerate(self.by_domain):
            mask = positions % self.k == d
            index = positions[mask] // self.k
            n = len(members)
            out = np.empty(len(index), dtype=np.int64)
            for epoch in np.unique(index // n):
                sel = index // n == epoch
                perm = np.random.default_rng([self.seed, d, int(epoch)]).permutation(n)
                out[sel] = members[perm[index[sel] % n]]
            rows[mask] = out
        return rows


def get_batch(tokens: np.ndarray, rows: np.ndarray, seq_len: int) -> tuple[torch.Tensor, ...]:
    """Inputs and targets (each (len(rows), seq_len), int64) for the given token-file rows."""
    block = torch.from_numpy(np.asarray(tokens[np.sort(rows)], dtype=np.int64))
    return block[:, :seq_len], block[:, 1 : seq_len + 1]
