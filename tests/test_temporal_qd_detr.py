"""QD-DETR head (temporal/qd_detr.py) and its saliency losses (temporal/moment_loss.py)."""

import math

import numpy as np
import pytest
import torch
from video_retrieval.temporal.moment_loss import MomentCriterion
from video_retrieval.temporal.qd_detr import QDDETR, anchor_sine_embedding, inverse_sigmoid

torch.set_num_threads(1)  # 2 shared cores: oversubscribed intra-op threads are far slower


def _model(**kw):
    args = dict(v_feat_dim=16, t_feat_dim=12, hidden_dim=32, num_queries=6, nheads=4,
                dim_feedforward=64)  # fmt: skip
    args.update(kw)
    return QDDETR(**args)


def _inputs(b=3, lv=7, lq=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, lv, 16, generator=g)
    t = torch.randn(b, lq, 12, generator=g)
    vm = torch.ones(b, lv, dtype=torch.bool)
    tm = torch.ones(b, lq, dtype=torch.bool)
    return v, vm, t, tm


def test_anchor_sine_embedding_by_hand():
    # dim 8: 4 channels for the centre, 4 for the width; frequencies 1, 1, 100, 100
    emb = anchor_sine_embedding(torch.tensor([[0.25, 0.5]]), 8)[0]
    c, w = 0.25 * 2 * math.pi, 0.5 * 2 * math.pi
    expected = [math.sin(c), math.cos(c), math.sin(c / 100), math.cos(c / 100),
                math.sin(w), math.cos(w), math.sin(w / 100), math.cos(w / 100)]  # fmt: skip
    np.testing.assert_allclose(emb.numpy(), expected, atol=1e-6)


def test_inverse_sigmoid_roundtrip_and_clamp():
    x = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(inverse_sigmoid(x).sigmoid(), x)
    assert inverse_sigmoid(torch.tensor([0.0])).item() == pytest.approx(math.log(1e-3), rel=1e-4)
    assert inverse_sigmoid(torch.tensor([1.0])).item() == pytest.approx(-math.log(1e-3), rel=1e-4)


def test_forward_shapes_and_padding_invariance():
    torch.manual_seed(0)
    m = _model().eval()
    v, vm, t, tm = _inputs()
    vm[1, 5:] = False
    tm[1, 3:] = False
    out = m(v, vm, t, tm)
    assert out["pred_logits"].shape == (3, 6, 2)
    assert out["pred_spans"].shape == (3, 6, 2)
    assert out["saliency_scores"].shape == (3, 7)
    assert len(out["aux_outputs"]) == 1
    assert "saliency_scores_neg" not in out  # eval: no negative pairs unless asked
    assert ((out["pred_spans"] > 0) & (out["pred_spans"] < 1)).all()
    # sample 1's padded clips and padded words change none of its outputs
    alone = m(v[1:2, :5], vm[1:2, :5], t[1:2, :3], tm[1:2, :3])
    for k in ("pred_logits", "pred_spans"):
        torch.testing.assert_close(alone[k], out[k][1:2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        alone["saliency_scores"], out["saliency_scores"][1:2, :5], atol=1e-5, rtol=1e-4
    )


def test_video_tokens_depend_on_the_query():
    torch.manual_seed(0)
    m = _model().eval()
    v, vm, t, tm = _inputs()
    a = m(v, vm, t, tm)["saliency_scores"]
    b = m(v, vm, t.flip(0), tm)["saliency_scores"]
    assert not torch.allclose(a, b)


def test_negative_pairs_are_the_video_with_the_next_samples_words():
    torch.manual_seed(0)
    m = _model().eval()
    v, vm, t, tm = _inputs()
    tm[2, 2:] = False
    out = m(v, vm, t, tm, negatives=True)
    # video 0 with the words of sample 1, video 2 with those of sample 0 (rolled by one)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        direct = m(v[i : i + 1], vm[i : i + 1], t[j : j + 1], tm[j : j + 1])["saliency_scores"]
        torch.testing.assert_close(out["saliency_scores_neg"][i : i + 1], direct,
                                   atol=1e-5, rtol=1e-4)  # fmt: skip
    m.train()
    assert "saliency_scores_neg" in m(v, vm, t, tm)  # training adds them by itself


def test_span_head_predicts_a_delta_on_each_layers_anchor():
    torch.manual_seed(0)
    m = _model().eval()
    torch.nn.init.zeros_(m.span_embed.layers[-1].weight)
    torch.nn.init.zeros_(m.span_embed.layers[-1].bias)
    v, vm, t, tm = _inputs()
    seen = []
    m.decoder[0].register_forward_hook(lambda mod, args, output: seen.append(output))
    out = m(v, vm, t, tm)
    # zero delta: the first layer's spans are the learned anchors themselves ...
    anchors = m.query_embed.weight.sigmoid()
    first = out["aux_outputs"][0]["pred_spans"]
    torch.testing.assert_close(first, anchors.expand_as(first), atol=1e-3, rtol=1e-3)
    # ... and the last layer's are the anchors refined by the first layer's MLP (logit space)
    torch.testing.assert_close(
        out["pred_spans"], (m.anchor_refine(seen[0]) + inverse_sigmoid(first)).sigmoid(),
        atol=1e-3, rtol=1e-3,
    )  # fmt: skip


def test_negative_pair_loss_by_hand():
    s_neg = torch.tensor([[0.0, math.log(3.0)], [0.0, 5.0]])
    mask = torch.tensor([[True, True], [True, False]])
    # -log(1 - sigmoid(x)): ln 2 at 0, ln 4 at ln 3; sample 2's padded clip does not count
    expected = ((math.log(2) + math.log(4)) + math.log(2)) / 2
    got = MomentCriterion.negative_pair_loss(s_neg, mask)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_rank_contrastive_loss_by_hand():
    crit = MomentCriterion()
    sal = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[0.5, -1.0]])
    labels = torch.tensor([[2.0, 0.0]])  # clip 0 scored 2 in total, clip 1 not relevant
    mask = torch.tensor([[True, True]])
    # ranks 1 and 2 have clip 0 as the one positive among the 4 clips (temperature 0.5);
    # ranks 3..11 have no positive and add nothing; the sum is divided by 12
    logits = torch.tensor([1.0, 0.0, 0.5, -1.0]) / 0.5
    nll = -logits.log_softmax(0)[0].item()
    got = crit.rank_contrastive_loss(sal, neg, labels, mask).item()
    assert got == pytest.approx(2 * nll / 12, rel=1e-5)
    # a padded clip takes no probability mass
    sal_p = torch.tensor([[1.0, 0.0, 9.0]])
    neg_p = torch.tensor([[0.5, -1.0, 9.0]])
    got_p = crit.rank_contrastive_loss(
        sal_p, neg_p, torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[True, True, False]])
    ).item()
    assert got_p == pytest.approx(got, rel=1e-5)


def test_criterion_adds_qd_terms_to_the_saliency_loss():
    crit = MomentCriterion()
    out = {
        "pred_logits": torch.zeros(1, 2, 2),
        "pred_spans": torch.tensor([[[0.5, 0.2], [0.1, 0.1]]]),
        "saliency_scores": torch.tensor([[0.0, 0.1]]),
        "saliency_scores_neg": torch.tensor([[0.0, 0.0]]),
        "video_mask": torch.tensor([[True, True]]),
    }
    targets = {
        "span_labels": [torch.tensor([[0.5, 0.2]])],
        "saliency_pos_labels": torch.tensor([[1]]),
        "saliency_neg_labels": torch.tensor([[0]]),
        "saliency_all_labels": torch.tensor([[0.0, 4.0]]),
    }
    losses = crit(out, targets)
    hinge = 0.2  # 2 * max(0, 0.2 + 0.0 - 0.1)
    neg_pair = 2 * math.log(2)
    rank = crit.rank_contrastive_loss(
        out["saliency_scores"], out["saliency_scores_neg"], targets["saliency_all_labels"],
        out["video_mask"],
    ).item()  # fmt: skip
    assert losses["loss_neg_pair"].item() == pytest.approx(neg_pair, rel=1e-6)
    assert losses["loss_rank_contrastive"].item() == pytest.approx(rank, rel=1e-6)
    assert losses["loss_saliency"].item() == pytest.approx(hinge + neg_pair + rank, rel=1e-5)


def test_tiny_overfit_loss_decreases():
    torch.manual_seed(0)
    m = _model(v_feat_dim=8, t_feat_dim=8, num_queries=5, input_dropout=0.0, dropout=0.0)
    crit = MomentCriterion()
    v = torch.randn(4, 10, 8)
    vm = torch.ones(4, 10, dtype=torch.bool)
    t = torch.randn(4, 3, 8)
    tm = torch.ones(4, 3, dtype=torch.bool)
    labels = torch.zeros(4, 10)
    for i, c in enumerate([2, 3, 5, 6]):
        labels[i, c] = 12.0
    targets = {
        "span_labels": [torch.tensor([[0.2 + 0.15 * i, 0.2]]) for i in range(4)],
        "saliency_pos_labels": torch.tensor([[2, 2], [3, 3], [5, 5], [6, 6]]),
        "saliency_neg_labels": torch.tensor([[9, 9], [0, 0], [0, 0], [0, 0]]),
        "saliency_all_labels": labels,
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
