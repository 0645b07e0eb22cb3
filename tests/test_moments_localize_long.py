"""Localization covers the whole video: the moment head slides over videos longer than its
trained 150 s, videos shorter than one clip get one window, top-k has no duplicates; batch mode
writes QVHighlights predictions that vr eval moments scores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from video_retrieval.cli import main
from video_retrieval.media.decode import load_frames
from video_retrieval.media.write import write_video
from video_retrieval.moments.localize import localize
from video_retrieval.moments.predictor import MomentPredictor, merge_windows

ASSETS = Path(__file__).resolve().parents[1] / "video_retrieval" / "assets"
HEAD = ASSETS / "demo_moments.ckpt"

pytestmark = pytest.mark.skipif(not HEAD.is_file(), reason="no bundled moment head")


def iou(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two synthetic moment videos (unseen seed) and the queries the head gets right on them."""
    from video_retrieval.datasets.synth_moments import generate_moments

    out = tmp_path_factory.mktemp("mworld")
    generate_moments(out, seed=777, num_videos=2, val_fraction=0.0, test_fraction=1.0,
                     min_duration=50, max_duration=70, queries_per_video=6, workers=1)  # fmt: skip
    queries = [json.loads(x) for x in (out / "test.jsonl").read_text().splitlines()]
    predictor = MomentPredictor.from_checkpoint(HEAD)
    good = []
    for q in queries:
        path = out / "videos" / f"{q['vid']}.mp4"
        top1 = predictor.predict(path, q["query"], top=1)["moments"][0]
        if len(q["relevant_windows"]) == 1 and iou(top1, q["relevant_windows"][0]) >= 0.5:
            good.append(q)
    assert good, "the bundled head finds none of the queries: it regressed"
    return out, good, predictor


def shifted_video(src: Path, dst: Path, lead_s: int) -> Path:
    """``src`` (2 fps) after ``lead_s`` seconds of its own first frame, frozen: nothing happens
    before the original video starts."""
    fr = load_frames(src)  # every frame
    pixels = fr.pixels[np.asarray(fr.mask, bool)]
    still = np.repeat(pixels[:1], int(lead_s * 2), axis=0)
    return write_video(dst, np.concatenate([still, pixels]), fps=2.0, gop=4)


@pytest.mark.parametrize("total_s", [170, 600])
def test_head_finds_a_moment_anywhere_in_a_long_video(world, tmp_path, total_s):
    out, good, predictor = world
    q = max(good, key=lambda g: g["relevant_windows"][0][1] - g["duration"])  # latest in its video
    src = out / "videos" / f"{q['vid']}.mp4"
    duration = float(q["duration"])
    lead = int(total_s - duration) // 2 * 2  # on the 2 s clip grid
    long = shifted_video(src, tmp_path / "long.mp4", lead)
    res = localize(long, q["query"], checkpoint=HEAD, top=5)
    n_clips = math.ceil(res["duration"] / 2.0 - 1e-6)
    assert res["duration"] == pytest.approx(lead + duration, abs=0.6)
    assert len(res["saliency"]) == n_clips  # saliency for every clip, not the first 75
    # windows of the trained 75 clips, stride 37 (half overlap), the last ending at the last clip:
    # the first covers clips 0-74, each next one 37 later, until the end is covered
    assert predictor.max_v_l == 75
    assert res["windows"] == 1 + math.ceil((n_clips - 75) / 37) and res["windows"] > 1
    gt = [lead + s for s in q["relevant_windows"][0]]
    assert gt[1] > 150  # not (wholly) inside the first 150 s, all one window of the head sees
    best = max(iou((m["start"], m["end"]), gt) for m in res["moments"])
    assert best >= 0.5, (gt, res["moments"])
    spans = [(m["start"], m["end"]) for m in res["moments"]]
    assert len(set(spans)) == len(spans)  # no duplicate windows
    assert all(0 <= s < e <= res["duration"] + 1e-6 for s, e in spans)
    # the saliency peaks inside the moment, not in the frozen lead-in
    sal = np.asarray(res["saliency"])
    peak = int(np.argmax(sal)) * 2.0
    assert peak >= lead - 2.0


def test_video_shorter_than_a_clip_gets_one_window(world, tmp_path):
    x = np.full((8, 64, 64, 3), 30, np.uint8)
    x[:, 20:40, 20:40] = (200, 40, 40)
    short = write_video(tmp_path / "short.mp4", x, fps=10.0)  # 0.8 s
    res = localize(short, "the red square grows", checkpoint=HEAD, top=5)
    assert len(res["saliency"]) == 1
    assert [(m["start"], m["end"]) for m in res["moments"]] == [(0.0, 0.8)]


def test_merge_windows_dedupes_and_drops_empty_windows():
    rows = np.array([[4, 8, 0.9], [4, 8, 0.8], [6, 6, 0.95], [4.0, 8.2, 0.5], [20, 30, 0.4]])
    got = merge_windows(rows, duration=60.0, clip_len=2.0, nms_iou=-1.0, windows=1)
    assert got.tolist() == [[4, 8, 0.9], [4.0, 8.2, 0.5], [20, 30, 0.4]]
    # several sliding windows: near-duplicates (IoU > 0.7) merge into the best one
    got = merge_windows(rows, duration=60.0, clip_len=2.0, nms_iou=-1.0, windows=3)
    assert got.tolist() == [[4, 8, 0.9], [20, 30, 0.4]]
    assert merge_windows(rows, 1.5, 2.0, -1.0, 1).tolist() == [[0.0, 1.5, 0.95]]


def test_batch_mode_writes_predictions_that_eval_reads(world, tmp_path, capsys):
    out, good, _ = world
    qfile = out / "test.jsonl"  # QVHighlights annotation lines: qid, query, vid
    preds = tmp_path / "preds.jsonl"
    rc = main(["localize", "--queries", str(qfile), "--video-dir", str(out / "videos"),
               "--checkpoint", str(HEAD), "--out", str(preds), "--top", "10"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    gt = [json.loads(x) for x in qfile.read_text().splitlines()]
    assert sorted(p["qid"] for p in lines) == sorted(g["qid"] for g in gt)
    for p in lines:
        assert set(p) == {"qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores"}
        assert all(len(w) == 3 and w[0] < w[1] for w in p["pred_relevant_windows"])
    capsys.readouterr()
    rc = main(["eval", "moments", "--gt", str(qfile), "--pred", str(preds), "--json"])
    metrics = json.loads(capsys.readouterr().out)
    assert rc == 0
    r1 = metrics["brief"]["MR-full-R1@0.5"]
    assert r1 >= 100.0 * len(good) / len(gt) - 1e-6  # at least the queries found above
