"""The einops rewrites of layout changes (issue 17) compute exactly what the index arithmetic they
replaced computed. Each ``old_*`` function below is the previous formula, copied verbatim from the
module before the rewrite; each test compares it with the current code on random inputs, masks and
padding included, bit for bit (``torch.equal``): a layout change moves numbers, it never rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from video_retrieval.encoders.preprocess import clip_preprocess
from video_retrieval.temporal import build_aggregator
from video_retrieval.temporal.base import l2norm, zero_padding
from video_retrieval.temporal.features import TextFeatures, VideoFeatures
from video_retrieval.temporal.isa import isa
from video_retrieval.temporal.moment_detr import (
    MomentDETR,
    sine_position_embedding,
    temporal_endpoint_features,
)
from video_retrieval.temporal.moment_loss import MomentCriterion
from video_retrieval.temporal.moment_matcher import (
    FOREGROUND,
    HungarianMatcher,
    generalized_temporal_iou,
    span_cxw_to_se,
)
from video_retrieval.temporal.patch_select import (
    PatchSelector,
    _topk_sorted,
    hard_topk_indicator,
    perturbed_topk,
)
from video_retrieval.temporal.seq_transformer import MASK_BIAS, key_padding_bias

from video_retrieval.media.resize import resize_shape

D = 16


def gen(seed):
    return torch.Generator().manual_seed(seed)


def prefix_mask(lengths, n):
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


def holey_mask(b, n, seed):
    """Random masks with holes anywhere (not only trailing padding), each row >= 1 valid."""
    m = torch.rand(b, n, generator=gen(seed)) > 0.4
    m[:, 0] = True
    return m


# ---------------------------------------------------------------- seqTransf / tightTransf


def old_key_padding_bias(mask, heads, dtype):
    b, n = mask.shape
    neg = max(MASK_BIAS, torch.finfo(dtype).min)  # -1e6 is -inf in fp16: stay finite
    bias = (1.0 - mask.to(dtype)) * neg  # [B, N] over keys
    bias = bias[:, None, :].expand(b, n, n)
    return bias.repeat_interleave(heads, dim=0)


@pytest.mark.parametrize("heads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_key_padding_bias_equals_previous_formula(heads, dtype):
    for mask in (prefix_mask([5, 2, 1, 5], 5), holey_mask(3, 7, seed=1), torch.ones(2, 4).bool()):
        new, old = key_padding_bias(mask, heads, dtype), old_key_padding_bias(mask, heads, dtype)
        assert new.shape == old.shape == (mask.shape[0] * heads, mask.shape[1], mask.shape[1])
        assert new.dtype == dtype and torch.equal(new, old)


def old_tight_similarity(self, text, video):
    """The chunked batching before einops (each pair's logit is ``pair_logits``, tested against
    CLIP4Clip's formula in ``test_temporal_reference``); this checks only the batching."""
    nt, nv = len(text), len(video)
    if nt == 0 or nv == 0:
        return text.sentence.new_zeros(nt, nv)
    vchunk = max(1, min(nv, self.pair_chunk))
    rows_per_chunk = max(1, self.pair_chunk // vchunk)
    out = []
    for i in range(0, nt, rows_per_chunk):
        s = text.sentence[i : i + rows_per_chunk]
        k = s.shape[0]
        row = []
        for j in range(0, nv, vchunk):
            fr, mk = video.frames[j : j + vchunk], video.mask[j : j + vchunk]
            m = fr.shape[0]
            sent = s[:, None, :].expand(k, m, -1).reshape(k * m, -1)
            frames = fr[None].expand(k, *fr.shape).reshape(k * m, *fr.shape[1:])
            mask = mk[None].expand(k, *mk.shape).reshape(k * m, -1)
            row.append(self.pair_logits(sent, frames, mask).view(k, m))
        out.append(torch.cat(row, dim=1))
    return torch.cat(out, dim=0)


@pytest.mark.parametrize("pair_chunk", [1, 2, 5, 1024])
def test_tight_transformer_similarity_batching_equals_previous_formula(pair_chunk):
    torch.manual_seed(0)
    agg = build_aggregator("tight_transformer", D, max_frames=6, heads=2, pair_chunk=pair_chunk)
    agg.eval()  # dropout off
    frames = torch.randn(4, 6, D, generator=gen(1))
    mask = prefix_mask([6, 3, 1, 4], 6)
    frames[~mask] = float("nan")  # padding holds garbage: zero_padding must hide it
    video = VideoFeatures(frames, mask)
    text = TextFeatures(torch.randn(3, D, generator=gen(2)))
    with torch.no_grad():
        new, old = agg.similarity(text, video), old_tight_similarity(agg, text, video)
    assert new.shape == (3, 4) and torch.isfinite(new).all()
    assert torch.equal(new, old)


# ---------------------------------------------------------------- patch selection


class OldPerturbedTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, k: int, num_samples: int, sigma: float, diagonal: bool):
        n, p = scores.shape
        noise = torch.randn(n, num_samples, p, dtype=scores.dtype, device=scores.device)
        idx = _topk_sorted(scores[:, None, :] + sigma * noise, k)  # [N, S, k]
        ind = torch.zeros(n, k, p, dtype=scores.dtype, device=scores.device)
        ind.scatter_add_(
            2,
            idx.transpose(1, 2),
            torch.ones(n, k, num_samples, dtype=scores.dtype, device=scores.device),
        )
        ind = ind / num_samples
        ctx.save_for_backward(noise, idx)
        ctx.sigma, ctx.diagonal, ctx.p = sigma, diagonal, p
        return ind

    @staticmethod
    def backward(ctx, grad_out):
        noise, idx = ctx.saved_tensors
        n, s, k = idx.shape
        scale = 1.0 / (s * ctx.sigma)
        if ctx.diagonal:
            z_at = torch.gather(noise, 2, idx)  # [N, S, k] = Z[n, s, idx[n,s,k]]
            e = torch.zeros(n, k, ctx.p, dtype=noise.dtype, device=noise.device)
            e.scatter_add_(2, idx.transpose(1, 2), z_at.transpose(1, 2))
            grad_in = (grad_out * e).sum(1) * scale
        else:
            g_at = torch.gather(grad_out, 2, idx.transpose(1, 2))  # [N, k, S] = g[n,k,idx[n,s,k]]
            inner = g_at.sum(1)  # [N, S]
            grad_in = torch.einsum("ns,nsp->np", inner, noise) * scale
        return grad_in, None, None, None, None


@pytest.mark.parametrize("diagonal", [False, True])
def test_perturbed_topk_forward_and_gradient_equal_previous_formula(diagonal):
    scores = torch.randn(5, 9, generator=gen(3))
    upstream = torch.randn(5, 3, 9, generator=gen(4))
    results = []
    for fn in (perturbed_topk, lambda *a: OldPerturbedTopK.apply(*a)):
        s = scores.clone().requires_grad_(True)
        torch.manual_seed(7)  # same noise for both
        ind = fn(s, 3, 40, 0.05, diagonal)
        (ind * upstream).sum().backward()
        results.append((ind.detach(), s.grad))
    (new_ind, new_grad), (old_ind, old_grad) = results
    assert torch.equal(new_ind, old_ind) and torch.equal(new_grad, old_grad)
    assert new_grad.abs().sum() > 0


def old_patch_selector_forward(self, frames, patches, mask):
    b, t, p, d = patches.shape
    if p < self.topk:
        raise ValueError(f"{p} patches per frame < top-k {self.topk}")
    cls = zero_padding(frames, mask).reshape(b * t, 1, d)
    pt = zero_padding(patches, mask).reshape(b * t, p, d)
    scores = self.score_predictor(torch.cat([cls, pt], dim=1))[:, 1:]  # drop the CLS score
    if self.training:
        ind = OldPerturbedTopK.apply(scores, self.topk, self.num_samples, self.sigma, self.diagonal)
    else:
        ind = hard_topk_indicator(scores, self.topk)
    selected = torch.einsum("nkp,npd->nkd", ind.to(pt.dtype), pt)
    tokens = torch.cat([cls, selected], dim=1).reshape(b, t * (self.topk + 1), d)
    token_mask = mask.bool().repeat_interleave(self.topk + 1, dim=1)
    return tokens, token_mask


@pytest.mark.parametrize("training", [False, True])
def test_patch_selector_equals_previous_formula(training):
    torch.manual_seed(0)
    sel = PatchSelector(D, topk=3, num_samples=30).train(training)
    frames = torch.randn(3, 5, D, generator=gen(5))
    patches = torch.randn(3, 5, 8, D, generator=gen(6))
    mask = prefix_mask([5, 2, 4], 5)
    frames[~mask], patches[~mask] = float("nan"), float("inf")  # garbage in padded frames
    torch.manual_seed(9)
    new_tokens, new_mask = sel(frames, patches, mask)
    torch.manual_seed(9)
    old_tokens, old_mask = old_patch_selector_forward(sel, frames, patches, mask)
    assert new_tokens.shape == (3, 5 * 4, D) and torch.isfinite(new_tokens).all()
    assert torch.equal(new_tokens, old_tokens) and torch.equal(new_mask, old_mask)
    # frame 1 of video 1 is padding: its CLS + 3 picks are masked and exactly zero
    assert not new_mask[1, 8:].any() and new_mask[1, :8].all()
    assert torch.equal(new_tokens[1, 8:], torch.zeros(12, D))


# ---------------------------------------------------------------- UCoFiA


def old_patch_word(self, words, word_mask, tokens, token_mask):
    wq = l2norm(zero_padding(words, word_mask)) @ self.local_mat_weight
    pk = zero_padding(tokens, token_mask)
    if self.local_mat_weight1 is not None:
        pk = pk @ self.local_mat_weight1
    nt, L, _ = wq.shape
    nv, P, _ = pk.shape
    nv_c = max(1, min(nv, self.chunk_elems // max(1, L * P)))
    nt_c = max(1, self.chunk_elems // max(1, L * nv_c * P))
    rows = []
    for i in range(0, nt, nt_c):
        w, wm = wq[i : i + nt_c], word_mask[i : i + nt_c]
        cols = []
        for j in range(0, nv, nv_c):
            p, pm = pk[j : j + nv_c], token_mask[j : j + nv_c]
            A = torch.einsum("tld,vpd->tlvp", w, p)  # [t, L, v, P]
            word_level = isa(
                A.permute(0, 2, 3, 1), self.word_mat_weight, wm[:, None, None, :], self.tau
            )
            s2p = isa(word_level, self.pixel_mat_weight2, pm[None], self.tau)  # [t, v]
            patch_level = isa(A, self.pixel_mat_weight, pm[None, None], self.tau)  # [t, L, v]
            v2w = isa(patch_level.transpose(1, 2), self.word_mat_weight2, wm[:, None, :], self.tau)
            cols.append((s2p + v2w) / 2)
        rows.append(torch.cat(cols, dim=1))
    return torch.cat(rows, dim=0)


def old_frame_sentence(self, text, video):
    s = self.embed_text(text)
    f = l2norm(zero_padding(video.frames, video.mask))
    x = torch.einsum("nd,vtd->nvt", s, f)
    return self.scale() * isa(x, self.frame_logit_weight, video.mask[None], self.tau)


def _perturb_eye(module, seed):
    """Move the identity-initialised weights away from the identity (a trained-like model)."""
    g = gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 2 and p.shape[0] == p.shape[1]:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("chunk_elems", [1 << 22, 50])  # one block, and many small blocks
def test_ucofia_levels_equal_previous_formula(chunk_elems):
    torch.manual_seed(0)
    agg = build_aggregator(
        "ucofia", D, max_frames=5, max_words=7, heads=2, num_samples=20, chunk_elems=chunk_elems
    ).eval()
    _perturb_eye(agg, 1)
    g = gen(2)
    words = torch.randn(4, 7, D, generator=g)
    word_mask = prefix_mask([7, 3, 1, 5], 7)
    words[~word_mask] = float("nan")
    text = TextFeatures(torch.randn(4, D, generator=g), words, word_mask)
    frames = torch.randn(3, 5, D, generator=g)
    patches = torch.randn(3, 5, 6, D, generator=g)
    mask = prefix_mask([5, 2, 4], 5)
    video = VideoFeatures(frames, mask, patches)
    with torch.no_grad():
        levels = agg.level_similarities(text, video)
        tokens, token_mask = agg.select_patches(video)
        old_pw = old_patch_word(agg, words, word_mask, tokens, token_mask)
        old_fs = old_frame_sentence(agg, text, video)
    assert torch.isfinite(levels["patch_word"]).all()
    assert torch.equal(levels["patch_word"], old_pw)
    assert torch.equal(levels["frame_sentence"], old_fs)


# ---------------------------------------------------------------- Moment-DETR


def old_sine_position_embedding(mask, dim, temperature=10000.0):
    x = mask.float().cumsum(1)
    x = x / (x[:, -1:] + 1e-6) * (2 * math.pi)
    k = torch.arange(dim, device=mask.device, dtype=torch.float32)
    inv = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / dim)
    pos = x[..., None] / inv  # [B, L, dim]
    return torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], dim=-1).flatten(2)


def test_sine_position_embedding_equals_previous_formula():
    for mask in (prefix_mask([9, 4, 1], 9), holey_mask(2, 6, seed=2)):
        for dim in (2, 8, 32):
            assert torch.equal(
                sine_position_embedding(mask, dim), old_sine_position_embedding(mask, dim)
            )


def old_detr_forward(self, src_vid, src_vid_mask, src_txt, src_txt_mask):
    vid_mask = src_vid_mask.bool()
    txt_mask = src_txt_mask.bool()
    if self.use_tef:
        src_vid = torch.cat([src_vid, temporal_endpoint_features(vid_mask).to(src_vid)], -1)
    v = self.input_vid_proj(src_vid)
    t = self.input_txt_proj(src_txt)
    src = torch.cat([v, t], 1)
    mask = torch.cat([vid_mask, txt_mask], 1)
    pos = torch.cat(
        [old_sine_position_embedding(vid_mask, self.hidden_dim).to(v), torch.zeros_like(t)], 1
    )
    pad = ~mask
    memory = src
    for layer in self.encoder:
        memory = layer(memory, pad, pos)
    bsz = src.shape[0]
    query_pos = self.query_embed.weight[None].expand(bsz, -1, -1)
    tgt = torch.zeros_like(query_pos)
    hs = []
    for layer in self.decoder:
        tgt = layer(tgt, memory, pad, pos, query_pos)
        hs.append(self.decoder_norm(tgt))
    hs = torch.stack(hs)  # [layers, B, N, d]
    logits = self.class_embed(hs)
    spans = self.span_embed(hs).sigmoid()
    lv = src_vid.shape[1]
    saliency = self.saliency_proj(memory[:, :lv]).squeeze(-1)
    out = {
        "pred_logits": logits[-1],
        "pred_spans": spans[-1],
        "saliency_scores": saliency,
        "video_mask": vid_mask,
    }
    if self.aux_loss:
        out["aux_outputs"] = [
            {"pred_logits": a, "pred_spans": b} for a, b in zip(logits[:-1], spans[:-1])
        ]
    return out


def detr_inputs(seed=0):
    g = gen(seed)
    vid = torch.randn(3, 10, 12, generator=g)
    vid_mask = prefix_mask([10, 6, 3], 10)
    txt = torch.randn(3, 5, 20, generator=g)
    txt_mask = prefix_mask([5, 2, 4], 5)
    return vid, vid_mask, txt, txt_mask


def test_moment_detr_forward_equals_previous_formula():
    torch.manual_seed(0)
    model = MomentDETR(12, 20, hidden_dim=32, num_queries=6, nheads=4, dim_feedforward=64).eval()
    inputs = detr_inputs()
    with torch.no_grad():
        new, old = model(*inputs), old_detr_forward(model, *inputs)
    for key in ("pred_logits", "pred_spans", "saliency_scores", "video_mask"):
        assert torch.equal(new[key], old[key]), key
    for a, b in zip(new["aux_outputs"], old["aux_outputs"], strict=True):
        assert torch.equal(a["pred_logits"], b["pred_logits"])
        assert torch.equal(a["pred_spans"], b["pred_spans"])


@torch.no_grad()
def old_matcher_forward(self, outputs, targets):
    from scipy.optimize import linear_sum_assignment

    logits = outputs["pred_logits"]
    spans = outputs["pred_spans"]
    bsz, nq = logits.shape[:2]
    prob = logits.flatten(0, 1).float().softmax(-1)[:, FOREGROUND]  # [B*N]
    out_spans = spans.flatten(0, 1).float()  # [B*N, 2]
    sizes = [len(t) for t in targets]
    if sum(sizes) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return [(empty, empty) for _ in range(bsz)]
    tgt = torch.cat([t.to(out_spans) for t in targets])
    cost = (
        self.cost_span * torch.cdist(out_spans, tgt, p=1)
        - self.cost_giou * generalized_temporal_iou(span_cxw_to_se(out_spans), span_cxw_to_se(tgt))
        - self.cost_class * prob[:, None]
    )
    cost = cost.view(bsz, nq, -1).cpu()
    result = []
    for i, c in enumerate(cost.split(sizes, -1)):
        rows, cols = linear_sum_assignment(c[i].numpy())
        result.append(
            (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
        )
    return result


def old_layer_losses(self, out, spans_tgt):
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
    target = torch.full(logits.shape[:2], 1 - FOREGROUND, dtype=torch.long, device=logits.device)
    target[b_idx.to(logits.device), q_idx.to(logits.device)] = FOREGROUND
    ce = F.cross_entropy(
        logits.transpose(1, 2), target, weight=self.empty_weight.to(logits), reduction="none"
    ).mean()
    return {"loss_span": l1, "loss_giou": l_giou, "loss_label": ce}


def moment_outputs(seed, b=3, n=6):
    g = gen(seed)
    return {
        "pred_logits": torch.randn(b, n, 2, generator=g),
        "pred_spans": torch.rand(b, n, 2, generator=g) * 0.5 + 0.1,
    }


# one sample without any target, one with more targets than the others
SPANS = [
    torch.tensor([[0.3, 0.2], [0.7, 0.1]]),
    torch.zeros(0, 2),
    torch.tensor([[0.5, 0.4], [0.2, 0.1], [0.8, 0.2]]),
]


def test_hungarian_matcher_equals_previous_formula():
    matcher = HungarianMatcher()
    for seed in range(4):
        out = moment_outputs(seed)
        new, old = matcher(out, SPANS), old_matcher_forward(matcher, out, SPANS)
        for (nr, nc), (orow, ocol) in zip(new, old, strict=True):
            assert torch.equal(nr, orow) and torch.equal(nc, ocol)
    empty = [torch.zeros(0, 2)] * 3
    assert [len(r) for r, _ in matcher(moment_outputs(0), empty)] == [0, 0, 0]


def test_moment_criterion_losses_equal_previous_formula():
    crit = MomentCriterion()
    for seed in range(3):
        out = moment_outputs(seed)
        new, old = crit._layer_losses(out, SPANS), old_layer_losses(crit, out, SPANS)
        for key in ("loss_span", "loss_giou", "loss_label"):
            assert torch.equal(new[key], old[key]), key


# ---------------------------------------------------------------- encoders: preprocessing


def old_clip_preprocess(pixels, image_size, mean, std):
    from video_retrieval.encoders.preprocess import to_uint8_tensor

    from video_retrieval.media.resize import resize_uint8

    x = to_uint8_tensor(pixels)
    n, h, w, _ = x.shape
    x = x.permute(0, 3, 1, 2)  # [N,3,H,W] uint8 view
    new_h, new_w = resize_shape(h, w, image_size)
    if n > 0:
        if new_w != w:
            x = resize_uint8(x, (h, new_w))
        if new_h != h:
            x = resize_uint8(x, (new_h, new_w))
    else:
        x = x.new_zeros((0, 3, new_h, new_w))
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    x = x[:, :, top : top + image_size, left : left + image_size].float()
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1) * 255.0
    return ((x - mean_t) / std_t).contiguous()


@pytest.mark.parametrize("shape", [(4, 48, 80), (2, 90, 40), (3, 32, 32), (0, 20, 30), (1, 7, 9)])
def test_clip_preprocess_equals_previous_formula(shape):
    n, h, w = shape
    rng = np.random.default_rng(n * 1000 + h + w)
    pixels = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    new = clip_preprocess(pixels, 32, mean, std)
    old = old_clip_preprocess(pixels, 32, mean, std)
    assert new.shape == (n, 3, 32, 32) and torch.equal(new, old)
    assert new.is_contiguous()
