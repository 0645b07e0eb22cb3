"""UCoFiA pieces: ISA, Sinkhorn prior, dual softmax, perturbed top-k, patch selection, levels."""

from __future__ import annotations

import math

import pytest
import torch
from video_retrieval.temporal import build_aggregator
from video_retrieval.temporal.features import TextFeatures, VideoFeatures
from video_retrieval.temporal.isa import ISA, isa
from video_retrieval.temporal.patch_select import PatchSelector, hard_topk_indicator, perturbed_topk
from video_retrieval.temporal.sinkhorn import (
    apply_sinkhorn,
    sinkhorn_prior,
    sinkhorn_scalings,
)

D, T, P, L = 32, 4, 6, 7


# ---------------------------------------------------------------------------------------------- ISA
def test_isa_identity_hand_computed():
    # x = [1, 0], tau = 1, W = I: inner = softmax(x), outer = softmax(inner), score = outer[0]
    e = math.e
    inner = [e / (e + 1), 1 / (e + 1)]
    outer0 = math.exp(inner[0]) / (math.exp(inner[0]) + math.exp(inner[1]))
    out = isa(torch.tensor([1.0, 0.0]), torch.eye(2), tau=1.0)
    assert math.isclose(out.item(), outer0, rel_tol=1e-6)
    # tau = 0.01 is nearly a max
    x = torch.tensor([0.30, 0.10, 0.25])
    assert math.isclose(isa(x, torch.eye(3)).item(), 0.30, abs_tol=1e-3)


def test_isa_mask_and_weight_slicing():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, generator=g)
    w = torch.eye(8) + 0.1 * torch.rand(8, 8, generator=g)  # learned, non-identity
    ref = isa(x, w[:3, :3], tau=0.05)
    padded = torch.cat([x, 100 * torch.ones(5, 2)], dim=1)
    mask = torch.tensor([True, True, True, False, False])
    torch.testing.assert_close(isa(padded, w, mask, tau=0.05), ref)
    # empty slice -> 0, no NaN
    out = isa(padded, w, torch.zeros(5, dtype=torch.bool), tau=0.05)
    torch.testing.assert_close(out, torch.zeros(5))
    with pytest.raises(ValueError):
        isa(torch.rand(9), torch.eye(8))
    mod = ISA(4)
    torch.testing.assert_close(mod.weight, torch.eye(4))


# ------------------------------------------------------------------------------------------ Sinkhorn
def _sk_by_hand(L, iters):
    m = max(max(r) for r in L)
    K = [[math.exp(v - m) for v in r] for r in L]
    nb, nt = len(K), len(K[0])
    b = [1 / sum(K[i][j] for i in range(nb)) for j in range(nt)]
    for _ in range(iters):
        a = [1 / sum(K[i][j] * b[j] for j in range(nt)) for i in range(nb)]
        b = [1 / sum(a[i] * K[i][j] for i in range(nb)) for j in range(nt)]
    z = [math.log(bj) - m for bj in b]
    lse = math.log(sum(math.exp(v) for v in z))
    return [v - lse for v in z]


def test_sinkhorn_prior_hand_computed_2x3():
    L = [[1.0, 2.0, 0.5], [3.0, 0.0, 1.5]]
    prior = sinkhorn_prior(torch.tensor(L), iters=4)
    assert prior.shape == (3,)
    torch.testing.assert_close(
        prior.double(), torch.tensor(_sk_by_hand(L, 4), dtype=torch.float64), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(prior.exp().sum(), torch.tensor(1.0))


def test_sinkhorn_marginals_converge():
    g = torch.Generator().manual_seed(0)
    L = 3 * torch.randn(5, 5, generator=g)
    K = torch.exp(L.double() - L.max())

    def row_err(iters):
        a, b = sinkhorn_scalings(L, iters)
        P = a[:, None] * K * b[None, :]
        torch.testing.assert_close(P.sum(0), torch.ones(5, dtype=torch.float64))  # cols exact
        return (P.sum(1) - 1).abs().max().item()

    assert row_err(200) < 1e-6
    assert row_err(200) < row_err(1)
    # rectangular bank: columns are exactly balanced after each update
    L2 = torch.randn(7, 3, generator=g).double()
    a, b = sinkhorn_scalings(L2, 4)
    P2 = a[:, None] * torch.exp(L2 - L2.max()) * b[None, :]
    assert a.shape == (7,) and b.shape == (3,)
    torch.testing.assert_close(P2.sum(0), torch.ones(3, dtype=torch.float64))


def test_sinkhorn_penalises_hub_and_apply_directions():
    bank = torch.tensor([[5.0, 1.0, 0.0], [5.0, 0.0, 1.0], [5.0, 0.5, 0.5], [4.0, 1.0, 1.0]])
    prior = sinkhorn_prior(bank)
    assert prior[0] < prior[1] and prior[0] < prior[2]  # the hub video is down-weighted
    test = torch.randn(2, 3)
    torch.testing.assert_close(apply_sinkhorn(test, bank, "t2v"), test + prior[None, :])
    bank_v = torch.randn(2, 9)  # test texts x training videos
    torch.testing.assert_close(
        apply_sinkhorn(test, bank_v, "v2t"), test + sinkhorn_prior(bank_v.T)[:, None]
    )
    with pytest.raises(ValueError):
        apply_sinkhorn(test, bank, "x")


# -------------------------------------------------------------------------------------- top-k
def test_perturbed_topk_small_sigma_equals_hard_and_grads():
    torch.manual_seed(0)
    scores = torch.randn(4, 9)
    hard = hard_topk_indicator(scores, 3)
    assert hard.shape == (4, 3, 9)
    idx = hard.argmax(-1)
    assert (idx[:, 1:] > idx[:, :-1]).all()  # ordered by position
    torch.testing.assert_close(perturbed_topk(scores, 3, num_samples=50, sigma=1e-6), hard)
    for diagonal in (False, True):
        s = scores.clone().requires_grad_(True)
        ind = perturbed_topk(s, 3, num_samples=500, sigma=0.5, diagonal=diagonal)
        torch.testing.assert_close(ind.sum((1, 2)), torch.full((4,), 3.0))
        (ind * torch.randn_like(ind)).sum().backward()
        assert s.grad.abs().sum() > 0


def test_perturbed_topk_gradient_sign():
    # position 0 is on the top-2 boundary: raising its score raises its selected mass.
    torch.manual_seed(1)
    for diagonal in (False, True):
        s = torch.tensor([[0.50, 0.52, 0.48, 0.10, 0.90]], requires_grad=True)
        ind = perturbed_topk(s, 2, num_samples=2000, sigma=0.05, diagonal=diagonal)
        ind[..., 0].sum().backward()
        assert s.grad[0, 0] > 0
        assert s.grad[0, 1] < 0 or s.grad[0, 2] < 0 or diagonal


def test_patch_selector_eval_deterministic_and_picks_topk():
    torch.manual_seed(0)
    sel = PatchSelector(D, topk=3).eval()
    frames, patches = torch.randn(2, T, D), torch.randn(2, T, P, D)
    mask = torch.tensor([[True] * T, [True, True, False, False]])
    tok1, tmask = sel(frames, patches, mask)
    tok2, _ = sel(frames, patches, mask)
    assert tok1.shape == (2, T * 4, D) and tmask.shape == (2, T * 4)
    torch.testing.assert_close(tok1, tok2)
    assert tmask[1].tolist() == [True] * 8 + [False] * 8
    # frame (0, 1): CLS then the top-3 patches by predictor score, in patch order
    scores = sel.score_predictor(torch.cat([frames[0, 1:2, None], patches[0, 1:2]], dim=1))[0, 1:]
    top = torch.topk(scores, 3).indices.sort().values
    torch.testing.assert_close(tok1[0, 4:8], torch.cat([frames[0, 1:2], patches[0, 1, top]]))
    # training mode is stochastic but still differentiable into the scorer
    sel.train()
    tok, _ = sel(frames, patches, mask)
    tok.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in sel.parameters())


# --------------------------------------------------------------------------------------- UCoFiA
def make(b=3, nt=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    vlen = torch.tensor([T - i % 2 for i in range(b)])
    video = VideoFeatures(
        torch.randn(b, T, D, generator=g),
        torch.arange(T)[None] < vlen[:, None],
        torch.randn(b, T, P, D, generator=g),
    )
    wlen = torch.tensor([L - i % 3 for i in range(nt)])
    text = TextFeatures(
        torch.randn(nt, D, generator=g),
        torch.randn(nt, L, D, generator=g),
        torch.arange(L)[None] < wlen[:, None],
    )
    return text, video


def build(**kw):
    torch.manual_seed(0)
    agg = build_aggregator("ucofia", D, max_frames=T + 2, max_words=L + 3, **kw)
    return agg.eval()


def test_ucofia_shapes_levels_and_mean():
    agg = build()
    assert agg.query_dependent and agg.needs_words and agg.needs_patches
    text, video = make()
    levels = agg.level_similarities(text, video)
    assert set(levels) == {"video_sentence", "frame_sentence", "patch_word"}
    for v in levels.values():
        assert v.shape == (4, 3) and torch.isfinite(v).all()
    torch.testing.assert_close(agg.similarity(text, video), sum(levels.values()) / 3)
    with pytest.raises(NotImplementedError):
        agg.embed_video(video)


def test_ucofia_identity_init_levels():
    agg = build()
    text, video = make()
    levels = agg.level_similarities(text, video)
    st = build_aggregator("seq_transformer", D, max_frames=T + 2)
    st.load_state_dict({k: v for k, v in agg.state_dict().items() if k in st.state_dict()})
    torch.testing.assert_close(
        levels["video_sentence"], st.eval().similarity(text, video), rtol=1e-5, atol=1e-4
    )
    # frame-sentence for one pair against the direct formula
    s = torch.nn.functional.normalize(text.sentence[1], dim=-1)
    n = int(video.mask[2].sum())
    f = torch.nn.functional.normalize(video.frames[2, :n], dim=-1)
    x = f @ s
    w = torch.softmax(torch.softmax(x / 0.01, 0) / 0.01, 0)
    torch.testing.assert_close(
        levels["frame_sentence"][1, 2], 100 * (x * w).sum(), rtol=1e-4, atol=1e-4
    )


def test_ucofia_patch_word_matches_reference_formula_unmasked():
    agg = build()
    text, video = make()
    text = TextFeatures(text.sentence, text.words, torch.ones(4, L, dtype=torch.bool))
    video = VideoFeatures(video.frames, torch.ones(3, T, dtype=torch.bool), video.patches)
    pw = agg.level_similarities(text, video)["patch_word"]
    tokens, _ = agg.select_patches(video)
    ww = torch.nn.functional.normalize(text.words, dim=-1)
    A = torch.einsum("tld,vpd->tlvp", ww, tokens)  # identity projections
    tau, sm = 0.01, torch.softmax
    word_level = (sm(sm(A / tau, dim=1) / tau, dim=1) * A).sum(1)  # [t, v, p]
    patch_level = (sm(sm(A / tau, dim=-1) / tau, dim=-1) * A).sum(-1)  # [t, l, v]
    s2p = (sm(sm(word_level / tau, -1) / tau, -1) * word_level).sum(-1)
    v2w = (sm(sm(patch_level / tau, 1) / tau, 1) * patch_level).sum(1)
    torch.testing.assert_close(pw, (s2p + v2w) / 2, rtol=1e-4, atol=1e-4)


def test_ucofia_padding_changes_nothing():
    agg = build()
    text, video = make()
    ref = agg.similarity(text, video)
    g = torch.Generator().manual_seed(5)
    # garbage in padded frames/patches/words + 2 extra padded frames and 3 extra padded words
    frames = torch.where(
        video.mask[..., None], video.frames, 40 * torch.randn(video.frames.shape, generator=g)
    )
    patches = torch.where(
        video.mask[..., None, None],
        video.patches,
        40 * torch.randn(video.patches.shape, generator=g),
    )
    frames = torch.cat([frames, 40 * torch.randn(3, 2, D, generator=g)], 1)
    patches = torch.cat([patches, 40 * torch.randn(3, 2, P, D, generator=g)], 1)
    vmask = torch.cat([video.mask, torch.zeros(3, 2, dtype=torch.bool)], 1)
    words = torch.where(
        text.word_mask[..., None], text.words, 40 * torch.randn(text.words.shape, generator=g)
    )
    words = torch.cat([words, 40 * torch.randn(4, 3, D, generator=g)], 1)
    wmask = torch.cat([text.word_mask, torch.zeros(4, 3, dtype=torch.bool)], 1)
    out = agg.similarity(
        TextFeatures(text.sentence, words, wmask), VideoFeatures(frames, vmask, patches)
    )
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_ucofia_blockwise_and_chunked_equal_full():
    agg = build()
    text, video = make(b=4, nt=5)
    full = agg.similarity(text, video)
    blocks = torch.cat(
        [
            torch.cat([agg.similarity(text[i : i + 2], video[j : j + 3]) for j in (0, 3)], 1)
            for i in (0, 2, 4)
        ]
    )
    torch.testing.assert_close(blocks, full, rtol=1e-5, atol=1e-5)
    agg.chunk_elems = L * T * 4 * 2  # two (text, video) pairs of A per chunk
    torch.testing.assert_close(agg.similarity(text, video), full, rtol=1e-5, atol=1e-5)


def test_ucofia_gradients_reach_all_parameters():
    agg = build(num_samples=50, sigma=0.5)
    agg.train()
    text, video = make(b=3, nt=3)
    sim = agg.similarity(text, video)
    loss = torch.nn.functional.cross_entropy(
        sim, torch.arange(3)
    ) + torch.nn.functional.cross_entropy(sim.T, torch.arange(3))
    loss.backward()
    for name, p in agg.named_parameters():
        if name == "frame_position_embeddings.weight":
            assert p.grad[:T].abs().sum() > 0
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_ucofia_requires_words_and_patches_and_long_captions():
    agg = build()
    text, video = make()
    with pytest.raises(ValueError, match="word"):
        agg.similarity(TextFeatures(text.sentence), video)
    with pytest.raises(ValueError, match="patch"):
        agg.similarity(text, VideoFeatures(video.frames, video.mask))
    long_words = torch.randn(4, L + 5, D)
    long_mask = torch.ones(4, L + 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="max_words"):
        agg.similarity(TextFeatures(text.sentence, long_words, long_mask), video)


def test_ucofia_init_from_clip_and_no_patch_projection_variant():
    from open_clip.model import CLIP

    torch.manual_seed(3)
    clip = CLIP(
        D,
        dict(layers=1, width=32, patch_size=16, image_size=32, head_width=16),
        dict(context_length=16, vocab_size=100, width=D, heads=1, layers=4),
    )
    agg = build()
    assert agg.init_from_clip(clip) is True
    torch.testing.assert_close(
        agg.transformer.resblocks[2].attn.in_proj_weight,
        clip.transformer.resblocks[2].attn.in_proj_weight,
    )
    # eval-tree variant without W_l': equal to the default while W_l' is still the identity
    variant = build(patch_projection=False)
    assert variant.local_mat_weight1 is None
    text, video = make()
    torch.testing.assert_close(
        variant.similarity(text, video), build().similarity(text, video), rtol=1e-5, atol=1e-5
    )


def test_module_sinkhorn_matrix_both_directions_blockwise():
    """The evaluation path (``RetrievalModule.sinkhorn_matrix``, computed in blocks) equals the
    per-level prior added by hand and averaged over the three levels."""
    from video_retrieval.train.retrieval_module import RetrievalModule

    m = RetrievalModule(model="vr-micro", aggregator="ucofia", num_frames=T + 2, max_words=L + 3)
    m.aggregator = build()  # width D features (the module's own width is the encoder's)
    m.hparams.eval_block_size = 2  # several text and video blocks
    text, video = make(b=5, nt=6, seed=1)
    bank_t, bank_v = make(b=7, nt=9, seed=2)
    for dim, bank in (("t2v", bank_t), ("v2t", bank_v)):
        got = m.sinkhorn_matrix(text, video, bank, dim)
        with torch.no_grad():
            test = m.aggregator.level_similarities(text, video)
            ref = m.aggregator.level_similarities(
                *((bank, video) if dim == "t2v" else (text, bank))
            )
        want = torch.stack([apply_sinkhorn(test[k], ref[k], dim) for k in sorted(test)]).mean(0)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        raw = torch.stack(list(test.values())).mean(0)
        assert not torch.allclose(got, raw)  # the prior changes the scores
        shift = (got - raw).float()
        if dim == "t2v":  # one prior per video column
            torch.testing.assert_close(shift, shift[:1].expand_as(shift), rtol=0, atol=1e-5)
        else:  # one prior per text row
            torch.testing.assert_close(shift, shift[:, :1].expand_as(shift), rtol=0, atol=1e-5)
