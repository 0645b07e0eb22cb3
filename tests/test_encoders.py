"""Tests of the CLIP encoders (open_clip and Hugging Face backends) and batched preprocessing."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from video_retrieval.encoders import weights_io as weights_io_module
from video_retrieval.encoders.clip_encoder import ClipEncoder
from video_retrieval.encoders.factory import create_encoder, load_encoder
from video_retrieval.encoders.precision import cpu_has_fast_bf16, resolve_autocast_dtype
from video_retrieval.encoders.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess
from video_retrieval.encoders.registry import list_models
from video_retrieval.temporal.features import TextFeatures

from video_retrieval.errors import UserError

CAPTIONS = [
    "a red circle moves to the left, then a blue square grows",
    "a green triangle appears",
    "x",
]


@pytest.fixture(scope="module")
def tiny():
    return create_encoder("vr-tiny", precision="fp32")


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 48, 80, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("shape", [(97, 131), (240, 320), (50, 40), (64, 64), (33, 200)])
def test_preprocess_matches_open_clip_pil_transform(shape):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    reference = open_clip.image_transform(64, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)(
        Image.fromarray(img)
    )
    ours = clip_preprocess(img[None], 64)[0]
    assert ours.shape == reference.shape == (3, 64, 64)
    assert ours.dtype == torch.float32
    # in grey levels: the normalised difference times std times 255
    grey = (ours - reference).abs() * torch.tensor(CLIP_STD).view(3, 1, 1) * 255
    assert grey.max().item() <= 1.01  # at most one grey level off (uint8 rounding)
    assert grey.mean().item() < 0.05


def test_preprocess_accepts_numpy_torch_and_single_frame(tiny, frames):
    a = tiny.preprocess(frames)
    b = tiny.preprocess(torch.from_numpy(frames))
    c = tiny.preprocess(frames[0])
    assert a.shape == (6, 3, 64, 64)
    assert torch.equal(a, b)
    assert torch.equal(a[:1], c)
    with pytest.raises(TypeError):
        tiny.preprocess(frames.astype(np.float32))


# ---------------------------------------------------------------------------- open_clip backend


def test_vr_tiny_shapes_and_contract(tiny, frames):
    assert isinstance(tiny, ClipEncoder)
    assert (tiny.embed_dim, tiny.image_size, tiny.context_length) == (128, 64, 32)
    assert "vr-tiny" in list_models() and "vr-micro" in list_models()
    cls, patches = tiny.encode_frames(frames, batch_size=4, return_patches=True)
    assert cls.shape == (6, 128) and cls.dtype == torch.float32
    assert patches.shape == (6, 64, 128)  # (64 / 8)^2 patches, CLS excluded
    cls_only, none = tiny.encode_frames(frames)
    assert none is None
    torch.testing.assert_close(cls_only, cls, rtol=0, atol=1e-5)
    empty, empty_p = tiny.encode_frames(np.zeros((0, 48, 80, 3), np.uint8), return_patches=True)
    assert empty.shape == (0, 128) and empty_p.shape == (0, 64, 128)


def test_cls_and_patches_match_open_clip_reference(tiny, frames):
    images = tiny.preprocess(frames)
    cls, patches = tiny.encode_images(images, return_patches=True)
    visual = tiny.model.visual
    with torch.no_grad():
        torch.testing.assert_close(cls, tiny.model.encode_image(images), rtol=1e-5, atol=1e-5)
        visual.output_tokens = True
        try:
            _, tokens = visual(images)  # open_clip: ln_post(all tokens), CLS dropped, no proj
        finally:
            visual.output_tokens = False
    torch.testing.assert_close(patches, tokens @ visual.proj, rtol=1e-5, atol=1e-5)


def test_text_sentence_words_and_mask(tiny):
    tokens = tiny.tokenize(CAPTIONS)
    assert tokens.shape == (3, 32) and tokens.dtype == torch.long
    out = tiny.encode_text(tokens, return_words=True)
    assert isinstance(out, TextFeatures)
    assert out.sentence.shape == (3, 128) and out.words.shape == (3, 32, 128)
    with torch.no_grad():
        torch.testing.assert_close(
            out.sentence, tiny.model.encode_text(tokens), rtol=1e-5, atol=1e-5
        )
    eot = tokens.argmax(-1)
    lengths = (tokens != 0).sum(-1)
    assert torch.equal(out.word_mask.sum(-1), lengths)  # SOT..EOT inclusive
    assert torch.equal(out.word_mask, torch.arange(32)[None] < lengths[:, None])
    assert out.word_mask[:, 0].all()
    # the sentence embedding is the projected word token at EOT
    torch.testing.assert_close(out.words[torch.arange(3), eot], out.sentence, rtol=1e-5, atol=1e-5)
    plain = tiny.encode_text(tokens)
    assert plain.words is None and plain.word_mask is None


def test_tokenize_truncates_keeping_eot_and_short_context(tiny):
    long = " ".join(["red circle"] * 40)
    tokens = tiny.tokenize([long])
    assert tokens.shape == (1, 32) and tokens[0, -1].item() == 49407
    short = tiny.tokenize(CAPTIONS[1:], context_length=8)
    assert short.shape == (2, 8)
    full = tiny.encode_text(tiny.tokenize(CAPTIONS[1:])).sentence
    # causal text tower: padding after EOT cannot change the sentence embedding
    torch.testing.assert_close(tiny.encode_text(short).sentence, full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        tiny.tokenize(["a"], context_length=33)


def test_frame_embedding_independent_of_batch_and_deterministic(tiny, frames):
    alone, alone_p = tiny.encode_frames(frames[2:3], return_patches=True)
    batch, batch_p = tiny.encode_frames(frames, return_patches=True)
    torch.testing.assert_close(alone[0], batch[2], rtol=0, atol=1e-5)
    torch.testing.assert_close(alone_p[0], batch_p[2], rtol=0, atol=1e-5)
    again, again_p = tiny.encode_frames(frames, return_patches=True)
    torch.testing.assert_close(again, batch, rtol=0, atol=0)  # eval mode: bit-identical
    torch.testing.assert_close(again_p, batch_p, rtol=0, atol=0)
    t1 = tiny.encode_text(tiny.tokenize(CAPTIONS[:1])).sentence
    t3 = tiny.encode_text(tiny.tokenize(CAPTIONS)).sentence
    torch.testing.assert_close(t1[0], t3[0], rtol=0, atol=1e-5)


def test_seeded_init_spec_rebuild_and_fingerprint(tiny):
    same = create_encoder(**json.loads(json.dumps(tiny.spec)))
    assert same.fingerprint() == tiny.fingerprint()
    other = create_encoder("vr-tiny", seed=1, precision="fp32")
    assert other.fingerprint() != tiny.fingerprint()
    fp = tiny.fingerprint()
    assert "vr-tiny" in fp and "size=64" in fp and "0.481455" in fp
    before = other.fingerprint()
    with torch.no_grad():
        other.model.visual.proj.add_(0.0)  # the same weights: the same fingerprint
        assert other.fingerprint() == before
        other.model.visual.proj[0, 0] += 1.0  # one weight changed: another fingerprint
    assert other.fingerprint() != before
    assert before == create_encoder("vr-tiny", seed=1, precision="fp32").fingerprint()


def test_save_encoder_round_trip_fp32_and_fp16(tiny, frames, tmp_path):
    path = tiny.save_encoder(tmp_path / "enc.safetensors")
    loaded = create_encoder(checkpoint=path, precision="fp32")
    assert loaded.fingerprint() == tiny.fingerprint()
    assert loaded.spec["model"] == "vr-tiny"
    small = tiny.save_encoder(tmp_path / "enc16.safetensors", dtype="fp16")
    assert small.stat().st_size < 10 * 2**20  # a few MB: vr-tiny is demo-sized
    half = load_encoder(small, precision="fp32")
    ref, _ = tiny.encode_frames(frames)
    got, _ = half.encode_frames(frames)
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=-1)
    assert cos.min().item() > 0.999
    with pytest.raises(UserError, match="vr-micro"):
        create_encoder("vr-micro", checkpoint=path)


def test_open_clip_state_dict_checkpoint(tiny, tmp_path):
    path = tmp_path / "openclip.pt"
    torch.save(tiny.model.state_dict(), path)
    loaded = create_encoder("vr-tiny", checkpoint=path, seed=5)  # weights replace the seed-5 init
    assert loaded.weights_hash() == tiny.weights_hash()
    wrapped = tmp_path / "wrapped.pt"
    torch.save(
        {"state_dict": {"module." + k: v for k, v in tiny.model.state_dict().items()}}, wrapped
    )
    assert create_encoder("vr-tiny", checkpoint=wrapped).weights_hash() == tiny.weights_hash()
    with pytest.raises(UserError, match="could not load"):
        create_encoder("vr-micro", checkpoint=path)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled arbitrary object",))


def test_checkpoint_never_unpickles_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f, protocol=2)
    with pytest.raises(UserError, match="weights_only"):
        create_encoder("vr-micro", checkpoint=path)
    with pytest.raises(UserError, match="no such file"):
        create_encoder("vr-micro", checkpoint=tmp_path / "missing.pt")


def test_unknown_model_and_tag_give_user_errors():
    with pytest.raises(UserError, match="vr-tiny") as err:
        create_encoder("ViT-Q-99")
    assert "ViT-B-32" in str(err.value)
    with pytest.raises(UserError, match="laion2b_s34b_b79k"):
        create_encoder("ViT-B-32", pretrained="no_such_tag")
    with pytest.raises(UserError, match="precision"):
        create_encoder("vr-micro", precision="fp8")
    with pytest.raises(UserError, match="backend"):
        create_encoder("vr-micro", backend="onnx")


def test_offline_pretrained_tag_is_one_clear_error(monkeypatch, tmp_path):
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(weights_io_module, "host_resolves", lambda *a, **k: False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(UserError) as err:
        create_encoder("ViT-B-32", pretrained="laion2b_s34b_b79k")
    msg = str(err.value)
    assert "could not download" in msg
    assert "--pretrained /path/to/open_clip_pytorch_model.bin" in msg
    assert "create_encoder('ViT-B-32', pretrained=PATH)" in msg


def test_precision_policy_and_bf16_outputs_fp32(frames):
    assert resolve_autocast_dtype("fp32", "cpu") is None
    assert resolve_autocast_dtype("bf16", "cpu") is torch.bfloat16
    expected = torch.bfloat16 if cpu_has_fast_bf16() else None
    assert resolve_autocast_dtype("auto", "cpu") is expected
    fp32 = create_encoder("vr-tiny", precision="fp32")
    bf16 = create_encoder("vr-tiny", precision="bf16")
    a, _ = fp32.encode_frames(frames)
    b, bp = bf16.encode_frames(frames, return_patches=True)
    assert b.dtype == torch.float32 and bp.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item() > 0.98
    t = bf16.encode_text(bf16.tokenize(CAPTIONS), return_words=True)
    assert t.sentence.dtype == torch.float32 and t.words.dtype == torch.float32


def test_gradients_flow_for_training():
    enc = create_encoder("vr-micro", precision="fp32")
    enc.train()
    frames = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    cls, patches = enc.encode_images(enc.preprocess(frames), return_patches=True)
    text = enc.encode_text(enc.tokenize(CAPTIONS[:2]), return_words=True)
    loss = cls.sum() + patches.mean() + text.sentence.sum() + text.words.mean()
    loss.backward()
    assert enc.model.visual.conv1.weight.grad is not None
    assert enc.model.token_embedding.weight.grad is not None


# ---------------------------------------------------------------------------- HF backend


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=24,
    )
    torch.manual_seed(123)
    model = transformers.CLIPModel(cfg).eval()
    path = tmp_path_factory.mktemp("hf_clip")
    model.save_pretrained(path)
    return path, model


def test_hf_backend_shapes_mask_and_reference(hf_dir, frames):
    path, model = hf_dir
    enc = create_encoder(str(path), backend="hf", precision="fp32")
    assert isinstance(enc, ClipEncoder) and enc.backend == "hf"
    assert (enc.embed_dim, enc.image_size, enc.context_length) == (24, 32, 16)
    assert enc.tokenizer_kind == "open_clip_bpe"  # no tokenizer files in the directory
    cls, patches = enc.encode_frames(frames, return_patches=True)
    assert cls.shape == (6, 24) and patches.shape == (6, 16, 24)
    images = enc.preprocess(frames)
    with torch.no_grad():
        vision = model.vision_model(pixel_values=images)
        ref_cls = model.visual_projection(vision.pooler_output)
        tower = getattr(model.vision_model, "vision_model", model.vision_model)
        ref_patches = model.visual_projection(tower.post_layernorm(vision.last_hidden_state[:, 1:]))
    torch.testing.assert_close(cls, ref_cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patches, ref_patches, rtol=1e-5, atol=1e-5)

    tokens = enc.tokenize(CAPTIONS)
    assert tokens.shape == (3, 16)
    text = enc.encode_text(tokens, return_words=True)
    assert text.sentence.shape == (3, 24) and text.words.shape == (3, 16, 24)
    lengths = (tokens != 0).sum(-1)
    assert torch.equal(text.word_mask, torch.arange(16)[None] < lengths[:, None])
    with torch.no_grad():
        ref_text = model.text_projection(model.text_model(input_ids=tokens).pooler_output)
    torch.testing.assert_close(text.sentence, ref_text, rtol=1e-5, atol=1e-5)
    eot = lengths - 1
    torch.testing.assert_close(
        text.words[torch.arange(3), eot], text.sentence, rtol=1e-5, atol=1e-5
    )


def test_hf_backend_deterministic_batch_independent_and_round_trip(hf_dir, frames, tmp_path):
    path, _ = hf_dir
    enc = create_encoder(str(path), backend="hf", precision="fp32")
    a, _ = enc.encode_frames(frames)
    b, _ = enc.encode_frames(frames)
    one, _ = enc.encode_frames(frames[4:5])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(one[0], a[4], rtol=0, atol=1e-5)
    saved = enc.save_encoder(tmp_path / "hf.safetensors")
    loaded = create_encoder(checkpoint=saved, precision="fp32")
    assert loaded.backend == "hf" and loaded.fingerprint() == enc.fingerprint()
    rebuilt = create_encoder(**json.loads(json.dumps(enc.spec)))  # architecture from the spec
    shapes = {k: v.shape for k, v in enc.model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.model.state_dict().items()} == shapes


def test_hf_backend_missing_model_is_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(weights_io_module, "host_resolves", lambda *a, **k: False)
    with pytest.raises(UserError, match="local directory"):
        create_encoder("no-such-org/no-such-clip", backend="hf")
    with pytest.raises(UserError, match="config.json"):
        create_encoder(str(tmp_path), backend="hf")


def _index_then_search(tmp_path, capsys, model_args: list[str]) -> list[dict]:
    """``vr index`` one 2 s video of a red square with ``model_args``, then ``vr search`` it."""
    from video_retrieval.cli import main
    from video_retrieval.media.write import write_video

    x = np.full((10, 64, 64, 3), 30, np.uint8)
    x[:, 20:44, 20:44] = (220, 40, 40)
    write_video(tmp_path / "v" / "red.mp4", x, fps=5)
    idx = tmp_path / "idx"
    rc = main(["index", str(tmp_path / "v"), "--index", str(idx), *model_args, "--workers", "0",
               "--json"])  # fmt: skip
    assert rc == 0 and json.loads(capsys.readouterr().out)["videos"] == 1
    rc = main(["search", "a red square", "--index", str(idx), "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)["results"]


def test_vr_index_and_search_with_a_hugging_face_clip(hf_dir, tmp_path, capsys):
    hits = _index_then_search(tmp_path, capsys, ["--backend", "hf", "--model", str(hf_dir[0])])
    assert [Path(h["video"]).name for h in hits] == ["red.mp4"]


@pytest.mark.parametrize("flag", ["--pretrained", "--checkpoint-file"])
def test_index_built_with_local_weights_is_searchable(flag, tmp_path, capsys):
    """The manifest remembers where the weights came from (``spec["weights"]``), so a search
    rebuilds the same encoder instead of a random one with another fingerprint."""
    enc = create_encoder("vr-tiny", precision="fp32", seed=5)
    if flag == "--pretrained":  # an open_clip state dict, as downloaded weights are
        weights = tmp_path / "tiny_state.pt"
        torch.save(enc.model.state_dict(), weights)
    else:  # a file written by save_encoder
        weights = enc.save_encoder(tmp_path / "tiny.safetensors")
    hits = _index_then_search(
        tmp_path, capsys, ["--model", "vr-tiny", "--pretrained", str(weights)]
    )
    assert [Path(h["video"]).name for h in hits] == ["red.mp4"]
