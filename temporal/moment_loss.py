"""Moment-DETR set criterion.

Per decoder layer (the last one and every auxiliary one), with its own Hungarian match:

* span L1 on matched normalised (centre, width) pairs, mean over pairs x 2 coordinates (x10);
* 1 - GIoU of matched pairs in (start, end), mean over pairs (x1);
* 2-way cross-entropy over all N queries, matched = foreground (index 0), others background,
  class weights [1, eos_coef=0.1] and a *plain mean* over the B*N elements (not divided by the
  weight sum, as Moment-DETR does) (x4);

plus, on the last layer only, the saliency hinge loss (x1, margin 0.2) over the (positive,
negative) clip index pairs of each sample: ``2 * sum(max(0, margin + s_neg - s_pos)) / (B * P)``.

QD-DETR (``qd_detr.QDDETR``, outputs with ``saliency_scores_neg``) adds to the saliency term, at
the same weight:

* the negative-pair loss: the clips of a video scored against another sample's query should not
  be salient, ``mean_b sum_i -log(1 - sigmoid(s_neg[b, i]))`` over valid clips;
* the rank-aware contrastive loss over the per-clip labels ``saliency_all_labels`` (the summed
  annotator scores, 0 outside the relevant clips): for every rank r = 1..11, the clips labelled
  >= r are positives in a softmax (temperature 0.5) over all clips of the video *and* of its
  negative pair (labelled 0); the loss is the mean negative log-probability of the positives,
  averaged over the batch (samples without positives count 0), summed over r, divided by 12.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from video_retrieval.temporal.moment_matcher import (
    FOREGROUND,
    HungarianMatcher,
    generalized_temporal_iou,
    span_cxw_to_se,
)


class MomentCriterion(nn.Module):
    def __init__(
        self,
        matcher: HungarianMatcher | None = None,
        w_span: float = 10.0,
        w_giou: float = 1.0,
        w_label: float = 4.0,
        w_saliency: float = 1.0,
        eos_coef: float = 0.1,
        saliency_margin: float = 0.2,
        rank_tau: float = 0.5,
    ):
        super().__init__()
        self.matcher = matcher or HungarianMatcher()
        self.w_span, self.w_giou, self.w_label, self.w_saliency = (
            w_span,
            w_giou,
            w_label,
            w_saliency,
        )
        self.saliency_margin = saliency_margin
        self.rank_tau = rank_tau
        weight = torch.ones(2)
        weight[1 - FOREGROUND] = eos_coef
        self.register_buffer("empty_weight", weight, persistent=False)

    def _layer_losses(self, out: dict, spans_tgt: list[torch.Tensor]) -> dict:
        indices = self.matcher(out, spans_tgt)
        logits, spans = out["pred_logits"], out["pred_spans"]
        b_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        q_idx = torch.cat([src for src, _ in indices])
        if len(q_idx):
            src = spans[b_idx, q_idx]
            tgt = torch.cat([t.to(spans)[j] for t, (_, j) in zip(spans_tgt, indices)])
            l1 = F.l1_loss(src, tgt, reduction="none").mean()
            giou = generalized_temporal_iou(span_cxw_to_se(src), span_cxw_to_se(tgt)).diag()
            l_giou = (1 - giou).mean()
        else:
            l1 = l_giou = spans.sum() * 0.0
        target = torch.full(
            logits.shape[:2], 1 - FOREGROUND, dtype=torch.long, device=logits.device
        )
        target[b_idx.to(logits.device), q_idx.to(logits.device)] = FOREGROUND
        # F.cross_entropy wants the class axis second
        ce = F.cross_entropy(
            rearrange(logits, "b query cls -> b cls query"),
            target,
            weight=self.empty_weight.to(logits),
            reduction="none",
        ).mean()
        return {"loss_span": l1, "loss_giou": l_giou, "loss_label": ce}

    def saliency_loss(self, saliency: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor):
        """saliency [B, Lv]; pos, neg [B, P] clip indices."""
        pos_s = saliency.gather(1, pos.long())
        neg_s = saliency.gather(1, neg.long())
        n = pos_s.numel()
        return torch.clamp(self.saliency_margin + neg_s - pos_s, min=0).sum() / max(n, 1) * 2

    @staticmethod
    def negative_pair_loss(saliency_neg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mean_b sum_i -log(1 - sigmoid(s))`` over valid clips (softplus(s), stable)."""
        return (F.softplus(saliency_neg) * mask.to(saliency_neg)).sum(1).mean()

    def rank_contrastive_loss(
        self, saliency: torch.Tensor, saliency_neg: torch.Tensor, labels: torch.Tensor, mask
    ) -> torch.Tensor:
        """QD-DETR's rank-aware contrastive loss (see the module doc); ``labels`` [B, Lv]."""
        m = mask.to(saliency).repeat(1, 2)
        scores = torch.cat([saliency, saliency_neg], 1)
        lab = torch.cat([labels.to(saliency), torch.zeros_like(labels, dtype=saliency.dtype)], 1)
        scores = (scores * m + (1 - m) * -1e3) / self.rank_tau
        total = scores.new_zeros(())
        for r in range(1, 12):
            pos = (lab >= r).to(scores)
            if pos.sum() == 0:
                continue
            has_pos = (pos.sum(1) > 0).to(scores)
            log_prob = scores.log_softmax(1)
            mean_pos = (pos * log_prob * m).sum(1) / (pos.sum(1) + 1e-6)
            total = total + (-mean_pos * has_pos).mean()
        return total / 12

    def forward(self, outputs: dict, targets: dict) -> dict:
        """targets: ``span_labels`` list of [n_i, 2] normalised cxw; optional
        ``saliency_pos_labels`` / ``saliency_neg_labels`` [B, P] clip indices.
        Returns weighted losses and their sum under ``loss``."""
        spans_tgt = targets["span_labels"]
        losses = {}
        main = self._layer_losses(outputs, spans_tgt)
        losses["loss_span"] = self.w_span * main["loss_span"]
        losses["loss_giou"] = self.w_giou * main["loss_giou"]
        losses["loss_label"] = self.w_label * main["loss_label"]
        total = losses["loss_span"] + losses["loss_giou"] + losses["loss_label"]
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            a = self._layer_losses(aux, spans_tgt)
            for k, w in (
                ("loss_span", self.w_span),
                ("loss_giou", self.w_giou),
                ("loss_label", self.w_label),
            ):
                losses[f"{k}_{i}"] = w * a[k]
                total = total + losses[f"{k}_{i}"]
        pos = targets.get("saliency_pos_labels")
        if pos is not None and self.w_saliency > 0:
            sal = self.saliency_loss(
                outputs["saliency_scores"], pos, targets["saliency_neg_labels"]
            )
            neg = outputs.get("saliency_scores_neg")
            if neg is not None:  # QD-DETR
                mask = outputs["video_mask"]
                neg_pair = self.negative_pair_loss(neg, mask)
                losses["loss_neg_pair"] = self.w_saliency * neg_pair
                sal = sal + neg_pair
                labels = targets.get("saliency_all_labels")
                if labels is not None:
                    rank = self.rank_contrastive_loss(outputs["saliency_scores"], neg, labels, mask)
                    losses["loss_rank_contrastive"] = self.w_saliency * rank
                    sal = sal + rank
            losses["loss_saliency"] = self.w_saliency * sal
            total = total + losses["loss_saliency"]
        losses["loss"] = total
        return losses
