"""Clip windows, aggregator-pooled clip features, clip captions and fine-tuning from a checkpoint
(the moment head's motion-aware clip stream)."""

import json

import numpy as np
import pytest
import torch
from video_retrieval.datasets.moments import moment_clip_captions

from video_retrieval.errors import UserError
from video_retrieval.media.write import write_video
from video_retrieval.models.assets import demo_retrieval_checkpoint
from video_retrieval.moments.features import FeatureCache, clip_features, clip_windows

torch.set_num_threads(1)
DEMO = demo_retrieval_checkpoint()


def test_clip_windows_exact_indices():
    ts = np.arange(20) * 0.5  # 2 fps, 10 s
    w = clip_windows(ts, 5, 2.0, context=1.0)
    assert [list(x) for x in w] == [
        [0, 1, 2, 3, 4, 5],  # [-1, 3)
        [2, 3, 4, 5, 6, 7, 8, 9],  # [1, 5)
        [6, 7, 8, 9, 10, 11, 12, 13],
        [10, 11, 12, 13, 14, 15, 16, 17],
        [14, 15, 16, 17, 18, 19],  # [7, 11)
    ]
    assert [list(x) for x in clip_windows(ts, 5, 2.0)] == [
        list(range(4 * i, 4 * i + 4)) for i in range(5)
    ]
    # a clip without a frame takes the one nearest its centre
    assert [list(x) for x in clip_windows(np.array([0.0, 0.5]), 2, 2.0)] == [[0, 1], [1]]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    frames = np.full((40, 32, 32, 3), 20, np.uint8)
    for t in range(40):  # a square sliding right: every frame differs
        frames[t, 10:20, t // 2 : t // 2 + 10] = (230, 40, 40)
    write_video(root / "v.mp4", frames, fps=4)
    return root / "v.mp4"


def test_aggregator_pooling_equals_direct_embedding(video):
    from video_retrieval.encoders.factory import create_encoder
    from video_retrieval.temporal import build_aggregator
    from video_retrieval.temporal.features import VideoFeatures

    from video_retrieval.media.decode import load_frames

    torch.manual_seed(0)
    enc = create_encoder("vr-tiny", precision="fp32").eval()
    agg = build_aggregator("seq_transformer", enc.embed_dim, max_frames=8).eval()
    feats, times, dur = clip_features(
        enc, video, 2.0, frames_per_clip=4, aggregator=agg, context=1.0
    )
    assert feats.shape == (5, enc.embed_dim)
    np.testing.assert_allclose(times[:, 0], [0, 2, 4, 6, 8])
    fr = load_frames(str(video), fps=2.0, size=enc.image_size)
    emb, _ = enc.encode_frames(fr.pixels[fr.mask])
    emb = emb.float()  # raw, as the aggregator sees frames in training
    for i, idx in enumerate(
        [range(0, 6), range(2, 10), range(6, 14), range(10, 18), range(14, 20)]
    ):
        x = emb[list(idx)][None]
        want = agg.embed_video(VideoFeatures(x, torch.ones(1, len(idx), dtype=torch.bool)))[0]
        np.testing.assert_allclose(feats[i], want.detach().numpy(), atol=1e-5)
    # different windows, different features (a random-init encoder: they differ little)
    assert np.abs(feats[0] - feats[4]).max() > 1e-3
    # mean pooling without context is the frame stream exactly
    mean = build_aggregator("mean", enc.embed_dim, max_frames=8)
    f_mean, _, _ = clip_features(enc, video, 2.0, frames_per_clip=4, aggregator=mean)
    f_frame, _, _ = clip_features(enc, video, 2.0, frames_per_clip=4)
    np.testing.assert_allclose(f_mean, f_frame, atol=1e-5)


def test_cache_key_separates_poolings(tmp_path):
    from video_retrieval.encoders.factory import create_encoder
    from video_retrieval.temporal import build_aggregator

    enc = create_encoder("vr-tiny", precision="fp32")
    a = build_aggregator("seq_transformer", enc.embed_dim, max_frames=8)
    b = build_aggregator("seq_transformer", enc.embed_dim, max_frames=8)
    roots = {
        FeatureCache(tmp_path, enc, 2.0, 4).root,
        FeatureCache(tmp_path, enc, 2.0, 4, aggregator=a, context=1.0).root,
        FeatureCache(tmp_path, enc, 2.0, 4, aggregator=a, context=0.0).root,
        FeatureCache(tmp_path, enc, 2.0, 4, aggregator=b, context=1.0).root,  # other weights
    }
    assert len(roots) == 4
    assert FeatureCache(tmp_path, enc, 2.0, 4, aggregator=a, context=1.0).root in roots


def test_moment_clip_captions_lines():
    rows = [
        {
            "qid": 1,
            "query": "the red disc slides left",
            "vid": "a",
            "duration": 20,
            "relevant_windows": [[0, 4], [16, 20]],
        },
        {
            "qid": 2,
            "query": "a blue star grows",
            "vid": "b",
            "duration": 30,
            "relevant_windows": [[10, 12]],
        },
    ]
    lines = moment_clip_captions(rows, clip_len=2.0, context=1.0, split="train")
    got = [(x["video"], x["start"], x["end"], x["caption"]) for x in lines]
    assert got == [
        ("videos/a.mp4", 0.0, 3.0, "the red disc slides left"),
        ("videos/a.mp4", 1.0, 5.0, "the red disc slides left"),
        ("videos/a.mp4", 15.0, 19.0, "the red disc slides left"),
        ("videos/a.mp4", 17.0, 20.0, "the red disc slides left"),
        ("videos/b.mp4", 9.0, 13.0, "a blue star grows"),
    ]
    assert all(x["split"] == "train" for x in lines)
    assert len({x["video_id"] for x in lines}) == len(lines)


@pytest.mark.skipif(DEMO is None, reason="no bundled demo retrieval model")
def test_init_from_loads_the_checkpoint_weights():
    from video_retrieval.models.checkpoints import load_retrieval_model
    from video_retrieval.train.retrieval_module import RetrievalModule

    enc, agg, _ = load_retrieval_model(DEMO)
    m = RetrievalModule(model="vr-tiny", aggregator="seq_transformer", num_frames=8, init_from=DEMO)
    for k, v in agg.state_dict().items():
        torch.testing.assert_close(m.aggregator.state_dict()[k], v)
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(m.encoder.state_dict()[k], v)
    fresh = RetrievalModule(model="vr-tiny", aggregator="seq_transformer", num_frames=8)
    k = next(iter(agg.state_dict()))
    assert not torch.equal(fresh.aggregator.state_dict()[k], m.aggregator.state_dict()[k])
    with pytest.raises(UserError, match="'seq_transformer' aggregator"):
        RetrievalModule(model="vr-tiny", aggregator="mean", num_frames=8, init_from=DEMO)


@pytest.mark.skipif(DEMO is None, reason="no bundled demo retrieval model")
def test_head_on_pooled_clips_round_trips_through_the_predictor(video, tmp_path):
    import lightning as L

    from video_retrieval.moments.predictor import MomentPredictor
    from video_retrieval.train.moment_data import MomentDataModule
    from video_retrieval.train.moment_module import MomentDETRModule, predict_split

    rows = [
        {
            "qid": 0,
            "query": "a red square moves right",
            "vid": "v",
            "duration": 10,
            "relevant_windows": [[2, 6]],
        }
    ]
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match="needs a retrieval_checkpoint"):
        MomentDataModule(train_path=str(ann), clip_pooling="aggregator")
    kw = dict(
        train_path=str(ann),
        val_path=str(ann),
        video_dir=str(video.parent),
        cache_dir=str(tmp_path / "cache"),
        retrieval_checkpoint=DEMO,
        clip_pooling="aggregator",
        clip_context=1.0,
        frames_per_clip=4,
        batch_size=1,
    )
    L.seed_everything(0)
    dm = MomentDataModule(**kw)
    model = MomentDETRModule(hidden_dim=32, nheads=4, dim_feedforward=64, num_queries=4)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    meta = torch.load(ckpt, weights_only=True)["moment_meta"]
    assert (meta["clip_pooling"], meta["clip_context"]) == ("aggregator", 1.0)
    pred = MomentPredictor.from_checkpoint(ckpt)
    assert pred.pool_aggregator is not None
    out = pred.predict(video, rows[0]["query"], top=2)
    got = predict_split(model, dm, "val")[0]["pred_relevant_windows"][0]
    assert got[:2] == pytest.approx(out["moments"][0][:2], abs=1e-3)
    # the inference part alone, re-pointed at a copy of the encoder next to it (the demo assets)
    import shutil

    from video_retrieval.models.checkpoints import slim_moment_checkpoint

    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(DEMO, assets / "clips.ckpt")
    info = slim_moment_checkpoint(ckpt, assets / "head.ckpt", encoder=assets / "clips.ckpt")
    assert info["bytes"] < ckpt.stat().st_size
    src = torch.load(assets / "head.ckpt", weights_only=True)["moment_meta"]["encoder_source"]
    assert src["path"] == "clips.ckpt" and src["relative"]
    slim = MomentPredictor.from_checkpoint(assets / "head.ckpt").predict(video, rows[0]["query"])
    assert slim["moments"][0] == pytest.approx(out["moments"][0], abs=1e-5)
    # a head trained on pooled clips refuses frame features
    frame_dm = MomentDataModule(**{**kw, "clip_pooling": "frame", "clip_context": 0.0})
    frame_dm.setup("validate")
    with pytest.raises(UserError, match="clip_pooling='aggregator'"):
        predict_split(model, frame_dm, "val")


def test_query_dependent_aggregators_cannot_pool_clips():
    from video_retrieval.temporal import build_aggregator

    from video_retrieval.moments.features import check_pooling_aggregator

    check_pooling_aggregator(build_aggregator("seq_lstm", 32, max_frames=8), "x.ckpt")
    with pytest.raises(UserError, match="x.ckpt: its aggregator query_scored is query-dependent"):
        check_pooling_aggregator(build_aggregator("query_scored", 32, max_frames=8), "x.ckpt")
