"""The int16-mask dropout: the same Bernoulli mask and scale, the same attention, the same model."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from video_retrieval.temporal.cheap_dropout import (
    CheapDropout,
    CheapMultiheadAttention,
    attention,
    cheap_dropout,
    use_cheap_dropout,
)
from video_retrieval.temporal.qd_detr import QDDETR

TINY = 1e-9  # rounds to a drop threshold of 0: every element kept, the scale 1 + 1e-9


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_keep_rate_and_scale_match_dropout(p):
    torch.manual_seed(0)
    x = torch.ones(2_000_000)
    y = cheap_dropout(x, p)
    kept = y != 0
    n = x.numel()
    # binomial: 5 standard deviations (about 0.0017 at p = 0.5)
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(y[kept], torch.full_like(y[kept], 1.0 / (1.0 - p)))
    # each of the four int16 values of a 64-bit draw keeps at the same rate
    per_slot = kept[: n // 4 * 4].view(-1, 4).float().mean(0)
    assert (per_slot - (1 - p)).abs().max().item() < 5 * math.sqrt(p * (1 - p) / (n / 4))


def test_same_seed_same_mask_and_shapes_kept():
    x = torch.randn(3, 5, 7)
    torch.manual_seed(1)
    a = cheap_dropout(x, 0.2)
    torch.manual_seed(1)
    b = cheap_dropout(x, 0.2)
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, cheap_dropout(x, 0.2))
    assert torch.equal(cheap_dropout(x, 0.2, training=False), x)
    assert torch.equal(cheap_dropout(x, 1.0), torch.zeros_like(x))


def test_gradient_flows_through_kept_elements_only():
    torch.manual_seed(2)
    x = torch.randn(1000, requires_grad=True)
    y = cheap_dropout(x, 0.25)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.75))
    assert torch.equal(x.grad[~kept], torch.zeros_like(x.grad[~kept]))


def test_attention_matches_sdpa_when_nothing_is_dropped():
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 5)
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 6:] = False
    ours = attention(q, k, v, mask, TINY, cheap=True)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_multihead_attention_training_forward_matches_torch():
    torch.manual_seed(4)
    mha = nn.MultiheadAttention(16, 4, dropout=TINY, batch_first=True)
    cheap = CheapMultiheadAttention(16, 4, dropout=TINY, batch_first=True)
    cheap.load_state_dict(mha.state_dict())
    q, kv = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 4:] = True
    ref = mha.eval()(q, kv, kv, key_padding_mask=pad)[0]
    ours = cheap.train()(q, kv, kv, key_padding_mask=pad)[0]
    assert torch.allclose(ours, ref, atol=1e-5)


def _head(dropout):
    torch.manual_seed(5)
    return QDDETR(12, 10, hidden_dim=16, num_queries=4, nheads=4, dim_feedforward=32,
                  dropout=dropout, input_dropout=dropout)  # fmt: skip


def _inputs():
    torch.manual_seed(6)
    vid_mask, txt_mask = torch.ones(2, 9), torch.ones(2, 5)
    vid_mask[1, 7:] = 0
    txt_mask[0, 3:] = 0
    return torch.randn(2, 9, 12), vid_mask, torch.randn(2, 5, 10), txt_mask


def test_switched_head_keeps_its_state_and_its_eval_outputs():
    plain, cheap = _head(0.1), use_cheap_dropout(_head(0.1))
    assert plain.state_dict().keys() == cheap.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                 cheap.state_dict().values()))  # fmt: skip
    kinds = [type(m) for m in cheap.modules()]
    assert nn.Dropout not in kinds and nn.MultiheadAttention not in kinds
    assert CheapDropout in kinds and CheapMultiheadAttention in kinds
    assert all(layer.cheap_dropout for layer in cheap.decoder)
    a, b = plain.eval()(*_inputs()), cheap.eval()(*_inputs())
    for key in ("pred_logits", "pred_spans", "saliency_scores"):
        assert torch.equal(a[key], b[key])


def test_switched_head_trains_like_the_model_without_dropout():
    """With a drop rate that keeps everything, the training forward (cheap attention, cheap masks)
    gives the eval forward's outputs: the attention written out is torch's attention."""
    cheap = use_cheap_dropout(_head(TINY))
    ref = cheap.eval()(*_inputs())
    out = cheap.train()(*_inputs())
    for key in ("pred_logits", "pred_spans", "saliency_scores"):
        assert torch.allclose(out[key], ref[key], atol=1e-5), key
    assert "saliency_scores_neg" in out


def test_module_option_switches_the_built_head():
    from video_retrieval.train.moment_module import MomentDETRModule

    module = MomentDETRModule(head="qd_detr", v_feat_dim=12, t_feat_dim=10, hidden_dim=16,
                              nheads=4, cheap_dropout=True)  # fmt: skip
    assert any(isinstance(m, CheapMultiheadAttention) for m in module.model.modules())
    plain = MomentDETRModule(head="moment_detr", v_feat_dim=12, t_feat_dim=10, hidden_dim=16,
                             nheads=4)  # fmt: skip
    assert not any(isinstance(m, CheapDropout) for m in plain.model.modules())
