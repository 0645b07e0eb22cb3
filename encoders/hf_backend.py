"""Hugging Face ``transformers.CLIPModel`` backend for ``ClipEncoder``.

``create_encoder(model=DIR_OR_HUB_ID, backend="hf")``. Same outputs as the open_clip backend:
CLS after ``post_layernorm`` @ ``visual_projection``; patches = ``post_layernorm`` on every token
@ ``visual_projection`` (CLS dropped); sentence = EOS token of the text tower (whose
``last_hidden_state`` already has ``final_layer_norm``) @ ``text_projection``; words = every token
@ ``text_projection``.

Tokenizer: the directory's own tokenizer when it has tokenizer files (``tokenizer.json`` or
``vocab.json`` + ``merges.txt``); otherwise open_clip's bundled CLIP BPE tokenizer (works offline,
same vocabulary as OpenAI CLIP; needs ``vocab_size >= 49408``). Preprocessing uses the vision
config's ``image_size`` and the ``image_mean``/``image_std`` of ``preprocessor_config.json``
when present (CLIP's values otherwise).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import open_clip
import torch
from torch import nn
from video_retrieval.encoders.clip_encoder import ClipEncoder, word_mask_from_eot
from video_retrieval.encoders.preprocess import CLIP_MEAN, CLIP_STD
from video_retrieval.encoders.weights_io import hub_offline_if_unreachable, load_state_into

from video_retrieval.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
OPEN_CLIP_VOCAB_SIZE = 49408


class _OpenClipBPE:
    """open_clip's CLIP BPE tokenizer with the HF call convention used below."""

    def __init__(self, context_length: int):
        self.tok = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        self.eos_token_id = self.tok.eot_token_id

    def __call__(self, texts, context_length):
        return self.tok(list(texts), context_length=context_length)


class _HFTokenizer:
    def __init__(self, directory: str):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(directory)
        self.eos_token_id = self.tok.eos_token_id

    def __call__(self, texts, context_length):
        out = self.tok(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=context_length,
            return_tensors="pt",
        )
        return out["input_ids"].long()


class HFClipEncoder(ClipEncoder):
    """transformers backend. ``self.model`` is the ``CLIPModel``."""

    backend = "hf"

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        spec: dict,
        tokenizer,
        precision="auto",
        device="cpu",
        mean=CLIP_MEAN,
        std=CLIP_STD,
    ):
        cfg = model.config
        super().__init__(
            model_name,
            embed_dim=cfg.projection_dim,
            image_size=cfg.vision_config.image_size,
            context_length=cfg.text_config.max_position_embeddings,
            spec=spec,
            precision=precision,
            device=device,
            mean=mean,
            std=std,
        )
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer_kind = "hf" if isinstance(tokenizer, _HFTokenizer) else "open_clip_bpe"
        self.to(device)
        self.eval()

    def _vision_transformer(self):
        vm = self.model.vision_model
        return getattr(vm, "vision_model", vm)  # CLIPVisionModel wraps CLIPVisionTransformer

    def _encode_images(self, images, return_patches):
        vt = self._vision_transformer()
        hidden = vt(pixel_values=images).last_hidden_state  # before post_layernorm
        proj = self.model.visual_projection
        if return_patches:
            x = proj(vt.post_layernorm(hidden))
            return x[:, 0], x[:, 1:]
        return proj(vt.post_layernorm(hidden[:, 0])), None

    def tokenize(self, texts: list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        if length > self.context_length:
            raise ValueError(f"context_length {length} > model context {self.context_length}")
        return self.tokenizer(texts, length)

    def _eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        hit = tokens == self.tokenizer.eos_token_id
        idx = hit.int().argmax(dim=-1)  # first EOS (padding may repeat the EOS id)
        return torch.where(hit.any(-1), idx, torch.full_like(idx, tokens.shape[1] - 1))

    def _encode_text(self, tokens, return_words):
        eot = self._eot_index(tokens)
        mask = word_mask_from_eot(eot, tokens.shape[1])
        out = self.model.text_model(input_ids=tokens, attention_mask=mask.long())
        hidden = out.last_hidden_state  # final_layer_norm already applied
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        sentence = self.model.text_projection(hidden[rows, eot])  # each text's EOS token
        if not return_words:
            return sentence, None, None
        return sentence, self.model.text_projection(hidden), mask


def _has_tokenizer(directory: Path) -> bool:
    return directory.is_dir() and any((directory / f).is_file() for f in TOKENIZER_FILES)


def _image_norm(directory: Path | None) -> tuple[tuple, tuple]:
    if directory is not None and (directory / "preprocessor_config.json").is_file():
        cfg = json.loads((directory / "preprocessor_config.json").read_text())
        return tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))
    return CLIP_MEAN, CLIP_STD


def _load_hf_state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: could not load weights safely ({type(e).__name__}: {e})") from e
    return state.get("state_dict", state) if isinstance(state, dict) else state


def create_hf_encoder(
    model: str | os.PathLike | None,
    checkpoint: Path | None = None,
    precision: str = "auto",
    device="cpu",
    seed: int = 0,
    hf_config: dict | None = None,
) -> HFClipEncoder:
    from transformers import CLIPConfig, CLIPModel

    if model is None and hf_config is None:
        raise UserError("backend='hf' needs model=<CLIPModel directory or hub id>")
    name = str(model) if model is not None else "hf-clip"
    directory = Path(name).expanduser() if model is not None else None
    local = directory is not None and directory.is_dir()

    if hf_config is not None:
        config = CLIPConfig.from_dict(hf_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clip = CLIPModel(config)
    elif local:
        if not (directory / "config.json").is_file():
            raise UserError(f"{directory}: not a Hugging Face CLIP directory (no config.json)")
        try:
            clip = CLIPModel.from_pretrained(str(directory))
        except Exception as e:
            raise UserError(
                f"{directory}: could not load a CLIPModel ({type(e).__name__}: {e})"
            ) from e
    else:
        try:
            with hub_offline_if_unreachable():
                clip = CLIPModel.from_pretrained(name)
        except Exception as e:
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise UserError(
                f"could not load Hugging Face CLIP model {name!r}: not a local directory and the "
                f"download failed ({reason}). Pass a local directory saved with "
                "save_pretrained (create_encoder(model=DIR, backend='hf')) or a local weights file "
                "(--checkpoint PATH)."
            ) from e
    clip = clip.float()
    if checkpoint is not None:
        load_state_into(clip, _load_hf_state(Path(checkpoint)), Path(checkpoint))

    if local and _has_tokenizer(directory):
        tokenizer = _HFTokenizer(str(directory))
    else:
        if clip.config.text_config.vocab_size < OPEN_CLIP_VOCAB_SIZE:
            raise UserError(
                f"{name}: no tokenizer files and vocab_size {clip.config.text_config.vocab_size} "
                f"< {OPEN_CLIP_VOCAB_SIZE}, so the fallback CLIP BPE tokenizer cannot be used"
            )
        tokenizer = _OpenClipBPE(clip.config.text_config.max_position_embeddings)
    mean, std = _image_norm(directory if local else None)
    spec = {
        "model": str(directory.resolve()) if local else name,
        "backend": "hf",
        "precision": precision,
        "seed": int(seed),
        "hf_config": json.loads(clip.config.to_json_string()),
    }
    if checkpoint is not None:
        spec["weights"] = {"checkpoint": str(Path(checkpoint).resolve())}
    elif hf_config is None:  # loaded with from_pretrained: rebuild the same way
        spec["weights"] = {"from_pretrained": spec["model"]}
    return HFClipEncoder(clip, name, spec, tokenizer, precision, device, mean, std)
