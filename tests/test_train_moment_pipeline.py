"""Features, cache, Lightning fit, checkpoint and predictor on three tiny generated videos."""

import json
import math

import numpy as np
import pytest
import torch

from video_retrieval.errors import UserError
from video_retrieval.media.write import write_video
from video_retrieval.moments.features import FeatureCache, clip_features

torch.set_num_threads(1)  # 2 shared cores: oversubscribed intra-op threads are far slower


def _video(path, seconds=10, fps=4, bright=(2, 6)):
    n = seconds * fps
    frames = np.full((n, 32, 32, 3), 20, np.uint8)
    a, b = bright
    frames[a * fps : b * fps, 8:24, 8:24] = (230, 40, 40)
    write_video(path, frames, fps=fps)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("momworld")
    (root / "videos").mkdir()
    rows = []
    for i, (a, b) in enumerate([(2, 6), (4, 8), (0, 4)]):
        _video(root / "videos" / f"v{i}.mp4", bright=(a, b))
        rows.append(
            {
                "qid": i,
                "query": "a red square appears",
                "vid": f"v{i}",
                "duration": 10,
                "relevant_windows": [[a, b]],
            }
        )
    for split in ("train", "val"):
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def encoder():
    from video_retrieval.encoders.factory import create_encoder

    return create_encoder("vr-tiny", precision="fp32").eval()


def test_clip_features_shapes_and_cache(world, encoder, tmp_path):
    feats, times, duration = clip_features(encoder, world / "videos" / "v0.mp4", clip_len=2.0)
    assert duration == pytest.approx(10.0, abs=0.3)
    assert feats.shape == (5, encoder.embed_dim) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(times[:, 0], [0, 2, 4, 6, 8])
    np.testing.assert_allclose(times[:, 1], [2, 4, 6, 8, 10], atol=0.3)
    # bright clips 1,2 differ from dark clip 0
    assert feats[1] @ feats[2] > feats[0] @ feats[1]
    cache = FeatureCache(tmp_path, encoder, 2.0)
    f1, _, d1 = cache.get("v0", world / "videos" / "v0.mp4")
    assert cache.path("v0").exists()
    f2, _, d2 = cache.get("v0", "/nonexistent.mp4")  # served from the npz
    np.testing.assert_array_equal(f1, f2)
    assert d1 == d2
    np.testing.assert_allclose(f1, feats, atol=1e-6)
    # another video under the same id (a regenerated world) is re-encoded, not served stale
    other = tmp_path / "other.mp4"
    _video(other, seconds=6, bright=(0, 2))
    f3, _, d3 = cache.get("v0", other)
    assert f3.shape[0] == 3 and d3 == pytest.approx(6.0, abs=0.3)
    f4, _, _ = cache.get("v0", other)  # and then cached under the new source
    np.testing.assert_array_equal(f3, f4)


def test_fit_checkpoint_and_predictor(world, tmp_path):
    import lightning as L

    from video_retrieval.moments.predictor import MomentPredictor
    from video_retrieval.train.moment_data import MomentDataModule
    from video_retrieval.train.moment_module import MomentDETRModule, predict_split

    L.seed_everything(0)
    dm = MomentDataModule(
        train_path=str(world / "train.jsonl"),
        val_path=str(world / "val.jsonl"),
        cache_dir=str(tmp_path / "cache"),
        batch_size=3,
    )
    model = MomentDETRModule(
        hidden_dim=32, nheads=4, dim_feedforward=64, num_queries=4, round_multiple=2.0, lr=1e-3
    )
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        gradient_clip_val=0.1,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    assert "val/MR-full-mAP" in trainer.callback_metrics
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    raw = torch.load(ckpt, weights_only=True, map_location="cpu")
    meta = raw["moment_meta"]
    assert meta["model_kwargs"]["v_feat_dim"] == dm.v_feat_dim
    assert meta["encoder_source"]["kind"] == "spec"

    pred = MomentPredictor.from_checkpoint(ckpt)
    out = pred.predict(world / "videos" / "v1.mp4", "a red square appears", top=3)
    moms = np.array(out["moments"])
    # up to 3, never the same window twice (a 10 s video on a 2 s grid has few distinct ones)
    assert 1 <= len(moms) <= 3 and moms.shape[1] == 3
    assert len({(s, e) for s, e, _ in moms}) == len(moms)
    assert np.all(np.diff(moms[:, 2]) <= 0)
    assert np.all(moms[:, 0] >= 0) and np.all(moms[:, 1] <= out["duration"] + 1e-6)
    assert np.all(np.mod(moms[:, :2], 2.0) == 0)  # rounded to the 2 s grid
    assert len(out["saliency"]) == 5
    # the predictor and the module agree on the same features
    rows = predict_split(model, dm, "val")
    assert rows[1]["pred_relevant_windows"][0][:2] == pytest.approx(out["moments"][0][:2])
    # a head is never scored on features normalised otherwise than in training
    other = MomentDataModule(
        train_path=str(world / "train.jsonl"),
        val_path=str(world / "val.jsonl"),
        cache_dir=str(tmp_path / "cache"),
        video_feature_norm="center",
    )
    other.setup("validate")
    with pytest.raises(UserError, match="video_feature_norm='none'"):
        predict_split(model, other, "val")
    diff = MomentDataModule(
        train_path=str(world / "train.jsonl"),
        val_path=str(world / "val.jsonl"),
        cache_dir=str(tmp_path / "cache"),
        video_feature_diff=True,
    )
    diff.setup("validate")
    assert diff.v_feat_dim == 3 * dm.v_feat_dim
    with pytest.raises(UserError, match="video_feature_diff=False"):
        predict_split(model, diff, "val")


def test_qd_detr_head_cosine_schedule_checkpoint_and_predictor(world, tmp_path):
    import lightning as L
    from video_retrieval.temporal.qd_detr import QDDETR

    from video_retrieval.moments.predictor import MomentPredictor
    from video_retrieval.train.moment_data import MomentDataModule
    from video_retrieval.train.moment_module import MomentDETRModule, load_module, predict_split

    L.seed_everything(0)
    dm = MomentDataModule(
        train_path=str(world / "train.jsonl"),
        val_path=str(world / "val.jsonl"),
        cache_dir=str(tmp_path / "cache"),
        batch_size=3,
    )
    model = MomentDETRModule(
        head="qd_detr", hidden_dim=32, nheads=4, dim_feedforward=64, num_queries=4,
        round_multiple=2.0, lr=1e-3, lr_schedule="cosine", warmup_epochs=1, min_lr_ratio=0.1,
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        gradient_clip_val=0.1,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    assert isinstance(model.model, QDDETR)
    assert "val/MR-full-mAP" in trainer.callback_metrics
    # 3 steps (one batch of 3 per epoch), 1 of warm-up: the rate ran at 1, 1, 0.55 x lr and,
    # after the last step, the schedule stands at its floor 0.1 + 0.9 * 0.5 * (1 + cos(pi))
    lr_last = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr_last == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi))), rel=1e-6)
    ckpt = tmp_path / "qd.ckpt"
    trainer.save_checkpoint(ckpt)
    meta = torch.load(ckpt, weights_only=True, map_location="cpu")["moment_meta"]
    assert meta["head"] == "qd_detr" and meta["model_kwargs"]["t2v_layers"] is None
    pred = MomentPredictor.from_checkpoint(ckpt)
    assert isinstance(pred.model, QDDETR)
    out = pred.predict(world / "videos" / "v1.mp4", "a red square appears", top=3)
    rows = predict_split(load_module(ckpt), dm, "val")
    assert rows[1]["pred_relevant_windows"][0][:2] == pytest.approx(out["moments"][0][:2])
    assert rows[1]["pred_saliency_scores"] == pytest.approx(out["saliency"], abs=1e-4)
    # the inference part alone (vr model slim-moments) keeps the head's kind and predictions
    from video_retrieval.cli import main as vr_main

    assert vr_main(["model", "slim-moments", str(ckpt), str(tmp_path / "slim.ckpt")]) == 0
    slim = MomentPredictor.from_checkpoint(tmp_path / "slim.ckpt")
    assert isinstance(slim.model, QDDETR) and slim.meta["head"] == "qd_detr"
    again = slim.predict(world / "videos" / "v1.mp4", "a red square appears", top=3)
    np.testing.assert_allclose(again["moments"], out["moments"], atol=1e-6)


def test_cosine_lr_factor_by_hand():
    from video_retrieval.train.moment_module import cosine_lr_factor

    # 10 steps, 2 of warm-up: 0.5, 1, then a half cosine over the 8 remaining steps to 0.2
    assert cosine_lr_factor(0, 10, 2, 0.2) == pytest.approx(0.5)
    assert cosine_lr_factor(1, 10, 2, 0.2) == pytest.approx(1.0)
    assert cosine_lr_factor(2, 10, 2, 0.2) == pytest.approx(1.0)
    assert cosine_lr_factor(6, 10, 2, 0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    assert cosine_lr_factor(10, 10, 2, 0.2) == pytest.approx(0.2)
    assert cosine_lr_factor(0, 4, 0) == pytest.approx(1.0)


def test_unknown_head_or_schedule_is_one_line():
    from video_retrieval.train.moment_module import MomentDETRModule

    with pytest.raises(UserError, match="head must be one of"):
        MomentDETRModule(head="cg_detr")
    with pytest.raises(UserError, match="lr_schedule must be one of"):
        MomentDETRModule(lr_schedule="linear")


@pytest.mark.parametrize(
    "name", ["synth", "synth_moment_detr", "qvhighlights", "charades", "didemo"]
)
def test_moment_configs_parse(name, capsys):
    from video_retrieval.cli.train import main

    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", f"configs/moments_{name}.yaml", "--print_config"])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "video_retrieval.train.moment_module.MomentDETRModule" in out
    assert "gradient_clip_val: 0.1" in out


def test_center_normalisation_keeps_only_temporal_change():
    from video_retrieval.moments.features import normalize_clip_features

    base = np.ones((4, 3), np.float32)
    base[2, 0] += 0.01  # clip 2 differs slightly
    out = normalize_clip_features(base, "center")
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)
    assert out[2, 0] > 0.99  # the change dominates after centring
    np.testing.assert_array_equal(normalize_clip_features(base, "none"), base)
    with pytest.raises(ValueError):
        normalize_clip_features(base, "bogus")


def test_temporal_difference_stream_by_hand():
    from video_retrieval.moments.features import add_temporal_differences

    f = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]], np.float32)
    out = add_temporal_differences(f)
    assert out.shape == (3, 6)
    np.testing.assert_array_equal(out[:, :2], f)
    s = (np.sqrt(2) + 2) / 2  # mean norm of the two differences, (-1, 1) and (0, 2)
    np.testing.assert_allclose(out[:, 2:4], np.array([[0, 0], [-1, 1], [0, 2]]) / s)  # back
    np.testing.assert_allclose(out[:, 4:], np.array([[-1, 1], [0, 2], [0, 0]]) / s)  # forward
    one = add_temporal_differences(f[:1])
    np.testing.assert_array_equal(one, [[1, 0, 0, 0, 0, 0]])


def test_motion_stream_trains_checkpoints_and_predicts(world, tmp_path):
    import lightning as L

    from video_retrieval.moments.predictor import MomentPredictor
    from video_retrieval.train.moment_data import MomentDataModule
    from video_retrieval.train.moment_module import MomentDETRModule, predict_split

    L.seed_everything(0)
    kw = dict(
        train_path=str(world / "train.jsonl"),
        val_path=str(world / "val.jsonl"),
        cache_dir=str(tmp_path / "cache"),
        batch_size=3,
    )
    plain = MomentDataModule(**kw)
    plain.setup("validate")
    dm = MomentDataModule(**kw, motion_grid=4)
    model = MomentDETRModule(
        hidden_dim=32, nheads=4, dim_feedforward=64, num_queries=4, round_multiple=2.0, lr=1e-3
    )
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, dm)
    assert dm.v_feat_dim == plain.v_feat_dim + 4 * 4 * 3  # the map follows the clip stream
    v = dm.items["val"][1]["v"]
    np.testing.assert_allclose(v[:, : plain.v_feat_dim], plain.items["val"][1]["v"], atol=1e-6)
    ckpt = tmp_path / "motion.ckpt"
    trainer.save_checkpoint(ckpt)
    meta = torch.load(ckpt, weights_only=True, map_location="cpu")["moment_meta"]
    assert meta["motion_grid"] == 4 and meta["model_kwargs"]["v_feat_dim"] == dm.v_feat_dim
    out = MomentPredictor.from_checkpoint(ckpt).predict(
        world / "videos" / "v1.mp4", "a red square appears", top=3
    )
    rows = predict_split(model, dm, "val")
    assert rows[1]["pred_relevant_windows"][0][:2] == pytest.approx(out["moments"][0][:2])
    assert rows[1]["pred_saliency_scores"] == pytest.approx(out["saliency"], abs=1e-4)
    with pytest.raises(UserError, match="motion_grid"):
        predict_split(model, plain, "val")  # a head is never fed features without its map


def test_resume_guard_takes_zero_feature_dims_as_inferred():
    """A moment config says v_feat_dim: 0 (= from the data); its checkpoint holds the dims set
    at setup. Resuming it is the same model; asking for other dims or another head is not."""
    from video_retrieval.cli.train import _inferred_hparams, config_conflicts

    class Model:  # the config's model entry as LightningCLI parses it
        class_path = "video_retrieval.train.moment_module.MomentDETRModule"

    inferred = _inferred_hparams(Model)
    assert inferred == ("v_feat_dim", "t_feat_dim")
    stored = {"v_feat_dim": 320, "t_feat_dim": 128, "head": "qd_detr", "hidden_dim": 128}
    same = {"v_feat_dim": 0, "t_feat_dim": 0, "head": "qd_detr", "hidden_dim": 128}
    assert config_conflicts(same, stored, inferred) == []
    assert config_conflicts(same, stored) == ["v_feat_dim", "t_feat_dim"]  # 0 counts elsewhere
    other = {**same, "v_feat_dim": 128, "head": "moment_detr"}
    assert config_conflicts(other, stored, inferred) == ["v_feat_dim", "head"]
