"""Span utilities and the Hungarian matcher of Moment-DETR.

Spans are 1-D intervals. Two encodings are used:

* ``cxw``: normalised (centre, width) in [0, 1] — what the DETR span head predicts;
* ``se``: (start, end), normalised or in seconds.

The matcher assigns each ground-truth window of a sample to one of the N predicted moments
by minimising ``C = w_l1 * |s_pred - s_gt|_1 (cxw) - w_giou * GIoU(se) - w_fg * p_fg`` with
``scipy.optimize.linear_sum_assignment`` (one problem per sample, on CPU, no grad).
Foreground is class index 0 (Moment-DETR convention).
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from scipy.optimize import linear_sum_assignment
from torch import nn

FOREGROUND = 0


def span_cxw_to_se(spans: torch.Tensor) -> torch.Tensor:
    """(centre, width) -> (start, end), last dim 2."""
    cx, w = spans.unbind(-1)
    return torch.stack([cx - 0.5 * w, cx + 0.5 * w], dim=-1)


def span_se_to_cxw(spans: torch.Tensor) -> torch.Tensor:
    """(start, end) -> (centre, width), last dim 2."""
    s, e = spans.unbind(-1)
    return torch.stack([(s + e) * 0.5, e - s], dim=-1)


def temporal_iou(spans1: torch.Tensor, spans2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of (start, end) spans: [N,2] x [M,2] -> (iou [N,M], union [N,M]).

    The union is ``len1 + len2 - inter``; an empty union gives IoU 0.
    """
    len1 = (spans1[:, 1] - spans1[:, 0]).clamp(min=0)
    len2 = (spans2[:, 1] - spans2[:, 0]).clamp(min=0)
    left = torch.maximum(spans1[:, None, 0], spans2[None, :, 0])
    right = torch.minimum(spans1[:, None, 1], spans2[None, :, 1])
    inter = (right - left).clamp(min=0)
    union = len1[:, None] + len2[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
    return iou, union


def generalized_temporal_iou(spans1: torch.Tensor, spans2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalised IoU of (start, end) spans: IoU - (|hull| - |union|) / |hull|."""
    iou, union = temporal_iou(spans1, spans2)
    left = torch.minimum(spans1[:, None, 0], spans2[None, :, 0])
    right = torch.maximum(spans1[:, None, 1], spans2[None, :, 1])
    hull = (right - left).clamp(min=0)
    penalty = torch.where(hull > 0, (hull - union) / hull.clamp(min=1e-12), torch.zeros_like(hull))
    return iou - penalty


def temporal_iou_np(spans1, spans2) -> np.ndarray:
    """NumPy pairwise IoU of (start, end) spans (true union; 0 where the union is empty)."""
    a = np.asarray(spans1, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(spans2, dtype=np.float64).reshape(-1, 2)
    len_a = np.clip(a[:, 1] - a[:, 0], 0, None)
    len_b = np.clip(b[:, 1] - b[:, 0], 0, None)
    inter = np.clip(
        np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0]),
        0,
        None,
    )
    union = len_a[:, None] + len_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def temporal_nms(windows, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy temporal NMS over rows (start, end, score): keep the best, drop rows whose IoU with
    a kept row exceeds ``iou_threshold``. Returns the kept rows sorted by descending score."""
    w = np.asarray(windows, dtype=np.float64).reshape(-1, 3)
    if len(w) == 0:
        return w
    order = np.argsort(-w[:, 2], kind="stable")
    w = w[order]
    kept: list[int] = []
    for i in range(len(w)):
        if kept and temporal_iou_np(w[i : i + 1, :2], w[kept, :2]).max() > iou_threshold:
            continue
        kept.append(i)
        if max_keep is not None and len(kept) >= max_keep:
            break
    return w[kept]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of targets to predicted moments (Moment-DETR costs 10 / 1 / 4)."""

    def __init__(self, cost_span: float = 10.0, cost_giou: float = 1.0, cost_class: float = 4.0):
        super().__init__()
        self.cost_span = cost_span
        self.cost_giou = cost_giou
        self.cost_class = cost_class

    @torch.no_grad()
    def forward(
        self, outputs: dict, targets: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """outputs: ``pred_logits`` [B,N,2], ``pred_spans`` [B,N,2] (cxw, after sigmoid).
        targets: per sample a [n_i,2] tensor of normalised (cx, w) windows.
        Returns per sample (pred_idx, tgt_idx) int64 tensors of equal length min(N, n_i)."""
        logits = outputs["pred_logits"]
        spans = outputs["pred_spans"]
        bsz = logits.shape[0]
        # every predicted moment of the batch against every target of the batch
        prob = rearrange(logits, "b query cls -> (b query) cls").float().softmax(-1)[:, FOREGROUND]
        out_spans = rearrange(spans, "b query cxw -> (b query) cxw").float()
        sizes = [len(t) for t in targets]
        if sum(sizes) == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return [(empty, empty) for _ in range(bsz)]
        tgt = torch.cat([t.to(out_spans) for t in targets])
        cost = (
            self.cost_span * torch.cdist(out_spans, tgt, p=1)
            - self.cost_giou
            * generalized_temporal_iou(span_cxw_to_se(out_spans), span_cxw_to_se(tgt))
            - self.cost_class * prob[:, None]
        )
        cost = rearrange(cost, "(b query) target -> b query target", b=bsz).cpu()
        result = []
        # sample i's block: its own queries against its own targets
        for i, c in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(c[i].numpy())
            result.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return result
