"""Training order that puts listed hard-negative pairs into the same global batch.

In-batch contrastive training only learns what its negatives demand. A temporal-only pair (the
same frames in another order, "moves left" vs "moves right") is a negative that order-blind
features cannot separate, but with random batches of B out of N videos the partner shares the batch
with probability about B / N (5% for 64 of 1200), so the loss hardly ever asks for order. This
sampler shuffles pairs (as units) and single items every epoch and packs each global batch with
its share of whole pairs.

It is a ``DistributedSampler`` so that Lightning keeps it under DDP: every rank builds the same
global order from ``seed + epoch`` and takes items ``rank, rank + W, ...``; with a per-process
batch of B / W, global batch ``s`` is exactly ``order[s*B : (s+1)*B]`` split across the ranks, so
both members of a pair meet in the all-gathered similarity matrix.
"""

from __future__ import annotations

import math

import numpy as np
from torch.utils.data import DistributedSampler


def paired_order(
    n: int, pairs: list[tuple[int, int]], batch_size: int, rng: np.random.Generator
) -> list[int]:
    """A permutation of ``range(n)`` in which every pair lies inside one block of ``batch_size``
    (a pair is split only when a block cannot be filled otherwise: odd batch size, no singles
    left). Items in several pairs keep their first pair. Pairs are spread evenly over the blocks."""
    used: set[int] = set()
    units: list[tuple[int, int]] = []
    for a, b in pairs:
        if a != b and a not in used and b not in used and 0 <= a < n and 0 <= b < n:
            units.append((int(a), int(b)))
            used.update((a, b))
    singles = [i for i in range(n) if i not in used]
    pair_perm = [units[i] for i in rng.permutation(len(units))]
    single_perm = [singles[i] for i in rng.permutation(len(singles))]
    if batch_size < 2:
        return [i for u in pair_perm for i in u] + single_perm
    n_batches = max(1, math.ceil(n / batch_size))
    spaces = [min(batch_size, n - b * batch_size) for b in range(n_batches)]
    room_after = np.cumsum([c // 2 for c in spaces][::-1])[::-1].tolist()[1:] + [0]
    order: list[int] = []
    carry: list[int] = []  # partners of pairs split by a block boundary (only when unavoidable)
    pi = si = 0
    for b, space in enumerate(spaces):
        block, carry = carry[:space], carry[space:]
        free, pairs_left, singles_left = (
            space - len(block),
            len(pair_perm) - pi,
            len(single_perm) - si,
        )
        due = round(len(pair_perm) * (b + 1) / n_batches) - pi  # spread pairs evenly
        lo = max(
            -(-(free - singles_left) // 2),  # too few singles to fill the rest
            pairs_left - room_after[b],  # later blocks cannot hold all the pairs left
        )
        take = max(0, min(max(due, lo), free // 2, pairs_left))
        block += [i for u in pair_perm[pi : pi + take] for i in u]
        pi += take
        fill = min(space - len(block), len(single_perm) - si)
        block += single_perm[si : si + fill]
        si += fill
        while len(block) < space and pi < len(pair_perm):  # odd room, no singles: split one
            a, c = pair_perm[pi]
            pi += 1
            take_both = space - len(block) >= 2
            block += [a, c] if take_both else [a]
            carry += [] if take_both else [c]
        order += [block[i] for i in rng.permutation(len(block))]
    return order


class PairBatchSampler(DistributedSampler):
    """Per-epoch shuffled order with ``pairs`` kept inside global batches (see module doc)."""

    def __init__(
        self,
        dataset,
        pairs: list[tuple[int, int]],
        global_batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        if global_batch_size % num_replicas:
            raise ValueError(f"global batch {global_batch_size} not divisible by {num_replicas}")
        self.pairs = list(pairs)
        self.global_batch_size = int(global_batch_size)

    def global_order(self) -> list[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        order = paired_order(len(self.dataset), self.pairs, self.global_batch_size, rng)
        pad = self.total_size - len(order)  # every rank gets the same number of items
        return order + order[:pad]

    def __iter__(self):
        return iter(self.global_order()[self.rank : self.total_size : self.num_replicas])
