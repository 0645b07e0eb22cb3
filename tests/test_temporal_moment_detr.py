import numpy as np
import pytest
import torch
from video_retrieval.temporal.moment_detr import (
    MomentDETR,
    sine_position_embedding,
    temporal_endpoint_features,
)
from video_retrieval.temporal.moment_loss import MomentCriterion
from video_retrieval.temporal.moment_matcher import (
    HungarianMatcher,
    generalized_temporal_iou,
    span_cxw_to_se,
    span_se_to_cxw,
    temporal_iou,
    temporal_nms,
)

torch.set_num_threads(1)  # 2 shared cores: oversubscribed intra-op threads are far slower


def test_span_conversions_roundtrip():
    se = torch.tensor([[0.1, 0.5], [0.0, 1.0]])
    cxw = span_se_to_cxw(se)
    torch.testing.assert_close(cxw, torch.tensor([[0.3, 0.4], [0.5, 1.0]]))
    torch.testing.assert_close(span_cxw_to_se(cxw), se)


def test_iou_and_giou_by_hand():
    a = torch.tensor([[0.0, 2.0]])
    b = torch.tensor([[1.0, 3.0], [4.0, 5.0], [0.0, 2.0]])
    iou, _ = temporal_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([[1 / 3, 0.0, 1.0]]))
    # disjoint [0,2] vs [4,5]: hull 5, union 3 -> giou = 0 - 2/5
    g = generalized_temporal_iou(a, b)
    torch.testing.assert_close(g, torch.tensor([[1 / 3, -0.4, 1.0]]))


def test_temporal_nms():
    w = np.array([[0, 10, 0.5], [0, 9, 0.9], [20, 30, 0.7]])
    kept = temporal_nms(w, 0.5)
    np.testing.assert_allclose(kept, [[0, 9, 0.9], [20, 30, 0.7]])


def _perfect_outputs(targets_cxw, nq=5):
    b = len(targets_cxw)
    spans = torch.rand(b, nq, 2) * 0.2 + 0.1
    logits = torch.zeros(b, nq, 2)
    logits[..., 1] = 5.0  # background everywhere ...
    for i, t in enumerate(targets_cxw):
        for j, row in enumerate(t):
            q = nq - 1 - j  # put the exact target on a late query
            spans[i, q] = row
            logits[i, q] = torch.tensor([5.0, -5.0])  # ... foreground where matched
    return {"pred_logits": logits, "pred_spans": spans}


def test_matcher_assigns_exact_prediction_to_its_target():
    targets = [torch.tensor([[0.5, 0.2], [0.8, 0.1]]), torch.tensor([[0.3, 0.4]])]
    out = _perfect_outputs(targets)
    idx = HungarianMatcher()(out, targets)
    src, tgt = idx[0]
    assert dict(zip(tgt.tolist(), src.tolist())) == {0: 4, 1: 3}
    assert idx[1][0].tolist() == [4] and idx[1][1].tolist() == [0]


def test_perfect_prediction_has_zero_span_and_giou_loss():
    targets = [torch.tensor([[0.5, 0.2], [0.8, 0.1]]), torch.tensor([[0.3, 0.4]])]
    out = _perfect_outputs(targets)
    out["aux_outputs"] = [dict(out)]
    out["saliency_scores"] = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    crit = MomentCriterion()
    losses = crit(
        out,
        {
            "span_labels": targets,
            "saliency_pos_labels": torch.tensor([[1, 1], [0, 0]]),
            "saliency_neg_labels": torch.tensor([[0, 2], [1, 2]]),
        },
    )
    assert losses["loss_span"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_span_0"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_label"].item() < 0.01
    # margin 0.2, every pair separated by 1.0 -> hinge 0
    assert losses["loss_saliency"].item() == 0.0


def test_ce_uses_plain_mean_and_saliency_hinge_by_hand():
    crit = MomentCriterion()
    out = {
        "pred_logits": torch.zeros(1, 2, 2),  # p = 0.5 everywhere: CE = ln 2 per element
        "pred_spans": torch.tensor([[[0.5, 0.2], [0.1, 0.1]]]),
        "saliency_scores": torch.tensor([[0.0, 0.1]]),
    }
    losses = crit(
        out,
        {
            "span_labels": [torch.tensor([[0.5, 0.2]])],
            "saliency_pos_labels": torch.tensor([[1]]),
            "saliency_neg_labels": torch.tensor([[0]]),
        },
    )
    # weights: fg 1 (matched query), bg 0.1 (other); plain mean over 2 elements
    expected_ce = (1.0 + 0.1) * np.log(2) / 2
    assert losses["loss_label"].item() == pytest.approx(4 * expected_ce, rel=1e-5)
    # hinge: 2 * max(0, 0.2 + 0.0 - 0.1) / 1 = 0.2
    assert losses["loss_saliency"].item() == pytest.approx(0.2, rel=1e-5)


def test_tef_and_positions():
    mask = torch.tensor([[True, True, False]])
    tef = temporal_endpoint_features(mask)
    torch.testing.assert_close(tef, torch.tensor([[[0.0, 0.5], [0.5, 1.0], [0.0, 0.0]]]))
    pos = sine_position_embedding(mask, 8)
    assert pos.shape == (1, 3, 8)
    # channel 0 is sin(2pi * p / L) with p = 1 for the first clip of 2
    assert pos[0, 0, 0].item() == pytest.approx(np.sin(np.pi), abs=1e-4)
    assert pos[0, 0, 1].item() == pytest.approx(np.cos(np.pi), abs=1e-4)


def test_forward_shapes_and_padding_invariance():
    torch.manual_seed(0)
    m = MomentDETR(
        v_feat_dim=16, t_feat_dim=12, hidden_dim=32, num_queries=10, nheads=4, dim_feedforward=64
    ).eval()
    v = torch.randn(2, 7, 16)
    vm = torch.ones(2, 7, dtype=torch.bool)
    vm[1, 5:] = False
    t = torch.randn(2, 4, 12)
    tm = torch.ones(2, 4, dtype=torch.bool)
    tm[0, 3:] = False
    out = m(v, vm, t, tm)
    assert out["pred_logits"].shape == (2, 10, 2)
    assert out["pred_spans"].shape == (2, 10, 2)
    assert out["saliency_scores"].shape == (2, 7)
    assert len(out["aux_outputs"]) == 1
    assert ((out["pred_spans"] > 0) & (out["pred_spans"] < 1)).all()
    # the padded clips of sample 1 do not change its outputs
    out2 = m(v[1:, :5], vm[1:, :5], t[1:], tm[1:])
    torch.testing.assert_close(out2["pred_spans"], out["pred_spans"][1:], atol=1e-5, rtol=1e-4)


def test_tiny_overfit_loss_decreases():
    torch.manual_seed(0)
    m = MomentDETR(
        v_feat_dim=8,
        t_feat_dim=8,
        hidden_dim=32,
        num_queries=5,
        nheads=4,
        dim_feedforward=64,
        input_dropout=0.0,
        dropout=0.0,
    )
    crit = MomentCriterion()
    v = torch.randn(4, 10, 8)
    vm = torch.ones(4, 10, dtype=torch.bool)
    t = torch.randn(4, 3, 8)
    tm = torch.ones(4, 3, dtype=torch.bool)
    targets = {
        "span_labels": [torch.tensor([[0.2 + 0.15 * i, 0.2]]) for i in range(4)],
        "saliency_pos_labels": torch.tensor([[2, 2], [3, 3], [5, 5], [6, 6]]),
        "saliency_neg_labels": torch.tensor([[9, 9], [0, 0], [0, 0], [0, 0]]),
    }
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4)
    first = None
    for _ in range(40):
        loss = crit(m(v, vm, t, tm), targets)["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1)
        opt.step()
    assert loss.item() < 0.5 * first
