"""Frozen-backbone training and evaluation from the feature cache equal on-the-fly encoding.

The same synthetic world goes through ``RetrievalDataModule`` (decode + encode every batch) and
through ``vr cache --dataset synth`` + ``CachedRetrievalDataModule``; with a frozen encoder the
training loss, one optimiser step and the evaluation similarities agree within fp16 tolerance.
"""

import lightning as L
import pytest
import torch
from video_retrieval.encoders.factory import create_encoder

from video_retrieval.errors import UserError
from video_retrieval.train.cache_build import build_cache
from video_retrieval.train.cache_data import CachedRetrievalDataModule
from video_retrieval.train.cache_items import items_from_dataset
from video_retrieval.train.cache_settings import CacheSettings
from video_retrieval.train.retrieval_data import RetrievalDataModule
from video_retrieval.train.retrieval_module import RetrievalModule

FRAMES, SIZE, WORDS = 4, 32, 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from video_retrieval.datasets.synth_retrieval import generate_retrieval

    d = tmp_path_factory.mktemp("cache_train")
    world = d / "world"
    # one caption per video: both loaders then draw the same (video, caption) training pairs
    generate_retrieval(
        world, seed=3, num_train=8, num_test=6, num_compositional=0, min_captions=1,
        max_captions=1, codec="h264_lossless", workers=1,
    )  # fmt: skip
    enc = create_encoder("vr-micro", precision="fp32", seed=0)
    ckpt = enc.save_encoder(d / "micro.safetensors")
    settings = CacheSettings(
        num_frames=FRAMES, frame_size=SIZE, symmetric_window=True, max_words=WORDS
    )
    caches = {}
    for split in ("train", "test"):
        videos, captions = items_from_dataset("synth", str(world), split)
        caches[split] = d / f"cache_{split}"
        build_cache(enc, videos, captions, caches[split], settings)
    return world, ckpt, caches


def _module(ckpt, agg="seq_transformer"):
    torch.manual_seed(0)
    return RetrievalModule(
        model="vr-micro", checkpoint=str(ckpt), aggregator=agg, num_frames=FRAMES,
        max_words=WORDS, freeze_backbone=True, eval_sinkhorn=False,
    )  # fmt: skip


def _data(world, caches):
    live = RetrievalDataModule(
        dataset="synth", root=str(world), num_frames=FRAMES, frame_size=SIZE,
        symmetric_window=True, global_batch_size=4, eval_batch_size=4, shuffle=False,
    )  # fmt: skip
    cached = CachedRetrievalDataModule(
        train_cache=str(caches["train"]), val_cache=str(caches["test"]),
        global_batch_size=4, eval_batch_size=4, shuffle=False,
    )  # fmt: skip
    return live, cached


def test_training_step_from_cache_equals_live_encoding(setup):
    world, ckpt, caches = setup
    live, cached = _data(world, caches)
    live.setup("fit")
    cached.setup("fit")
    m_live, m_cache = _module(ckpt), _module(ckpt)
    b_live = next(iter(live.train_dataloader()))
    b_cache = next(iter(cached.train_dataloader()))
    vids = live.load_split("train").videos
    assert [vids[i].video_id for i in b_live["video_index"]] == [
        cached.cache("train").video_ids[i] for i in b_cache["video_index"]
    ]
    losses = []
    for m, b in ((m_live, b_live), (m_cache, b_cache)):
        opt = m.configure_optimizers()["optimizer"]
        loss = m.training_step(b, 0)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    p_live = m_live.aggregator.frame_position_embeddings.weight
    p_cache = m_cache.aggregator.frame_position_embeddings.weight
    moved = (p_live - _module(ckpt).aggregator.frame_position_embeddings.weight).abs().max()
    assert moved > 0 and (p_live - p_cache).abs().max() < 0.5 * moved


def test_evaluation_from_cache_equals_live_encoding(setup):
    world, ckpt, caches = setup
    sims = []
    for dm in _data(world, caches):
        m = _module(ckpt, agg="mean")
        trainer = L.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False,
        )  # fmt: skip
        trainer.test(m, dm, verbose=False)
        sim, t2v = m.eval_similarity["test/"]
        assert m.eval_results["test/"]["num_videos"] == 6
        sims.append((sim, t2v))
    (s_live, t_live), (s_cache, t_cache) = sims
    assert torch.equal(t_live, t_cache)
    scale = m.aggregator.logit_scale.exp().item()
    torch.testing.assert_close(s_cache, s_live, rtol=0, atol=2e-3 * scale)


def test_cache_batches_need_a_frozen_backbone(setup):
    world, ckpt, caches = setup
    _, cached = _data(world, caches)
    cached.setup("fit")
    batch = next(iter(cached.train_dataloader()))
    m = RetrievalModule(
        model="vr-micro", checkpoint=str(ckpt), aggregator="mean", num_frames=FRAMES,
        max_words=WORDS,
    )  # fmt: skip
    with pytest.raises(UserError, match="freeze_backbone"):
        m.training_step(batch, 0)
