"""Hard-negative pair batching: pairs share a global batch, every item once, DDP slices agree."""

import json

import numpy as np
import pytest

from video_retrieval.errors import UserError
from video_retrieval.train.pair_sampler import PairBatchSampler, paired_order


def _blocks(order, batch):
    return {item: pos // batch for pos, item in enumerate(order)}


@pytest.mark.parametrize(
    "n,batch,n_pairs", [(1200, 64, 300), (10, 4, 5), (7, 3, 2), (100, 64, 10), (65, 64, 32)]
)
def test_paired_order_is_a_permutation_with_pairs_inside_batches(n, batch, n_pairs):
    pairs = [(2 * i, 2 * i + 1) for i in range(n_pairs)]
    order = paired_order(n, pairs, batch, np.random.default_rng(0))
    assert sorted(order) == list(range(n))
    blk = _blocks(order, batch)
    assert all(blk[a] == blk[b] for a, b in pairs)


def test_paired_order_spreads_pairs_and_reshuffles():
    pairs = [(2 * i, 2 * i + 1) for i in range(300)]
    o1 = paired_order(1200, pairs, 64, np.random.default_rng(1))
    blk = _blocks(o1, 64)
    per_batch = np.bincount([blk[a] for a, _ in pairs], minlength=19)
    assert per_batch.min() >= 15 and per_batch.max() <= 16  # 300 pairs over 18.75 batches
    o2 = paired_order(1200, pairs, 64, np.random.default_rng(2))
    assert o1 != o2


def test_unavoidable_split_only_when_blocks_cannot_hold_pairs():
    # 9 items in blocks of 3 with 4 pairs: at most 3 pairs fit whole, so exactly one is split
    pairs = [(0, 1), (2, 3), (4, 5), (6, 7)]
    order = paired_order(9, pairs, 3, np.random.default_rng(0))
    blk = _blocks(order, 3)
    assert sorted(order) == list(range(9))
    assert sum(blk[a] != blk[b] for a, b in pairs) == 1


def test_items_in_two_pairs_and_out_of_range_pairs():
    order = paired_order(6, [(0, 1), (1, 2), (3, 9), (4, 4)], 2, np.random.default_rng(0))
    assert sorted(order) == list(range(6))
    assert _blocks(order, 2)[0] == _blocks(order, 2)[1]


def test_ddp_ranks_split_each_global_batch():
    ds = list(range(50))
    pairs = [(i, i + 25) for i in range(10)]
    whole = PairBatchSampler(ds, pairs, 8, num_replicas=1, rank=0, seed=3)
    ranks = [PairBatchSampler(ds, pairs, 8, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    for epoch in (0, 1):
        for s in [whole, *ranks]:
            s.set_epoch(epoch)
        order = list(whole)
        r0, r1 = list(ranks[0]), list(ranks[1])
        assert len(r0) == len(r1) == 25
        for step in range(50 // 8):  # per-rank batch 4: global batch = both ranks' batches
            got = set(r0[4 * step : 4 * step + 4]) | set(r1[4 * step : 4 * step + 4])
            assert got == set(order[8 * step : 8 * step + 8])
        blk = _blocks(order, 8)
        assert all(blk[a] == blk[b] for a, b in pairs)
    ranks[0].set_epoch(0)
    e0 = list(ranks[0])
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != e0
    with pytest.raises(ValueError, match="divisible"):
        PairBatchSampler(ds, pairs, 7, num_replicas=2)


def test_datamodule_pair_batches_on_synthetic_world(tmp_path):
    from video_retrieval.datasets.synth_retrieval import generate_retrieval

    from video_retrieval.train.retrieval_data import RetrievalDataModule

    world = tmp_path / "w"
    generate_retrieval(world, seed=1, num_train=16, num_test=8, num_compositional=0, workers=1)
    listed = json.loads((world / "train_pairs.json").read_text())
    assert len(listed) == 4  # 16 * 0.25 / 2 direction + as many order pairs
    dm = RetrievalDataModule(
        dataset="synth", root=str(world), num_frames=4, frame_size=32, global_batch_size=4,
        pair_batches=True,
    )  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, PairBatchSampler)
    vids = dm.load_split("train").videos
    for _ in range(2):  # two epochs, different orders, pairs always together
        batches = [[vids[i].video_id for i in b["video_index"].tolist()] for b in loader]
        assert sum(len(b) for b in batches) == 16
        where = {v: k for k, b in enumerate(batches) for v in b}
        assert all(where[p["a"]] == where[p["b"]] for p in listed)
        loader.sampler.set_epoch(loader.sampler.epoch + 1)
    bad = RetrievalDataModule(
        dataset="synth", root=str(world), num_frames=4, frame_size=32, global_batch_size=4,
        pair_batches=True, expand_sentences=True,
    )  # fmt: skip
    with pytest.raises(UserError, match="expand_sentences"):
        bad.train_dataloader()
    none = RetrievalDataModule(
        dataset="synth", root=str(world), num_frames=4, frame_size=32, global_batch_size=4,
        pair_batches=True, train_pairs_file="missing.json",
    )  # fmt: skip
    with pytest.raises(UserError, match="train pairs file"):
        none.train_dataloader()
