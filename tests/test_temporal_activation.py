"""seqTransf / tightTransf blocks copied from a CLIP text tower compute what the tower's blocks
compute: same weights *and* the tower's MLP activation (QuickGELU for OpenAI towers, GELU for
LAION ones), for open_clip and Hugging Face towers; the activation is recorded in checkpoints,
and a checkpoint without the record loads with QuickGELU, as it was trained."""

from __future__ import annotations

import logging

import pytest
import torch
from open_clip.model import CLIP
from video_retrieval.temporal import build_aggregator
from video_retrieval.temporal.seq_transformer import (
    key_padding_bias,
    text_tower_activation,
)

D = 32


def open_clip_tower(quick_gelu: bool, layers: int = 3, seed: int = 3) -> CLIP:
    """A small random open_clip CLIP whose text width is the joint width (as ViT-B/32's 512)."""
    torch.manual_seed(seed)
    return CLIP(
        D,
        dict(layers=1, width=32, patch_size=16, image_size=32, head_width=16),
        dict(context_length=16, vocab_size=100, width=D, heads=2, layers=layers),
        quick_gelu=quick_gelu,
    ).eval()


def hf_clip(hidden_act: str, layers: int = 3, seed: int = 5):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=D,
            intermediate_size=4 * D,
            num_hidden_layers=layers,
            num_attention_heads=2,
            max_position_embeddings=16,
            hidden_act=hidden_act,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
        projection_dim=D,
    )
    torch.manual_seed(seed)
    return transformers.CLIPModel(cfg).eval()


def build(name="seq_transformer", layers=3, **kw):
    torch.manual_seed(0)
    return build_aggregator(name, D, max_frames=8, layers=layers, heads=2, **kw).eval()


def blocks_of(agg):
    return agg.transformer.resblocks


def frames(b=3, n=7, seed=11, dtype=torch.float32):
    return torch.randn(b, n, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------ open_clip towers


@pytest.mark.parametrize(("quick_gelu", "name"), [(False, "gelu"), (True, "quick_gelu")])
@pytest.mark.parametrize("agg_name", ["seq_transformer", "tight_transformer", "ucofia"])
def test_open_clip_copy_computes_the_text_blocks_function(quick_gelu, name, agg_name):
    clip = open_clip_tower(quick_gelu)
    assert text_tower_activation(clip) == name
    agg = build(agg_name)
    assert agg.activation == "quick_gelu"  # CLIP4Clip's default until a tower says otherwise
    assert agg.init_from_clip(clip) is True
    assert agg.activation == name
    x = frames()
    for mine, theirs in zip(blocks_of(agg), clip.transformer.resblocks, strict=True):
        assert torch.equal(mine(x), theirs(x))  # same ops, same weights: bit for bit
    # the whole stack, unmasked, is the text transformer without its causal mask
    assert torch.equal(agg.transformer(x), clip.transformer(x))


def test_gelu_tower_under_quick_gelu_would_compute_another_function():
    """The defect this fixes: QuickGELU blocks holding GELU-trained weights."""
    clip = open_clip_tower(quick_gelu=False)
    agg = build()
    agg.init_from_clip(clip)
    x = frames()
    good = agg.transformer(x)
    agg.set_activation("quick_gelu")
    assert (agg.transformer(x) - good).abs().max() > 1e-3
    assert torch.equal(agg.transformer(x), agg.transformer(x))  # deterministic


def test_copy_through_the_encoder_reads_the_activation_of_the_actual_model():
    from video_retrieval.encoders.factory import create_encoder

    # random-init vr-micro (text width 32 = joint width, 2 heads, 1 layer), GELU and QuickGELU
    for quick_gelu, name in ((False, "gelu"), (True, "quick_gelu")):
        enc = create_encoder("vr-micro", precision="fp32", quick_gelu=quick_gelu)
        assert text_tower_activation(enc) == name
        agg = build(layers=1)
        assert agg.init_from_clip(enc) is True and agg.activation == name
        x = frames()
        assert torch.equal(agg.transformer(x), enc.text_transformer().resblocks[0](x))


def test_towers_the_blocks_cannot_reproduce_keep_the_init(caplog):
    clip = open_clip_tower(quick_gelu=False)
    clip.transformer.resblocks[0].mlp.gelu = torch.nn.SiLU()  # an activation we do not build
    agg = build()
    before = {k: v.clone() for k, v in agg.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        assert agg.init_from_clip(clip) is False
    assert "activation" in caplog.text
    assert all(torch.equal(v, before[k]) for k, v in agg.state_dict().items())
    assert agg.activation == "quick_gelu"


def test_unknown_activation_name_is_refused():
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        build(activation="relu")


# ------------------------------------------------------------------ Hugging Face towers


def hf_layer(layer, x, bias=None):
    out = layer(x, attention_mask=bias)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize(("hidden_act", "name"), [("gelu", "gelu"), ("quick_gelu", "quick_gelu")])
@pytest.mark.parametrize("agg_name", ["seq_transformer", "tight_transformer"])
def test_hugging_face_copy_computes_the_text_layers_function(hidden_act, name, agg_name):
    hf = hf_clip(hidden_act)
    assert text_tower_activation(hf) == name
    agg = build(agg_name)
    assert agg.init_from_clip(hf) is True
    assert agg.activation == name
    pos = hf.text_model.embeddings.position_embedding.weight
    pos_emb = (
        agg.frame_position_embeddings if agg_name == "seq_transformer" else agg.position_embeddings
    )
    assert torch.equal(pos_emb.weight[: len(pos)], pos)
    # float64: the only differences left are the attention kernels' summation order
    agg.double()
    hf.double()
    x = frames(dtype=torch.float64)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4], dtype=torch.bool)
    # HF's additive attention mask [B, 1, query, key] with CLIP4Clip's -1e6 on padded keys
    hf_bias = ((1.0 - mask.double()) * -1e6)[:, None, None, :].expand(3, 1, 7, 7)
    ours = x
    ours_masked = x
    theirs = x
    theirs_masked = x
    bias = key_padding_bias(mask, 2, torch.float64)
    for mine, layer in zip(blocks_of(agg), hf.text_model.encoder.layers, strict=True):
        ours, theirs = mine(ours), hf_layer(layer, theirs)
        ours_masked = mine(ours_masked, bias)
        theirs_masked = hf_layer(layer, theirs_masked, hf_bias)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
        torch.testing.assert_close(
            ours_masked[mask], theirs_masked[mask], rtol=0, atol=1e-12
        )  # valid positions; padded rows are meaningless on both sides


def test_hugging_face_copy_through_the_hf_encoder():
    from video_retrieval.encoders.factory import create_encoder

    hf = hf_clip("gelu", layers=2)
    enc = create_encoder(backend="hf", hf_config=hf.config.to_dict(), precision="fp32")
    enc.model.load_state_dict(hf.state_dict())
    agg = build(layers=2)
    assert agg.init_from_clip(enc) is True and agg.activation == "gelu"
    layer = enc.model.text_model.encoder.layers[1]
    assert torch.equal(blocks_of(agg)[1].mlp.c_fc.weight, layer.mlp.fc1.weight)
    assert torch.equal(
        blocks_of(agg)[1].attn.in_proj_weight[D : 2 * D], layer.self_attn.k_proj.weight
    )


def test_hugging_face_tanh_gelu_and_unsupported_activations():
    agg = build()
    assert agg.init_from_clip(hf_clip("gelu_new")) is True
    assert agg.activation == "gelu_tanh"  # the same function, written by hand in transformers
    x = frames()
    layer = hf_clip("gelu_new").text_model.encoder.layers[0]
    torch.testing.assert_close(blocks_of(agg)[0](x), hf_layer(layer, x), rtol=1e-5, atol=1e-6)
    fresh = build()
    before = fresh.transformer.resblocks[0].mlp.c_fc.weight.clone()
    assert fresh.init_from_clip(hf_clip("gelu_fast")) is False
    assert torch.equal(fresh.transformer.resblocks[0].mlp.c_fc.weight, before)


# ------------------------------------------------------------------ checkpoints


def _save_like_vr_train(module, path, drop_activation=False):
    """The checkpoint ``vr train`` writes (Lightning's ``save_checkpoint``); ``drop_activation``
    removes the record, as in checkpoints written before it existed."""
    import lightning

    trainer = lightning.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    if drop_activation:
        ckpt = torch.load(path, weights_only=True)
        kwargs = ckpt["hyper_parameters"]["aggregator_kwargs"]
        assert kwargs.pop("activation") == "gelu"
        torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def gelu_run(tmp_path_factory):
    """A seq_transformer run initialised from a local GELU CLIP file (vr-micro, random)."""
    from video_retrieval.encoders.factory import create_encoder

    from video_retrieval.train.retrieval_module import RetrievalModule

    tmp = tmp_path_factory.mktemp("act")
    torch.manual_seed(1)
    clip_file = create_encoder("vr-micro", precision="fp32").save_encoder(tmp / "clip.safetensors")
    m = RetrievalModule(
        model="vr-micro",
        checkpoint=str(clip_file),
        aggregator="seq_transformer",
        aggregator_kwargs={"heads": 2},
        num_frames=3,
        max_words=16,
    )
    return tmp, m


def test_run_from_a_gelu_tower_records_its_activation(gelu_run):
    _, m = gelu_run
    assert m.aggregator.activation == "gelu"
    assert m.hparams["aggregator_kwargs"] == {"heads": 2, "activation": "gelu"}
    x = frames(n=3)
    text_block = m.encoder.text_transformer().resblocks[0]  # vr-micro has one text block
    assert torch.equal(m.aggregator.transformer.resblocks[0](x), text_block(x))


def test_checkpoint_reloads_with_the_recorded_activation(gelu_run):
    from video_retrieval.temporal.features import VideoFeatures

    from video_retrieval.models.checkpoints import load_retrieval_model
    from video_retrieval.train.retrieval_module import RetrievalModule

    tmp, m = gelu_run
    path = _save_like_vr_train(m, tmp / "new.ckpt")
    raw = torch.load(path, weights_only=True)
    assert raw["hyper_parameters"]["aggregator_kwargs"] == {"heads": 2, "activation": "gelu"}
    video = VideoFeatures(frames(n=3), torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]).bool())
    _, agg, meta = load_retrieval_model(path)
    assert agg.activation == "gelu" and meta["aggregator_kwargs"]["activation"] == "gelu"
    assert torch.equal(agg.embed_video(video), m.aggregator.eval().embed_video(video))
    lm = RetrievalModule.load_from_checkpoint(path)
    assert lm.aggregator.activation == "gelu"


def test_checkpoint_without_the_record_loads_as_quick_gelu(gelu_run):
    """Trained before the record: its blocks ran QuickGELU, even over a GELU tower."""
    from video_retrieval.models.checkpoints import load_retrieval_model
    from video_retrieval.train.retrieval_module import RetrievalModule

    tmp, m = gelu_run
    path = _save_like_vr_train(m, tmp / "old.ckpt", drop_activation=True)
    _, agg, _ = load_retrieval_model(path)
    assert agg.activation == "quick_gelu"
    # Lightning's loader re-runs __init__ (which copies the GELU tower) and then restores the
    # checkpoint: the recorded (here: absent, so QuickGELU) activation wins
    lm = RetrievalModule.load_from_checkpoint(path)
    assert lm.aggregator.activation == "quick_gelu"
    assert lm.hparams["aggregator_kwargs"]["activation"] == "quick_gelu"
    # init_from a checkpoint follows that checkpoint's record, not the new run's tower
    fine = RetrievalModule(
        model="vr-micro",
        checkpoint=m.hparams["checkpoint"],
        aggregator="seq_transformer",
        aggregator_kwargs={"heads": 2},
        num_frames=3,
        max_words=16,
        init_from=str(path),
    )
    assert fine.aggregator.activation == "quick_gelu"
    assert fine.hparams["aggregator_kwargs"]["activation"] == "quick_gelu"


def test_bundled_demo_checkpoint_still_loads_as_quick_gelu():
    from video_retrieval.models.assets import demo_retrieval_checkpoint
    from video_retrieval.models.checkpoints import load_retrieval_model

    demo = demo_retrieval_checkpoint()
    if demo is None:
        pytest.skip("no bundled demo retrieval model")
    _, agg, meta = load_retrieval_model(demo)
    assert "activation" not in meta["aggregator_kwargs"]  # trained before the record
    assert agg.activation == "quick_gelu"
