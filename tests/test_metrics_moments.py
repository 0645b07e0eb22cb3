import json

import numpy as np
import pytest

from video_retrieval.errors import UserError
from video_retrieval.metrics.moments import (
    average_precision_detection,
    evaluate,
    interpolated_ap,
    saliency_ap,
)
from video_retrieval.moments.evaluate import evaluate_files


def _gt(qid, windows, duration=150, **kw):
    return {"qid": qid, "vid": f"v{qid}", "duration": duration, "relevant_windows": windows, **kw}


def _pred(qid, windows, **kw):
    return {"qid": qid, "vid": f"v{qid}", "pred_relevant_windows": windows, **kw}


def test_perfect_prediction_scores_100():
    r = evaluate([_pred(1, [[0, 10, 0.9]])], [_gt(1, [[0, 10]])])
    b = r["brief"]
    assert b["MR-full-R1@0.3"] == b["MR-full-R1@0.5"] == b["MR-full-R1@0.7"] == 100.0
    assert b["MR-full-mAP"] == b["MR-full-mAP@0.5"] == b["MR-full-mAP@0.75"] == 100.0
    assert b["MR-full-mIoU"] == 100.0


def test_greedy_matching_and_interpolated_ap_by_hand():
    # p1 matches gt1; p2 overlaps gt1 (IoU 0.9) but gt1 is taken -> FP; p3 matches gt2.
    # precision [1, .5, .667], recall [.5, .5, 1] -> AP = .5*1 + .5*.667 = .8333 at every thd
    gt = [[0, 10], [20, 30]]
    preds = [[0, 10, 0.9], [1, 10, 0.8], [20, 30, 0.7]]
    ap = average_precision_detection(gt, preds)
    np.testing.assert_allclose(ap, np.full(10, 5 / 6))
    r = evaluate([_pred(7, preds)], [_gt(7, gt)])
    assert r["brief"]["MR-full-mAP"] == 83.33
    assert r["full"]["MR-mAP"]["0.95"] == 83.33


def test_interpolation_envelope():
    # precision dips then rises: the envelope takes the later, higher precision
    assert interpolated_ap(np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) == pytest.approx(
        5 / 6
    )
    assert interpolated_ap(np.array([0.0, 0.5]), np.array([0.0, 1.0])) == pytest.approx(0.5)


def test_score_ties_keep_submission_order():
    gt = [[20, 30]]
    assert average_precision_detection(gt, [[20, 30, 0.5], [0, 5, 0.5]])[0] == pytest.approx(1.0)
    assert average_precision_detection(gt, [[0, 5, 0.5], [20, 30, 0.5]])[0] == pytest.approx(0.5)


def test_r1_uses_best_matching_gt_and_paired_iou():
    # top-1 [21, 30] vs gt2 [20, 30]: IoU 0.9 -> hit at 0.7 and 0.9, miss at 0.95
    r = evaluate([_pred(1, [[21, 30, 1.0], [0, 10, 0.5]])], [_gt(1, [[0, 10], [20, 30]])])
    assert r["full"]["MR-R1"]["0.7"] == 100.0
    assert r["full"]["MR-R1"]["0.9"] == 100.0
    assert r["full"]["MR-R1"]["0.95"] == 0.0
    assert r["brief"]["MR-full-mIoU"] == 90.0


def test_empty_predictions_count_as_miss_and_mean_over_queries():
    preds = [_pred(1, [[0, 10, 0.9]]), _pred(2, [])]
    gts = [_gt(1, [[0, 10]]), _gt(2, [[50, 60]])]
    b = evaluate(preds, gts)["brief"]
    assert b["MR-full-R1@0.5"] == 50.0
    assert b["MR-full-mAP"] == 50.0
    assert b["MR-full-mIoU"] == 50.0


def test_only_first_ten_predictions_count_for_map():
    # the TP is listed 11th (with the highest score): cut before sorting -> AP 0
    preds = [[100 + i, 101 + i, 0.5] for i in range(10)] + [[0, 10, 0.99]]
    r = evaluate([_pred(1, preds)], [_gt(1, [[0, 10]])])
    assert r["brief"]["MR-full-mAP"] == 0.0
    # 10 FP then the TP as 10th (after sort by score it becomes first): AP 1
    preds = [[100 + i, 101 + i, 0.5] for i in range(9)] + [[0, 10, 0.99]]
    r = evaluate([_pred(1, preds)], [_gt(1, [[0, 10]])])
    assert r["brief"]["MR-full-mAP"] == 100.0
    assert r["brief"]["MR-full-R1@0.5"] == 0.0  # R1 takes row 0 as given


def test_length_buckets():
    preds = [_pred(1, [[0, 8, 1.0]]), _pred(2, [[0, 20, 1.0]])]
    gts = [_gt(1, [[0, 8]]), _gt(2, [[0, 20], [40, 44]])]
    r = evaluate(preds, gts)
    assert r["short"]["num_queries"] == 2  # q2 keeps only its [40, 44] window
    assert r["short"]["MR-mAP"]["average"] == 50.0
    assert r["middle"]["num_queries"] == 1 and r["middle"]["MR-mAP"]["average"] == 100.0
    assert r["long"]["num_queries"] == 0


def test_qid_mismatch_is_an_error():
    with pytest.raises(UserError):
        evaluate([_pred(1, [[0, 1, 1]])], [_gt(2, [[0, 1]])])
    r = evaluate([_pred(1, [[0, 1, 1]])], [_gt(1, [[0, 1]]), _gt(2, [[0, 1]])], match_number=False)
    assert r["full"]["num_queries"] == 1


def test_saliency_ap_matches_evaluator_get_ap():
    assert saliency_ap([0, 0, 1, 0], [0.1, 0.9, 0.5, 0.0]) == pytest.approx(0.5)
    assert saliency_ap([0, 1, 1, 0], [0.1, 0.9, 0.5, 0.0]) == pytest.approx(1.0)
    assert saliency_ap([0, 0, 0], [1, 2, 3]) == 0.0
    assert saliency_ap([1, 1, 1], [1, 2, 3]) == 1.0


def test_highlight_hit1_and_map_by_hand():
    gt = _gt(
        1, [[2, 6]], duration=8, relevant_clip_ids=[1, 2], saliency_scores=[[4, 4, 1], [2, 3, 4]]
    )
    pred = _pred(1, [[2, 6, 1.0]], pred_saliency_scores=[0.1, 0.9, 0.5, 0.0])
    r = evaluate([pred], [gt])
    # VeryGood: annotator APs 1, 1, 0.5
    assert r["HL-min-VeryGood"] == {"HL-mAP": 83.33, "HL-Hit1": 100.0}
    assert r["HL-min-Fair"]["HL-mAP"] == 83.33
    pred["pred_saliency_scores"] = [0.9, 0.1, 0.5, 0.0]  # argmax clip 0 is not relevant
    assert evaluate([pred], [gt])["brief"]["HL-min-VeryGood-Hit1"] == 0.0


def test_evaluate_files_roundtrip(tmp_path):
    p, g = tmp_path / "p.jsonl", tmp_path / "g.jsonl"
    p.write_text(json.dumps(_pred(3, [[0, 10, 0.9]])) + "\n")
    g.write_text(json.dumps(_gt(3, [[0, 10]])) + "\n")
    assert evaluate_files(p, g)["brief"]["MR-full-mAP"] == 100.0
    with pytest.raises(UserError):
        evaluate_files(tmp_path / "missing.jsonl", g)


def test_vr_eval_moments_prints_json(tmp_path, capsys):
    from video_retrieval.cli import main

    p, g = tmp_path / "p.jsonl", tmp_path / "g.jsonl"
    p.write_text(json.dumps(_pred(3, [[0, 4, 0.9], [20, 30, 0.5]])) + "\n")
    g.write_text(json.dumps(_gt(3, [[0, 10]])) + "\n")
    assert main(["eval", "moments", "--pred", str(p), "--gt", str(g)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["brief"]["MR-full-R1@0.3"] == 100.0  # IoU([0,4],[0,10]) = 0.4
    assert out["brief"]["MR-full-R1@0.5"] == 0.0
    assert main(["eval", "moments", "--pred", str(p), "--gt", str(g), "--table"]) == 0
    assert "MR-full-R1@0.3" in capsys.readouterr().out


def test_didemo_official_protocol_by_hand():
    from video_retrieval.metrics.moment_protocols import didemo_metrics, windows_to_didemo_ranking

    ranking = windows_to_didemo_ranking([[5, 10, 0.9], [5.2, 9.8, 0.8], [0, 30, 0.1]])
    assert ranking[:2] == [(1, 1), (0, 5)] and len(ranking) == 21 and len(set(ranking)) == 21
    row = {"qid": 1, "times": [[1, 1], [1, 1], [1, 1], [0, 0]]}
    m = didemo_metrics([{"qid": 1, "pred_relevant_windows": [[5, 10, 0.9]]}], [row])
    # ranks 1,1,1,(0,0) -> best three mean 1 -> R@1 hit; IoUs 1,1,1,0 -> top-3 mean 1
    assert m["R@1"] == 100.0 and m["R@5"] == 100.0 and m["mIoU"] == 100.0
    m = didemo_metrics([{"qid": 1, "pred_relevant_windows": [[0, 10, 0.9]]}], [row])
    # top-1 (0,1): IoU with (1,1) = 1/2, with (0,0) = 1/2 -> mIoU 50; (1,1) ranked after (0,1)
    assert m["mIoU"] == 50.0 and m["R@1"] == 0.0
