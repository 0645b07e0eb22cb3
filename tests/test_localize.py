"""vr localize: zero-shot moments over per-clip CLIP similarity, JSON schema, --plot PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest

from video_retrieval.cli import main
from video_retrieval.errors import UserError
from video_retrieval.localization import localize
from video_retrieval.videowrite import write_video


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

    from video_retrieval.lit_moments import demo_retrieval_checkpoint
    from video_retrieval.model_io import load_retrieval_model
    from video_retrieval.moment_features import clip_features

    ckpt = demo_retrieval_checkpoint()
    if ckpt is None:
        pytest.skip("no bundled retrieval model")
    res = localize(video, "a red box", top=2, clip_encoder=ckpt)
    assert res["method"] == "zero_shot_pooled" and len(res["saliency"]) == 4
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
    assert rc == 0 and set(out) == {
        "video", "query", "moments", "saliency", "clip_len", "duration", "method", "weights"
    }  # fmt: skip
    assert out["duration"] == 8.0 and out["clip_len"] == 2.0 and out["method"] == "zero_shot"
    assert all(set(m) == {"start", "end", "score"} for m in out["moments"])
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
