"""Moment retrieval and highlight detection metrics with the QVHighlights evaluator's definitions.

Follows ``standalone_eval/eval.py`` of Moment-DETR (see docs/refs):

* Predictions: jsonl rows ``{"qid", "vid", "pred_relevant_windows": [[s, e, score], ...],
  "pred_saliency_scores": [...]}``. Windows must already be sorted by descending score: R1 takes
  the first row as-is, mAP keeps the first 10 rows and then sorts them by score (stable).
* **R1@t**: the top-1 window against the ground-truth window with the highest IoU to it; a hit
  when IoU >= t. IoU for this pair is ``inter / (max(ends) - min(starts))`` (the evaluator's
  "paired" IoU, exact when the windows overlap). **mIoU** is the mean of that IoU (CG-DETR's copy).
* **mAP**: per query and per IoU threshold in 0.50:0.05:0.95, greedy matching in descending score
  (a prediction takes the highest-IoU unmatched GT clearing the threshold, else it is a false
  positive), VOC/MMAction2 interpolated AP (precision envelope summed at recall changes);
  averaged per query, then over queries; "average" = mean over the 10 thresholds.
* Length buckets short (0,10], middle (10,30], long (30,150] seconds; "full" keeps everything.
* Highlights: per-clip GT (clip_len 2 s, ``int(duration / 2)`` clips, 3 annotators) binarised at
  >= 2 / 3 / 4 (Fair / Good / VeryGood). HIT@1: the argmax clip is positive for any annotator.
  HL-mAP: per annotator AP of the clip ranking (the evaluator's ``get_ap``: sklearn PR curve,
  its forward precision interpolation, mean precision at recall changes; all-zero labels -> 0,
  all-one labels -> 1), mean over queries x annotators.
* All values in percent with 2 decimals.

Deliberate differences, for inputs the reference cannot score: a query whose prediction list is
empty counts as a miss (R1 0, IoU 0, AP 0) — the reference crashes in R1 and silently drops it
from mAP; queries without any GT window are left out of the moment metrics (the reference gives
NaN); a zero-length union gives IoU 0 instead of NaN.
"""

from __future__ import annotations

import copy

import numpy as np

from video_retrieval.errors import UserError

MAP_THRESHOLDS = [round(0.5 + 0.05 * i, 2) for i in range(10)]


R1_THRESHOLDS = [0.3] + MAP_THRESHOLDS


LENGTH_RANGES = {"short": (0, 10), "middle": (10, 30), "long": (30, 150), "full": None}


SALIENCY_LEVELS = {"Fair": 2, "Good": 3, "VeryGood": 4}


def percent(x: float) -> float:
    return float(f"{100 * x:.2f}")


def iou_cross(pred: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of each row of pred [N,2] with each row of gts [M,2] (true union)."""
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 2)
    gts = np.asarray(gts, dtype=np.float64).reshape(-1, 2)
    inter = np.clip(
        np.minimum(pred[:, None, 1], gts[None, :, 1])
        - np.maximum(pred[:, None, 0], gts[None, :, 0]),
        0,
        None,
    )
    union = (pred[:, 1] - pred[:, 0])[:, None] + (gts[:, 1] - gts[:, 0])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iou_paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU with the hull as denominator, as in the evaluator's R1."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    inter = np.clip(np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    hull = np.maximum(a[:, 1], b[:, 1]) - np.minimum(a[:, 0], b[:, 0])
    return np.divide(inter, hull, out=np.zeros_like(inter), where=hull != 0)


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-2011 style: envelope of precision, summed at the recall change points."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def average_precision_detection(gt_windows, pred_windows, thresholds=MAP_THRESHOLDS) -> np.ndarray:
    """AP of one query at each IoU threshold. pred_windows rows (s, e, score), any order."""
    gt = np.asarray(gt_windows, dtype=np.float64).reshape(-1, 2)
    preds = [list(map(float, p[:3])) for p in pred_windows]
    ap = np.zeros(len(thresholds))
    if len(preds) == 0 or len(gt) == 0:
        return ap
    preds.sort(key=lambda p: -p[2])  # stable, as list.sort in the evaluator
    n_t, n_p = len(thresholds), len(preds)
    lock = -np.ones((n_t, len(gt)), dtype=int)
    tp = np.zeros((n_t, n_p))
    fp = np.zeros((n_t, n_p))
    for k, p in enumerate(preds):
        ious = iou_cross(np.array([p[:2]]), gt)[0]
        order = np.argsort(ious, kind="stable")[::-1]
        for t, thd in enumerate(thresholds):
            for j in order:
                if ious[j] < thd:
                    fp[t, k] = 1
                    break
                if lock[t, j] >= 0:
                    continue
                tp[t, k] = 1
                lock[t, j] = k
                break
            if tp[t, k] == 0 and fp[t, k] == 0:
                fp[t, k] = 1
    tp_c = np.cumsum(tp, axis=1)
    fp_c = np.cumsum(fp, axis=1)
    recall = tp_c / len(gt)
    precision = tp_c / (tp_c + fp_c)
    for t in range(n_t):
        ap[t] = interpolated_ap(precision[t], recall[t])
    return ap


def saliency_ap(y_true, y_score) -> float:
    """The evaluator's ``get_ap`` (interpolate=True, point_11=False) without sklearn."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if len(set(y_true.tolist())) == 1:
        return 0.0 if y_true[0] == 0 else 1.0
    # sklearn.metrics.precision_recall_curve
    order = np.argsort(y_score, kind="mergesort")[::-1]
    s, t = y_score[order], y_true[order]
    distinct = np.flatnonzero(np.diff(s))
    thr_idx = np.concatenate([distinct, [len(s) - 1]])
    tps = np.cumsum(t)[thr_idx]
    fps = 1 + thr_idx - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    precision = np.concatenate([precision[::-1], [1.0]])
    recall = np.concatenate([recall[::-1], [0.0]]).astype(np.float32)
    for i in range(1, len(precision)):
        precision[i] = max(precision[i - 1], precision[i])
    idx = np.flatnonzero(np.diff(recall))
    return float(np.mean(precision[idx]))


def qid_key(qid) -> str:
    return str(qid)


def _filter_range(preds: dict, gts: dict, rng) -> tuple[dict, dict]:
    if rng is None:
        return preds, gts
    lo, hi = rng
    out_g = {}
    for q, g in gts.items():
        w = [x for x in g.get("relevant_windows") or [] if lo < x[1] - x[0] <= hi]
        if w:
            g = copy.copy(g)
            g["relevant_windows"] = w
            out_g[q] = g
    return {q: p for q, p in preds.items() if q in out_g}, out_g


def eval_moment_retrieval(preds: dict, gts: dict, max_pred_windows: int = 10) -> dict:
    """preds / gts keyed by qid; only queries with at least one GT window are scored."""
    results = {}
    for name, rng in LENGTH_RANGES.items():
        p, g = _filter_range(preds, gts, rng)
        qids = [q for q in g if g[q].get("relevant_windows")]
        if not qids:
            results[name] = {
                "MR-mAP": {**{str(t): 0.0 for t in MAP_THRESHOLDS}, "average": 0.0},
                "MR-R1": {str(t): 0.0 for t in R1_THRESHOLDS},
                "MR-mIoU": 0.0,
                "num_queries": 0,
            }
            continue
        aps = np.zeros((len(qids), len(MAP_THRESHOLDS)))
        top1_iou = np.zeros(len(qids))
        for i, q in enumerate(qids):
            gt_w = np.asarray(g[q]["relevant_windows"], dtype=np.float64).reshape(-1, 2)
            pw = list(p[q].get("pred_relevant_windows") or [])
            aps[i] = average_precision_detection(gt_w, pw[:max_pred_windows])
            if pw:
                top = np.asarray(pw[0][:2], dtype=np.float64)
                best = int(np.argmax(iou_cross(top[None], gt_w)[0]))
                top1_iou[i] = iou_paired(top[None], gt_w[best][None])[0]
        ap_t = aps.mean(0)
        m_ap = {str(t): percent(v) for t, v in zip(MAP_THRESHOLDS, ap_t)}
        m_ap["average"] = percent(float(np.mean(ap_t)))
        results[name] = {
            "MR-mAP": m_ap,
            "MR-R1": {str(t): percent(float(np.mean(top1_iou >= t))) for t in R1_THRESHOLDS},
            "MR-mIoU": percent(float(np.mean(top1_iou))),
            "num_queries": len(qids),
        }
    return results


def _gt_saliency_matrix(g: dict, clip_len: float = 2.0) -> np.ndarray:
    n = int(g["duration"] / clip_len)
    ids = np.asarray(g.get("relevant_clip_ids") or [], dtype=int)
    scores = np.asarray(g.get("saliency_scores") or [], dtype=np.float64).reshape(len(ids), -1)
    n_ann = scores.shape[1] if scores.size else 3
    if len(ids) and ids.max() >= n:
        n = int(ids.max()) + 1
    full = np.zeros((n, n_ann))
    if len(ids):
        full[ids] = scores
    return full


def eval_highlight(preds: dict, gts: dict, clip_len: float = 2.0) -> dict:
    qids = [q for q in gts if gts[q].get("saliency_scores") and q in preds]
    out = {}
    if not qids:
        return out
    full = {q: _gt_saliency_matrix(gts[q], clip_len) for q in qids}
    for name, min_score in SALIENCY_LEVELS.items():
        hits, aps = [], []
        for q in qids:
            binary = (full[q] >= min_score).astype(float)
            pred = np.asarray(preds[q].get("pred_saliency_scores") or [0.0], dtype=np.float64)
            k = int(np.argmax(pred))
            hits.append(binary[k].max() if k < len(binary) else 0.0)
            y_pred = np.zeros(len(binary))
            m = min(len(binary), len(pred))
            y_pred[:m] = pred[:m]
            for a in range(binary.shape[1]):
                aps.append(saliency_ap(binary[:, a], y_pred))
        out[f"HL-min-{name}"] = {
            "HL-mAP": percent(float(np.mean(aps))),
            "HL-Hit1": percent(float(np.mean(hits))),
        }
    return out


def evaluate(
    preds: list[dict], gts: list[dict], match_number: bool = True, clip_len: float = 2.0
) -> dict:
    """Score predictions against ground truth; returns ``{"brief": {...}, "full": {...}, ...}``.

    ``brief`` holds MR-full-R1@0.3/0.5/0.7, MR-full-mAP (average), MR-full-mAP@0.5/@0.75,
    MR-full-mIoU, MR-{short,middle,long}-mAP and, when saliency is available,
    HL-min-{Fair,Good,VeryGood}-{mAP,Hit1}.
    """
    pmap = {qid_key(p["qid"]): p for p in preds}
    gmap = {qid_key(g["qid"]): g for g in gts}
    if match_number and set(pmap) != set(gmap):
        missing = sorted(set(gmap) - set(pmap))[:5]
        extra = sorted(set(pmap) - set(gmap))[:5]
        raise UserError(
            f"prediction and ground-truth qids differ (missing predictions for {missing}, "
            f"unknown qids {extra})"
        )
    shared = set(pmap) & set(gmap)
    pmap = {q: pmap[q] for q in pmap if q in shared}
    gmap = {q: gmap[q] for q in gmap if q in shared}
    result: dict = {}
    brief: dict = {}
    if any("pred_relevant_windows" in p for p in pmap.values()):
        mr = eval_moment_retrieval(pmap, gmap)
        result.update(mr)
        full = mr["full"]
        brief.update(
            {
                "MR-full-R1@0.3": full["MR-R1"]["0.3"],
                "MR-full-R1@0.5": full["MR-R1"]["0.5"],
                "MR-full-R1@0.7": full["MR-R1"]["0.7"],
                "MR-full-mAP": full["MR-mAP"]["average"],
                "MR-full-mAP@0.5": full["MR-mAP"]["0.5"],
                "MR-full-mAP@0.75": full["MR-mAP"]["0.75"],
                "MR-full-mIoU": full["MR-mIoU"],
                "MR-short-mAP": mr["short"]["MR-mAP"]["average"],
                "MR-middle-mAP": mr["middle"]["MR-mAP"]["average"],
                "MR-long-mAP": mr["long"]["MR-mAP"]["average"],
            }
        )
    if any("pred_saliency_scores" in p for p in pmap.values()):
        hl = eval_highlight(pmap, gmap, clip_len)
        result.update(hl)
        for k, v in hl.items():
            brief[f"{k}-mAP"] = v["HL-mAP"]
            brief[f"{k}-Hit1"] = v["HL-Hit1"]
    return {"brief": dict(sorted(brief.items())), **dict(sorted(result.items()))}
