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
QD = ["query_scored", "tight_transformer"]
ALL = QI + QD


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


@pytest.mark.parametrize("name", ALL)
def test_padding_changes_nothing(name):
    agg = build(name)
    text, video = make_text(), make_video()
    ref = agg.similarity(text, video)
    out = agg.similarity(text, garbage_padded(video))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
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


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_all_parameters(name):
    agg = build(name, **({"learnable_tau": True} if name == "query_scored" else {}))
    agg.train()
    text, video = make_text(n=3), make_video(b=3)
    sim = agg.similarity(text, video)
    loss = torch.nn.functional.cross_entropy(
        sim, torch.arange(3)
    ) + torch.nn.functional.cross_entropy(sim.T, torch.arange(3))
    loss.backward()
    for pname, p in agg.named_parameters():
        if not p.requires_grad:
            assert name == "tight_transformer" and pname == "logit_scale"
            continue
        if pname in ("frame_position_embeddings.weight", "position_embeddings.weight"):
            n_used = T + (name == "tight_transformer")
            assert p.grad[:n_used].abs().sum() > 0 and p.grad[n_used:].abs().sum() == 0
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


@pytest.mark.parametrize("name", QD)
def test_query_dependent_shapes_and_no_video_embedding(name):
    agg = build(name)
    assert agg.query_dependent is True
    sim = agg.similarity(make_text(), make_video())
    assert sim.shape == (4, 3) and torch.isfinite(sim).all()
    with pytest.raises(NotImplementedError):
        agg.embed_video(make_video())


def qs_reference(t, frames, mask, tau):
    """Direct (slow) CLIP-Hitchhiker formula for one text and one video."""
    f = frames[mask]
    c = torch.nn.functional.cosine_similarity(t[None], f, dim=-1)
    w = torch.softmax(c / tau, dim=0)
    u = (w[:, None] * f).sum(0)
    return torch.nn.functional.cosine_similarity(t, u, dim=0)


def test_query_scored_matches_direct_formula():
    agg = build("query_scored")
    text, video = make_text(), make_video()
    sim = agg.similarity(text, video)
    for i in range(4):
        for j in range(3):
            ref = qs_reference(text.sentence[i], video.frames[j], video.mask[j], 0.1)
            torch.testing.assert_close(sim[i, j], 100 * ref, rtol=1e-4, atol=1e-4)


def test_query_scored_limits_hand_checked():
    # text along x; frames: f1 = (1, 0) (cos 1), f2 = (0, 2) (cos 0)
    text = TextFeatures(torch.tensor([[2.0, 0.0]]))
    video = VideoFeatures(
        torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]]), torch.tensor([[True, True, False]])
    )
    hot = build_aggregator("query_scored", 2, tau=1e6).cosine(text, video)
    # mean of raw frames = (0.5, 1) -> cos = 0.5 / sqrt(1.25)
    torch.testing.assert_close(hot, torch.tensor([[0.5 / 1.25**0.5]]), rtol=1e-4, atol=1e-5)
    cold = build_aggregator("query_scored", 2, tau=1e-4).cosine(text, video)
    torch.testing.assert_close(cold, torch.tensor([[1.0]]))  # the best frame
    # tau -> large with unit-norm frames equals CLIP4Clip mean pooling
    v = make_video()
    v = VideoFeatures(torch.nn.functional.normalize(v.frames, dim=-1), v.mask)
    t = make_text()
    torch.testing.assert_close(
        build_aggregator("query_scored", D, tau=1e6).similarity(t, v),
        build_aggregator("mean", D).similarity(t, v),
        rtol=1e-4,
        atol=1e-4,
    )


def test_query_scored_weights_prefer_matching_frame():
    agg = build("query_scored")
    text, video = make_text(n=1), make_video(b=1, lengths=[T])
    video.frames[0, 2] = text.sentence[0] * 3
    w = agg.frame_weights(text, video)
    assert w.shape == (1, 1, T) and w[0, 0].argmax().item() == 2
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 1))


def test_tight_transformer_init_from_clip_and_pair_logits():
    agg = build("tight_transformer")
    clip = tiny_clip()
    assert agg.init_from_clip(clip) is True
    torch.testing.assert_close(agg.position_embeddings.weight[:16], clip.positional_embedding)
    torch.testing.assert_close(
        agg.transformer.resblocks[3].mlp.c_proj.weight,
        clip.transformer.resblocks[3].mlp.c_proj.weight,
    )
    text, video = make_text(n=2), make_video(b=3)
    sim = agg.similarity(text, video)
    direct = agg.pair_logits(text.sentence[1:2], video.frames[2:3], video.mask[2:3])
    torch.testing.assert_close(sim[1, 2:3], direct, rtol=1e-5, atol=1e-5)
    # small pair chunks give the same result
    agg.pair_chunk = 2
    torch.testing.assert_close(agg.similarity(text, video), sim, rtol=1e-5, atol=1e-5)


def test_init_from_clip_shallow_tower_copies_available_blocks():
    agg = build("seq_transformer")
    before = {k: v.clone() for k, v in agg.transformer.resblocks[1].state_dict().items()}
    clip = tiny_clip(layers=1)
    assert agg.init_from_clip(clip) is True
    torch.testing.assert_close(
        agg.transformer.resblocks[0].mlp.c_fc.weight, clip.transformer.resblocks[0].mlp.c_fc.weight
    )
    for k, v in agg.transformer.resblocks[1].state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_init_from_clip_through_encoder_wrapper():
    class Wrapper(torch.nn.Module):  # like ClipEncoder: the open_clip model under `.model`
        def __init__(self, model):
            super().__init__()
            self.model = model

    agg = build("tight_transformer")
    clip = tiny_clip()
    assert agg.init_from_clip(Wrapper(clip)) is True
    torch.testing.assert_close(agg.position_embeddings.weight[:16], clip.positional_embedding)
