"""DiDeMo moment evaluation: the official LocalizingMoments protocol, by hand, on the real annotation
sample, from the CLI and during Moment-DETR validation; Charades-STA's R@1/R@5/mIoU."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from video_retrieval.datasets.moments import load_didemo_moments

from video_retrieval.cli import main
from video_retrieval.metrics.moment_protocols import (
    DIDEMO_MOMENTS,
    charades_metrics,
    didemo_metrics,
    snap_to_segments,
    windows_to_didemo_ranking,
)

REAL = Path("/work/shared/fixtures/real")
if not REAL.is_dir():
    REAL = Path(__file__).parent / "fixtures" / "real"


def _record(aid, times, video="v.mov", nseg=6, desc="a thing happens"):
    return {
        "annotation_id": aid,
        "description": desc,
        "video": video,
        "times": times,
        "num_segments": nseg,
        "dl_link": "",
    }


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_snap_rounds_halves_up():
    # boundaries on the middle of a segment go up (Python's round() would go to the even one)
    assert snap_to_segments(2.5, 7.5) == (1, 1)
    assert snap_to_segments(12.5, 17.5) == (3, 3)
    assert snap_to_segments(5, 10) == (1, 1)
    assert snap_to_segments(7.49, 12.51) == (1, 2)
    assert snap_to_segments(0, 30) == (0, 5)
    assert snap_to_segments(0, 2.4) == (0, 0)  # shorter than half a segment: one segment
    assert snap_to_segments(26, 40) == (5, 5)  # beyond 30 s: the last segment
    assert len(DIDEMO_MOMENTS) == 21


def test_sparse_windows_fill_the_ranking_by_iou_with_the_top1():
    r = windows_to_didemo_ranking([[5, 10, 0.9]])
    assert len(r) == 21 and len(set(r)) == 21
    # IoU with (1,1): 1/2 for (0,1),(1,2); 1/3 for (0,2),(1,3); 1/4; 1/5; 1/6; then 0, each tie
    # group in the canonical order (0,0),(0,1),...,(0,5),(1,1),...
    assert r[:10] == [
        (1, 1),
        (0, 1),
        (1, 2),
        (0, 2),
        (1, 3),
        (0, 3),
        (1, 4),
        (0, 4),
        (1, 5),
        (0, 5),
    ]
    assert r[10:] == [(0, 0), (2, 2), (2, 3), (2, 4), (2, 5), (3, 3), (3, 4), (3, 5), (4, 4),
                      (4, 5), (5, 5)]  # fmt: skip
    # predicted windows keep their order; a repeat after snapping is dropped
    r = windows_to_didemo_ranking([[20, 30, 0.9], [19, 31, 0.8], [0, 5, 0.1]])
    assert r[:3] == [(4, 5), (0, 0), (3, 5)]  # (3,5): IoU 2/3 with the top-1, the highest left


def test_official_protocol_by_hand(tmp_path):
    gts = [
        _record(1, [[1, 1], [1, 1], [1, 2], [3, 3]]),
        _record(2, [[0, 0], [0, 0], [0, 0], [0, 1]]),
        # seven annotators (as in the real files): the best three count
        _record(3, [[4, 5], [4, 5], [5, 5], [4, 4], [4, 5], [3, 5], [4, 5]]),
    ]
    preds = [
        {"qid": 1, "pred_relevant_windows": [[5, 10, 0.9]]},
        {"qid": 2, "pred_relevant_windows": [[0, 4, 0.5]]},
        {"qid": 3, "pred_relevant_windows": [[20, 30, 0.8]]},
    ]
    # q1: ranking of test_sparse_windows...: ranks (1,1)->1, (1,1)->1, (1,2)->3, (3,3)->16
    #     best three 1,1,3 -> mean 5/3: not R@1, R@5; IoUs 1,1,1/2,0 -> best three mean 5/6
    # q2: [0,4] snaps to (0,0): ranks 1,1,1 -> R@1; IoUs 1,1,1 (and 1/2) -> 1
    # q3: (4,5) is rank 1 for four annotators -> R@1; IoUs best three 1 -> 1
    (tmp_path / "gt.json").write_text(json.dumps(gts))
    m = didemo_metrics(preds, load_didemo_moments(tmp_path / "gt.json"))
    assert m["R@1"] == 66.67
    assert m["R@5"] == 100.0
    assert m["mIoU"] == round(100 * (5 / 6 + 1 + 1) / 3, 2) == 94.44
    assert m["num_queries"] == 3


def test_real_sample_oracle_r1_counts_annotator_agreement(tmp_path):
    """On the real val records: predicting each query's most frequent annotator moment gives R@1
    = the share of queries where at least three annotators agree on it (the best three ranks are
    all 1 only then)."""
    rows = load_didemo_moments(REAL / "didemo_val_head40.json")
    preds = []
    agree = 0
    for r in rows:
        (a, b), n = Counter(tuple(t) for t in r["times"]).most_common(1)[0]
        agree += n >= 3
        preds.append({"qid": r["qid"], "pred_relevant_windows": [[5.0 * a, 5.0 * (b + 1), 1.0]]})
    _write(tmp_path / "pred.jsonl", preds)
    res = _eval(tmp_path / "pred.jsonl", REAL / "didemo_val_head40.json")
    assert res["protocol"] == "didemo"
    assert res["brief"]["R@1"] == round(100 * agree / len(rows), 2)
    assert res["brief"]["R@5"] >= res["brief"]["R@1"]
    assert res["num_queries"] == 40 and res["warnings"] == []


def _eval(pred, gt, *extra, capsys=None):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["eval", "moments", "--pred", str(pred), "--gt", str(gt), *extra])
    assert rc == 0
    return json.loads(buf.getvalue())


def test_cli_detects_didemo_and_scores_it(tmp_path):
    gt = tmp_path / "didemo_val.json"
    gt.write_text(json.dumps([_record(11, [[1, 1], [1, 1], [1, 1], [0, 0]]),
                              _record(12, [[2, 3], [2, 3], [2, 2], [2, 3]])]))  # fmt: skip
    pred = _write(
        tmp_path / "p.jsonl",
        [
            {"qid": 11, "pred_relevant_windows": [[5, 10, 0.9], [0, 5, 0.2]]},
            {"qid": 12, "pred_relevant_windows": [[10, 20, 0.7]]},
        ],
    )
    auto = _eval(pred, gt)
    explicit = _eval(pred, gt, "--protocol", "didemo")
    assert auto == explicit
    assert auto["brief"] == {"R@1": 100.0, "R@5": 100.0, "mIoU": 100.0}
    # the qids are the annotation ids; a string qid matches too
    pred2 = _write(tmp_path / "p2.jsonl", [{"qid": "11", "pred_relevant_windows": [[0, 5, 1]]},
                                           {"qid": "12", "pred_relevant_windows": [[10, 15, 1]]}])  # fmt: skip
    res = _eval(pred2, gt)
    # q11: (0,0) first, then (0,1)..(0,5) by IoU 1/2..1/6, then the IoU-0 group from (1,1):
    # ranks 7,7,7,1 -> best three 1,7,7, mean 5 -> R@5 only; IoUs 0,0,0,1 -> best three 1/3
    assert windows_to_didemo_ranking([[0, 5, 1]]).index((1, 1)) + 1 == 7
    # q12: (2,2) first, then (1,2) and (2,3) at IoU 1/2 in canonical order: ranks 3,3,1,3 ->
    # mean 7/3 -> R@5 only; IoUs 1/2,1/2,1,1/2 -> best three 2/3
    assert res["brief"] == {"R@1": 0.0, "R@5": 100.0, "mIoU": 50.0}
    assert main(["eval", "moments", "--pred", str(pred), "--gt", str(gt), "--protocol",
                 "qvhighlights"]) == 2  # fmt: skip


def test_charades_sta_standard_metrics(tmp_path):
    gt = tmp_path / "charades_sta_test.txt"
    gt.write_text(
        "AO8RW 0.0 6.9##a person is putting a book on a shelf.\n"
        "Y6R7T 10.0 20.0##person opens the door.\n"
        "\n"
        "Y6R7T 2.0 4.0##a person sits down.\n"
    )
    pred = _write(
        tmp_path / "p.jsonl",
        [
            # IoU([0,6],[0,6.9]) = 6/6.9 = 0.8696 -> R1@0.7 hit
            {"qid": 0, "pred_relevant_windows": [[0, 6, 0.9], [3, 9, 0.5]]},
            # first IoU([12,20],[10,20]) = 0.8; hit at 0.7
            {"qid": 1, "pred_relevant_windows": [[12, 20, 0.9]]},
            # first misses (IoU 0); the 3rd of five hits exactly (IoU 1)
            {"qid": 2, "pred_relevant_windows": [[10, 12, 0.9], [5, 6, 0.8], [2, 4, 0.7]]},
        ],
    )
    res = _eval(pred, gt)
    assert res["protocol"] == "charades"
    b = res["brief"]
    assert b["R1@0.5"] == b["R1@0.7"] == 66.67
    assert b["R5@0.5"] == b["R5@0.7"] == 100.0
    assert b["mIoU"] == round(100 * (6 / 6.9 + 0.8 + 0) / 3, 2)
    rows = [{"qid": 0, "relevant_windows": [[0, 10]]}]
    assert charades_metrics([], rows)["R5@0.3"] == 0.0  # no prediction: a miss
    # durations clip the ground truth (and the predictions) to the video
    (tmp_path / "Charades_v1_test.csv").write_text("id,length\nAO8RW,5.0\nY6R7T,30.0\n")
    res = _eval(pred, gt, "--durations", str(tmp_path / "Charades_v1_test.csv"))
    assert res["brief"]["R1@0.7"] == 66.67  # IoU([0,5],[0,5]) = 1 after clipping
    assert any("clipped" in w for w in res["warnings"])


def test_moment_detr_validation_reports_didemo_metrics(tmp_path):
    """``vr train fit --config configs/moments_didemo.yaml`` validation logs the official figures,
    equal to ``vr eval moments`` on the same predictions."""
    import lightning as L

    from video_retrieval.media.write import write_video
    from video_retrieval.train.moment_data import MomentDataModule
    from video_retrieval.train.moment_module import MomentDETRModule

    records = json.loads((REAL / "didemo_val_head40.json").read_text())[:6]
    root = tmp_path / "didemo"
    (root / "videos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in dict.fromkeys(r["video"] for r in records):
        frames = rng.integers(0, 255, size=(30, 24, 32, 3), dtype=np.uint8)
        # the real extension stays in the name; the file is an mp4 stream (the decoder probes it)
        write_video(root / "videos" / (name + ".mp4"), frames, fps=1, codec="h264")
    for split in ("train", "val", "test"):
        (root / f"{split}_data.json").write_text(json.dumps(records))
    L.seed_everything(0)
    dm = MomentDataModule(
        train_path=str(root / "train_data.json"),
        val_path=str(root / "val_data.json"),
        test_path=str(root / "test_data.json"),
        fmt="didemo",
        video_dir=str(root / "videos"),
        cache_dir=str(tmp_path / "cache"),
        clip_len=2.5,
        max_v_l=12,
        batch_size=3,
    )
    model = MomentDETRModule(
        hidden_dim=32, nheads=4, dim_feedforward=64, num_queries=4, round_multiple=5.0,
        predictions_dir=str(tmp_path / "preds"),
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, dm)
    for k in ("DiDeMo-R@1", "DiDeMo-R@5", "DiDeMo-mIoU", "MR-full-R1@0.5"):
        assert f"val/{k}" in trainer.callback_metrics
    trainer.test(model, dm)
    preds = tmp_path / "preds" / "test_preds.jsonl"
    res = _eval(preds, root / "test_data.json")
    logged = trainer.callback_metrics
    assert res["brief"]["R@1"] == pytest.approx(float(logged["test/DiDeMo-R@1"]), abs=1e-3)
    assert res["brief"]["mIoU"] == pytest.approx(float(logged["test/DiDeMo-mIoU"]), abs=1e-3)
    saved = json.loads((tmp_path / "preds" / "test_metrics.json").read_text())
    assert saved["didemo"]["R@5"] == res["brief"]["R@5"]


def test_moments_didemo_recipe_monitors_the_official_r1(tmp_path):
    """``vr train fit --config configs/moments_didemo.yaml`` end to end on stand-in videos (a tiny
    encoder and head): its checkpoint callback monitors ``val/DiDeMo-R@1``, which must exist."""
    from video_retrieval.media.write import write_video

    repo = Path(__file__).resolve().parents[1]
    records = json.loads((REAL / "didemo_val_head40.json").read_text())[6:10]
    root = tmp_path / "didemo"
    (root / "videos").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in dict.fromkeys(r["video"] for r in records):
        frames = rng.integers(0, 255, size=(30, 24, 32, 3), dtype=np.uint8)
        write_video(root / "videos" / name, frames, fps=1, codec="h264")  # under the real name
    for split in ("train", "val", "test"):
        (root / f"{split}_data.json").write_text(json.dumps(records))
    rc = main([
        "train", "fit", "--config", str(repo / "configs" / "moments_didemo.yaml"),
        *(f"--data.init_args.{s}_path={root / f'{s}_data.json'}" for s in ("train", "val", "test")),
        f"--data.init_args.video_dir={root / 'videos'}",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        "--data.init_args.encoder_model=vr-tiny", "--data.init_args.encoder_pretrained=null",
        "--data.init_args.batch_size=2",
        "--model.init_args.hidden_dim=32", "--model.init_args.dim_feedforward=64",
        "--model.init_args.nheads=4", f"--model.init_args.predictions_dir={tmp_path / 'preds'}",
        "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.enable_progress_bar=false", "--trainer.logger=false",
    ])  # fmt: skip
    assert rc == 0
    best = list((tmp_path / "run").rglob("best-*.ckpt"))
    assert best, list((tmp_path / "run").rglob("*"))
    import torch

    ck = torch.load(best[0], weights_only=True, map_location="cpu")
    cb = next(v for k, v in ck["callbacks"].items() if "ModelCheckpoint" in k)
    assert cb["monitor"] == "val/DiDeMo-R@1"


def test_moment_frequency_prior_by_hand(tmp_path, capsys):
    from video_retrieval.metrics.moment_protocols import didemo_prior_ranking

    train = tmp_path / "didemo_train.json"
    train.write_text(json.dumps([_record(1, [[1, 1], [1, 1], [1, 1], [0, 0]]),
                                 _record(2, [[1, 1], [2, 2], [2, 2], [0, 5]])]))  # fmt: skip
    # counts: (1,1) 4, (2,2) 2, (0,0) 1, (0,5) 1, the 17 others 0; ties in canonical order
    ranking = didemo_prior_ranking(load_didemo_moments(train))
    assert ranking[:6] == [(1, 1), (2, 2), (0, 0), (0, 5), (0, 1), (0, 2)]
    assert sorted(ranking) == sorted(DIDEMO_MOMENTS)
    gt = tmp_path / "didemo_val.json"
    gt.write_text(json.dumps([_record(7, [[1, 1], [1, 1], [1, 1], [3, 3]]),
                              _record(8, [[2, 2], [2, 2], [0, 0], [0, 0]]),
                              _record(9, [[0, 1], [0, 1], [0, 1], [0, 1]])]))  # fmt: skip
    # q7: ranks 1,1,1 -> R@1; IoUs 1,1,1. q8: ranks 2,2,3,3 -> best three mean 7/3 -> R@5 only;
    # the top-1 (1,1) misses both moments: IoU 0. q9: (0,1) is the first unseen moment, rank 5
    # -> R@5 only; IoU of (1,1) with (0,1) = 1/2.
    capsys.readouterr()
    assert main(["eval", "moments", "--prior", str(train), "--gt", str(gt)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["method"] == "moment_frequency_prior" and res["train_annotations"] == 2
    assert res["brief"] == {"R@1": 33.33, "R@5": 100.0, "mIoU": 50.0}
    assert res["prior"][:2] == [[1, 1], [2, 2]]
    # one of --pred / --prior; the prior is DiDeMo's
    assert main(["eval", "moments", "--gt", str(gt)]) == 2
    assert main(["eval", "moments", "--prior", str(train), "--pred", str(gt), "--gt", str(gt)]) == 2
    qvh = _write(tmp_path / "qvh.jsonl", [{"qid": 1, "vid": "v", "duration": 10,
                                           "relevant_windows": [[0, 2]]}])  # fmt: skip
    assert main(["eval", "moments", "--prior", str(train), "--gt", str(qvh)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1] == f"error: {qvh}: --prior is DiDeMo's baseline; this is qvhighlights ground truth"
    )
