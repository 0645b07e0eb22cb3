"""Behavioural tests of the temporal aggregators (tiny dims, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from video_retrieval.temporal import AGGREGATORS, build_aggregator
from video_retrieval.temporal.features import TextFeatures, VideoFeatures

D, T = 32, 6


def make_video(b=3, t=T, d=D, lengths=None, seed=0, patches=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(b, t, d, generator=g)
    lengths = lengths or [t - i % 3 for i in range(b)]
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    p = torch.randn(b, t, patches, d, generator=g) if patches else None
    return VideoFeatures(frames, mask, p)


def make_text(n=4, d=D, L=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(n, L, d, generator=g)
    lengths = torch.tensor([L - i % 4 for i in range(n)])
    word_mask = torch.arange(L)[None, :] < lengths[:, None]
    return TextFeatures(torch.randn(n, d, generator=g), words, word_mask)


def garbage_padded(video: VideoFeatures, extra=2, seed=7) -> VideoFeatures:
    """Overwrite padded frames with garbage and append `extra` more garbage padding frames."""
    g = torch.Generator().manual_seed(seed)
    b, t, d = video.frames.shape
    frames = torch.where(
        video.mask[..., None], video.frames, 50 * torch.randn(b, t, d, generator=g)
    )
    frames = torch.cat([frames, 50 * torch.randn(b, extra, d, generator=g)], dim=1)
    mask = torch.cat([video.mask, torch.zeros(b, extra, dtype=torch.bool)], dim=1)
    patches = None
    if video.patches is not None:
        p = video.patches
        pg = torch.where(video.mask[..., None, None], p, 50 * torch.randn(p.shape, generator=g))
        patches = torch.cat([pg, 50 * torch.randn(b, extra, *p.shape[2:], generator=g)], dim=1)
    return VideoFeatures(frames, mask, patches)


QI = ["mean", "seq_lstm", "seq_transformer"]


def build(name, **kw):
    torch.manual_seed(0)
    agg = build_aggregator(name, D, max_frames=T + 2, **kw)
    agg.eval()
    return agg


def test_registry_and_unknown_name():
    for name in QI:
        assert name in AGGREGATORS
        agg = build(name)
        assert agg.name == name and agg.query_dependent is False
    with pytest.raises(ValueError, match="unknown aggregator"):
        build_aggregator("nope", D)


@pytest.mark.parametrize("name", QI)
def test_query_independent_shapes_norms_and_consistency(name):
    agg = build(name)
    text, video = make_text(), make_video()
    sim = agg.similarity(text, video)
    assert sim.shape == (4, 3)
    v = agg.embed_video(video)
    t = agg.embed_text(text)
    assert v.shape == (3, D) and t.shape == (4, D)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(sim, agg.logit_scale.exp() * t @ v.T)
    assert math.isclose(agg.logit_scale.exp().item(), 100.0, rel_tol=1e-5)


@pytest.mark.parametrize("name", QI)
def test_padding_changes_nothing(name):
    agg = build(name)
    text, video = make_text(), make_video()
    ref = agg.similarity(text, video)
    out = agg.similarity(text, garbage_padded(video))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", QI)
def test_blockwise_equals_full(name):
    agg = build(name)
    text, video = make_text(n=5), make_video(b=4)
    full = agg.similarity(text, video)
    rows = []
    for i in range(0, 5, 2):
        rows.append(
            torch.cat(
                [agg.similarity(text[i : i + 2], video[j : j + 3]) for j in range(0, 4, 3)], dim=1
            )
        )
    torch.testing.assert_close(torch.cat(rows), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", QI)
def test_gradients_reach_all_parameters(name):
    agg = build(name)
    agg.train()
    text, video = make_text(n=3), make_video(b=3)
    sim = agg.similarity(text, video)
    loss = torch.nn.functional.cross_entropy(
        sim, torch.arange(3)
    ) + torch.nn.functional.cross_entropy(sim.T, torch.arange(3))
    loss.backward()
    for pname, p in agg.named_parameters():
        if name == "seq_transformer" and pname == "frame_position_embeddings.weight":
            assert p.grad[:T].abs().sum() > 0 and p.grad[T:].abs().sum() == 0
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_mean_hand_computed():
    agg = build("mean")
    frames = torch.tensor([[[3.0, 4.0], [0.0, 2.0], [9.0, 9.0]]])
    video = VideoFeatures(frames, torch.tensor([[True, True, False]]))
    agg2 = build_aggregator("mean", 2)
    v = agg2.embed_video(video)
    expected = torch.tensor([0.6 / 2, (0.8 + 1.0) / 2])
    torch.testing.assert_close(v[0], expected / expected.norm())
    assert agg.needs_words is False and agg.needs_patches is False


def test_logit_scale_init_and_clamp():
    agg = build_aggregator("mean", D, init_logit_scale=math.log(1 / 0.07))
    assert math.isclose(agg.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        agg.logit_scale.fill_(10.0)
    agg.clamp_logit_scale()
    assert math.isclose(agg.logit_scale.exp().item(), 100.0, rel_tol=1e-5)


def test_seq_transformer_order_matters_but_mean_does_not():
    video = make_video(b=1, lengths=[T])
    rev = VideoFeatures(video.frames.flip(1), video.mask)
    mean = build("mean")
    torch.testing.assert_close(mean.embed_video(video), mean.embed_video(rev))
    st = build("seq_transformer")
    assert not torch.allclose(st.embed_video(video), st.embed_video(rev), atol=1e-4)
    lstm = build("seq_lstm")
    assert not torch.allclose(lstm.embed_video(video), lstm.embed_video(rev), atol=1e-4)


def tiny_clip(width=D, heads=None, layers=4):
    from open_clip.model import CLIP

    torch.manual_seed(3)
    heads = heads or max(1, width // 64)
    return CLIP(
        D,
        dict(layers=1, width=32, patch_size=16, image_size=32, head_width=16),
        dict(context_length=16, vocab_size=100, width=width, heads=heads, layers=layers),
        quick_gelu=True,
    )


def test_seq_transformer_init_from_clip_copies_weights():
    agg = build("seq_transformer")
    clip = tiny_clip()
    assert agg.init_from_clip(clip) is True
    torch.testing.assert_close(agg.frame_position_embeddings.weight[:16], clip.positional_embedding)
    for mine, theirs in zip(agg.transformer.resblocks, clip.transformer.resblocks[:4]):
        for k, v in theirs.state_dict().items():
            torch.testing.assert_close(mine.state_dict()[k], v)
    # same function as the CLIP block (both pre-LN QuickGELU, no mask)
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(
        agg.transformer.resblocks[0](x), clip.transformer.resblocks[0](x), rtol=1e-5, atol=1e-5
    )


def test_seq_transformer_init_from_clip_width_mismatch_keeps_init():
    agg = build("seq_transformer")
    before = agg.frame_position_embeddings.weight.clone()
    assert agg.init_from_clip(tiny_clip(width=64, heads=1)) is False
    torch.testing.assert_close(agg.frame_position_embeddings.weight, before)
    assert abs(before.std().item() - 0.02) < 0.005
