"""The temporal modules against their papers' equations, computed here independently in numpy.

Each case fixes small weights, writes the published formula out by hand (attention, LayerNorm,
LSTM gates, the residuals) without calling the code under test, and compares outputs. A dropped
residual, a norm in the wrong place or a wrong scale changes the numbers well beyond the
tolerance; each test also checks that the plausible wrong variant would have been caught.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from video_retrieval.temporal.features import VideoFeatures

ATOL = 1e-5


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _layer_norm(x, ln) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * _np(ln.weight) + _np(ln.bias)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _mha(q_in, k_in, v_in, attn: torch.nn.MultiheadAttention, key_bias=None) -> np.ndarray:
    """Multi-head attention of one sequence: [Lq,D], [Lk,D], [Lk,D] -> [Lq,D]; ``key_bias``
    [Lk] is added to every query's scores (padding)."""
    d = q_in.shape[-1]
    h = attn.num_heads
    w, b = _np(attn.in_proj_weight), _np(attn.in_proj_bias)
    q = q_in @ w[:d].T + b[:d]
    k = k_in @ w[d : 2 * d].T + b[d : 2 * d]
    v = v_in @ w[2 * d :].T + b[2 * d :]
    dh = d // h
    heads = []
    for i in range(h):
        sl = slice(i * dh, (i + 1) * dh)
        s = q[:, sl] @ k[:, sl].T / math.sqrt(dh)
        if key_bias is not None:
            s = s + key_bias[None, :]
        heads.append(_softmax(s) @ v[:, sl])
    return np.concatenate(heads, -1) @ _np(attn.out_proj.weight).T + _np(attn.out_proj.bias)


def _linear(x, lin) -> np.ndarray:
    return x @ _np(lin.weight).T + _np(lin.bias)


def _loose_pooling(g: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """CLIP4Clip's loose-type video vector: normalise each frame, masked mean, normalise."""
    g = g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-12)  # padded rows: 0
    m = (g * mask[:, None]).sum(0) / mask.sum()
    return m / np.linalg.norm(m)


def _randomize(module: torch.nn.Module, seed: int, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


# ----------------------------------------------------------------------------------- seqTransf
def _seq_transf_reference(agg, f: np.ndarray, mask: np.ndarray, residual: bool = True):
    """CLIP4Clip seqTransf: x = f + P; per block (pre-LN, QuickGELU MLP) x += attn(LN1 x),
    x += MLP(LN2 x); g = x + f; loose pooling."""
    t = f.shape[0]
    f = f * mask[:, None]  # padded frames carry nothing
    x = f + _np(agg.frame_position_embeddings.weight)[:t]
    key_bias = np.where(mask > 0, 0.0, -1.0e6)
    for blk in agg.transformer.resblocks:
        h = _layer_norm(x, blk.ln_1)
        x = x + _mha(h, h, h, blk.attn, key_bias)
        u = _linear(_layer_norm(x, blk.ln_2), blk.mlp.c_fc)
        x = x + _linear(u / (1 + np.exp(-1.702 * u)), blk.mlp.c_proj)  # QuickGELU
    g = x + f if residual else x
    return _loose_pooling(g, mask)


def test_seq_transformer_is_clip4clips_formula_with_its_residual():
    from video_retrieval.temporal.seq_transformer import SeqTransformer

    torch.manual_seed(0)
    agg = SeqTransformer(4, max_frames=3, layers=2, heads=2).double().eval()
    _randomize(agg, 1)
    assert agg.activation == "quick_gelu"
    f = np.random.default_rng(2).standard_normal((3, 4))
    mask = np.array([1.0, 1.0, 0.0])
    video = VideoFeatures(torch.from_numpy(f)[None], torch.from_numpy(mask > 0)[None])
    got = _np(agg.embed_video(video))[0]
    want = _seq_transf_reference(agg, f, mask)
    np.testing.assert_allclose(got, want, atol=ATOL)
    without = _seq_transf_reference(agg, f, mask, residual=False)
    assert np.abs(without - want).max() > 100 * ATOL  # a dropped "+ f" would be caught


# ------------------------------------------------------------------------------------- seqLSTM
def _lstm_reference(lstm: torch.nn.LSTM, f: np.ndarray) -> np.ndarray:
    """One-layer LSTM (PyTorch gate order i, f, g, o): c = f*c + i*g, h = o*tanh(c)."""
    d = lstm.hidden_size
    w_ih, w_hh = _np(lstm.weight_ih_l0), _np(lstm.weight_hh_l0)
    b = _np(lstm.bias_ih_l0) + _np(lstm.bias_hh_l0)
    h, c, out = np.zeros(d), np.zeros(d), []
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    for x in f:
        z = w_ih @ x + w_hh @ h + b
        i, fg, gg, o = sig(z[:d]), sig(z[d : 2 * d]), np.tanh(z[2 * d : 3 * d]), sig(z[3 * d :])
        c = fg * c + i * gg
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out)


def test_seq_lstm_is_clip4clips_formula_with_its_residual():
    from video_retrieval.temporal.seq_lstm import SeqLSTM

    agg = SeqLSTM(4, max_frames=4).double().eval()
    _randomize(agg, 3)
    f = np.random.default_rng(4).standard_normal((4, 4))
    mask = np.array([1.0, 1.0, 1.0, 0.0])
    video = VideoFeatures(torch.from_numpy(f)[None], torch.from_numpy(mask > 0)[None])
    got = _np(agg.embed_video(video))[0]
    valid = f[:3]  # the LSTM runs over the valid prefix only
    g = np.concatenate([_lstm_reference(agg.lstm, valid) + valid, np.zeros((1, 4))])
    np.testing.assert_allclose(got, _loose_pooling(g, mask), atol=ATOL)
    g_without = np.concatenate([_lstm_reference(agg.lstm, valid), np.zeros((1, 4))])
    assert np.abs(_loose_pooling(g_without, mask) - _loose_pooling(g, mask)).max() > 100 * ATOL


# ------------------------------------------------------------------------------ QD-DETR's T2V
def _t2v_reference(layer, v, pos, words, form: str) -> np.ndarray:
    """QD-DETR's T2V layer. published (``T2V_TransformerEncoderLayer.forward_post``):
    x = v + attn(v + pos, w, w); out = LN2(x + FFN(LN1(x))). post_norm: x = LN1(v + attn);
    out = LN2(x + FFN(x)). FFN = lin2(PReLU(lin1 .))."""
    att = _mha(v + pos, words, words, layer.attn)
    x = v + att
    if form == "post_norm":
        x = h = _layer_norm(x, layer.norm1)
    else:
        h = _layer_norm(x, layer.norm1)
    u = _linear(h, layer.lin1)
    a = float(_np(layer.act.weight)[0])
    ffn = _linear(np.where(u > 0, u, a * u), layer.lin2)
    return _layer_norm(x + ffn, layer.norm2)


@pytest.mark.parametrize("form", ["published", "post_norm"])
def test_qd_detr_t2v_layer_in_both_forms(form):
    from video_retrieval.temporal.qd_detr import T2VLayer

    layer = T2VLayer(4, 2, 8, dropout=0.0, form=form).double().eval()
    _randomize(layer, 5)
    rng = np.random.default_rng(6)
    v, pos, words = (
        rng.standard_normal((3, 4)),
        rng.standard_normal((3, 4)),
        rng.standard_normal((2, 4)),
    )
    got = _np(layer(*(torch.from_numpy(a)[None] for a in (v, pos, words)),
                    torch.zeros(1, 2, dtype=torch.bool)))[0]  # fmt: skip
    np.testing.assert_allclose(got, _t2v_reference(layer, v, pos, words, form), atol=ATOL)
    other = "post_norm" if form == "published" else "published"
    assert np.abs(_t2v_reference(layer, v, pos, words, other) - got).max() > 100 * ATOL


def test_qd_detr_defaults_to_the_published_t2v_form():
    from video_retrieval.temporal.qd_detr import QDDETR

    head = QDDETR(6, 5, hidden_dim=8, nheads=2, dim_feedforward=16)
    assert [layer.form for layer in head.t2v] == ["published", "published"]
    for layer in head.decoder:  # attention output biases start at zero, as published
        assert torch.count_nonzero(layer.sa_out.bias) == 0
        assert torch.count_nonzero(layer.ca_out.bias) == 0


def test_qd_detr_saliency_is_scaled_by_the_square_root_of_the_width():
    """Input-adaptive saliency: <W1 m_i, W2 g> / sqrt(d)."""
    from video_retrieval.temporal.qd_detr import QDDETR

    head = QDDETR(6, 5, hidden_dim=16, nheads=2, dim_feedforward=16).eval()
    with torch.no_grad():
        for proj in (head.saliency_proj1, head.saliency_proj2):
            proj.weight.copy_(torch.eye(16))
            proj.bias.zero_()
    memory = torch.full((1, 3, 16), 2.0)
    glob = torch.full((1, 16), 3.0)
    # each clip: sum over 16 channels of 2 * 3 = 96, divided by sqrt(16) = 4 -> 24 (by d: 6)
    with torch.no_grad():
        np.testing.assert_allclose(head.saliency(memory, glob).numpy(), [[24.0, 24.0, 24.0]])


# ---------------------------------------------------------------------------------- tightTransf
def _tight_reference(agg, sentence: np.ndarray, f: np.ndarray, mask: np.ndarray) -> float:
    """CLIP4Clip tightTransf for one (text, video) pair: tokens [t; f_1..f_T] + positions, the
    pre-LN blocks with -1e6 on padded frames (the text token always valid), then the pooler
    LN -> token 0 -> Linear -> QuickGELU, and Linear(D, 1). No logit scale."""
    x = np.concatenate([sentence[None], f * mask[:, None]])
    x = x + _np(agg.position_embeddings.weight)[: len(x)]
    key_bias = np.where(np.concatenate([[1.0], mask]) > 0, 0.0, -1.0e6)
    for blk in agg.transformer.resblocks:
        h = _layer_norm(x, blk.ln_1)
        x = x + _mha(h, h, h, blk.attn, key_bias)
        u = _linear(_layer_norm(x, blk.ln_2), blk.mlp.c_fc)
        x = x + _linear(u / (1 + np.exp(-1.702 * u)), blk.mlp.c_proj)
    u = _linear(_layer_norm(x, agg.ln_pool)[0], agg.pool_dense)
    return float(_linear(u / (1 + np.exp(-1.702 * u)), agg.similarity_dense)[0])


def test_tight_transformer_is_clip4clips_cross_encoder():
    from video_retrieval.temporal.features import TextFeatures
    from video_retrieval.temporal.tight_transformer import TightTransformer

    agg = TightTransformer(4, max_frames=3, layers=2, heads=2, pair_chunk=2).double().eval()
    _randomize(agg, 7, scale=0.3)
    rng = np.random.default_rng(8)
    sentences = rng.standard_normal((2, 4))
    frames = rng.standard_normal((3, 3, 4))
    masks = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=float)
    with torch.no_grad():
        got = _np(agg.similarity(TextFeatures(torch.from_numpy(sentences)),
                                 VideoFeatures(torch.from_numpy(frames),
                                               torch.from_numpy(masks > 0))))  # fmt: skip
    want = [[_tight_reference(agg, s, f, m) for f, m in zip(frames, masks)] for s in sentences]
    np.testing.assert_allclose(got, want, atol=ATOL)
