"""vr localize: zero-shot moments over per-clip CLIP similarity, JSON schema, --plot PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest

from video_retrieval.cli import main
from video_retrieval.errors import UserError
from video_retrieval.media.write import write_video
from video_retrieval.moments.localize import localize


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    d = tmp_path_factory.mktemp("loc")
    x = np.full((80, 48, 64, 3), 10, np.uint8)  # 8 s at 10 fps
    x[30:50, 10:40, 10:54] = (240, 30, 30)  # a red box from 3 s to 5 s
    return write_video(d / "box.mp4", x, fps=10, gop=5)


TINY = {"model": "vr-tiny", "random_weights": True}  # tests only: random weights


def test_zero_shot_moments(video, capsys):
    res = localize(video, "a red box", top=3, **TINY)
    assert res["weights"] == {"kind": "random", "model": "vr-tiny", "seed": 0}
    assert "RANDOM weights" in capsys.readouterr().err
    assert res["method"] == "zero_shot" and res["query"] == "a red box"
    assert len(res["saliency"]) == 4  # ceil(8 s / 2 s clips)
    ms = res["moments"]
    assert 1 <= len(ms) <= 3
    assert [m["score"] for m in ms] == sorted((m["score"] for m in ms), reverse=True)
    for m in ms:
        assert 0.0 <= m["start"] < m["end"] <= 8.0 + 1e-6


def test_zero_shot_with_a_clip_encoder(video, capsys):
    import torch

    from video_retrieval.models.assets import demo_retrieval_checkpoint
    from video_retrieval.models.checkpoints import load_retrieval_model
    from video_retrieval.moments.features import clip_features

    ckpt = demo_retrieval_checkpoint()
    if ckpt is None:
        pytest.skip("no bundled retrieval model")
    res = localize(video, "a red box", top=2, clip_encoder=ckpt)
    assert res["method"] == "zero_shot" and res["features"] == "pooled_clips"
    assert len(res["saliency"]) == 4
    enc, agg, _ = load_retrieval_model(ckpt)
    feats, _, _ = clip_features(enc, video, 2.0, frames_per_clip=4, aggregator=agg, context=1.0)
    with torch.no_grad():
        t = enc.encode_text(enc.tokenize(["a red box"])).sentence[0].float().numpy()
    want = feats @ (t / np.linalg.norm(t))
    np.testing.assert_allclose(res["saliency"], want, atol=1e-5)
    rc = main(["localize", str(video), "a red box", "--clip-encoder", ckpt, "--json"])
    assert rc == 0 and len(json.loads(capsys.readouterr().out)["saliency"]) == 4


def test_cli_json_and_plot(video, tmp_path, capsys):
    png = tmp_path / "plot.png"
    rc = main(["localize", str(video), "a red box", "--top", "2", "--plot", str(png), "--json",
               "--model", "vr-tiny", "--random-weights"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    from video_retrieval.schemas import Localization

    assert rc == 0 and set(out) == set(Localization.model_fields)  # the one schema
    assert out["duration"] == 8.0 and out["clip_len"] == 2.0 and out["method"] == "zero_shot"
    assert out["features"] == "frames" and out["saliency_unit"] == "cosine"
    assert out["nms_iou"] == 0.5
    assert all(set(m) == {"start", "end", "score"} for m in out["moments"])
    assert all(0 <= m["score"] <= 1 for m in out["moments"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_refusals(video, tmp_path, capsys):
    with pytest.raises(UserError, match="query is empty"):
        localize(video, " ", **TINY)
    with pytest.raises(UserError, match="no such video"):
        localize(tmp_path / "missing.mp4", "a box", **TINY)
    with pytest.raises(UserError, match="--model vr-tiny has no weights"):
        localize(video, "a box", model="vr-tiny")  # never silently random
    assert main(["localize", str(video), "a box", "--checkpoint", str(tmp_path / "none.ckpt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def _result(method="head", head="QD-DETR", n=3, video="none.mp4", features=None):
    moments = [{"start": 12.0, "end": 18.0, "score": 0.9}, {"start": 12.0, "end": 20.0,
               "score": 0.8}, {"start": 38.0, "end": 40.0, "score": 0.4}]  # fmt: skip
    moments += [{"start": 10.0 + i, "end": 20.0 + i, "score": 0.3 - 0.01 * i} for i in range(n - 3)]
    res = {"video": video, "query": "the little purple star goes up " * 4, "moments": moments[:n],
           "saliency": list(np.linspace(-1, 1, 36)), "clip_len": 2.0, "duration": 72.0,
           "method": method, "features": features}  # fmt: skip
    if method == "head":
        res["head"] = head
    return res


def _texts(fig):
    """Every text the figure draws: titles, axis labels, tick labels of the axes that are on,
    legend entries."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    texts = []
    for ax in fig.axes:
        parts = [ax.title, ax._left_title, ax._right_title]
        if ax.axison:  # a twin axes' hidden x axis draws nothing
            for axis in (ax.xaxis, ax.yaxis):
                if axis.get_visible():
                    parts += [axis.label, *axis.get_ticklabels()]
        if ax.get_legend() is not None:
            parts += ax.get_legend().get_texts()
        texts += [(t.get_text(), t.get_window_extent(r)) for t in parts
                  if t.get_visible() and t.get_text().strip()]  # fmt: skip
    return texts


def test_plot_says_what_the_curve_is_and_puts_moments_on_their_score_scale():
    from video_retrieval.moments.plot import moment_figure

    fig = moment_figure(_result(), ground_truth=[[12, 20], [38, 40]], thumbnails=0)
    curve, scores = fig.axes[0], fig.axes[1]
    assert curve.get_ylabel() == "saliency logit (QD-DETR head)\nhigher = more relevant"
    assert scores.get_ylabel() == "moment score (0-1)" and scores.get_ylim() == (0, 1.12)
    # each moment is a bar from its start to its end at the height of its score
    bars = sorted(tuple(np.round(seg, 3).ravel()) for coll in scores.collections
                  for seg in coll.get_segments())  # fmt: skip
    assert bars == [(12.0, 0.8, 20.0, 0.8), (12.0, 0.9, 18.0, 0.9), (38.0, 0.4, 40.0, 0.4)]
    labels = sorted(t.get_text() for t in scores.texts)
    assert labels == ["#1 0.90", "#2 0.80", "#3 0.40"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["saliency logit (QD-DETR head), higher = more relevant", "ground truth",
                      "#1 moment (at its score)", "other moments"]  # fmt: skip
    # the legend sits below the axes, not over the data
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    assert fig.legends[0].get_window_extent(r).y1 <= curve.get_window_extent(r).y0 + 1
    assert curve.get_xlabel() == "time (s)"
    for features, words in (("frames", "query-clip cosine\n(zero-shot, CLIP frames)"),
                            ("pooled_clips", "(zero-shot, pooled clips)"),
                            ("index_frames", "(zero-shot, index frames)")):  # fmt: skip
        f = moment_figure(_result("zero_shot", features=features), thumbnails=0)
        assert words in f.axes[0].get_ylabel()
    moment_detr = moment_figure(_result(head="Moment-DETR"), thumbnails=0)
    assert moment_detr.axes[0].get_ylabel().startswith("saliency logit (Moment-DETR head)")


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    x = np.full((144, 48, 64, 3), 10, np.uint8)  # 72 s at 2 fps
    x[24:40, 10:40, 10:54] = (240, 30, 30)
    return write_video(tmp_path_factory.mktemp("loc72") / "long.mp4", x, fps=2)


@pytest.mark.parametrize("n", [3, 5])
def test_plot_has_a_thumbnail_per_moment_and_no_colliding_axis_texts(long_video, n):
    from video_retrieval.moments.plot import moment_figure

    fig = moment_figure(_result(n=n, video=str(long_video)), ground_truth=[[12, 20], [38, 40]])
    texts = _texts(fig)
    for i in range(1, n + 1):  # every moment has its thumbnail (the fifth too)
        assert sum(t.startswith(f"#{i} @") for t, _ in texts) == 1
    assert len(texts) > 10
    for i, (a, ba) in enumerate(texts):
        for b, bb in texts[i + 1 :]:
            overlap_w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
            overlap_h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
            assert overlap_w <= 1 or overlap_h <= 1, (a, b)


def test_top_hit_by_hand():
    from video_retrieval.moments.localize import top_hit, window_iou

    assert window_iou((12, 18), (12, 20)) == pytest.approx(0.75)
    assert window_iou((0, 2), (2, 4)) == 0.0
    hit = top_hit(_result(), [[38, 40], [12, 20]])
    assert hit == {"iou": 0.75, "window": [12.0, 18.0], "ground_truth": [12.0, 20.0], "hit": True}
    miss = top_hit(_result(), [[14, 30]])  # [12, 18] vs [14, 30]: 4 / 18
    assert miss["hit"] is False and miss["iou"] == pytest.approx(4 / 18)
    assert top_hit(_result(), None) is None and top_hit({"moments": []}, [[0, 2]]) is None
