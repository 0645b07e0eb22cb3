"""CLIP frame and text encoders behind one small interface.

``ClipEncoder`` is the shared base (preprocessing, precision, batching, fingerprint, saving);
``OpenClipEncoder`` wraps an open_clip model (default backend) and ``hf_backend.HFClipEncoder``
wraps a Hugging Face ``transformers.CLIPModel``. Build them with ``create_encoder``.

Outputs, as in CLIP4Clip/UCoFiA:
- frame embedding [N,D]: CLS token after ``ln_post`` and the visual projection;
- patch tokens [N,P,D]: ``ln_post`` on every token, then the same projection, CLS dropped;
- sentence embedding [B,D]: EOT token after ``ln_final`` and ``text_projection``;
- word tokens [B,L,D]: ``ln_final`` on every token, then ``text_projection``; ``word_mask`` is
  True from SOT to EOT inclusive.
All outputs are fp32 whatever the autocast precision.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import open_clip
import torch
from torch import nn
from video_retrieval.encoders.precision import autocast_context, resolve_autocast_dtype
from video_retrieval.encoders.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess
from video_retrieval.encoders.registry import (
    register_model_configs,
)
from video_retrieval.temporal.features import TextFeatures

from video_retrieval.errors import UserError
from video_retrieval.media.atomic import atomic_path

register_model_configs()  # vr-tiny / vr-micro, before any open_clip lookup below


DEFAULT_MODEL = "vr-tiny"


ENCODER_FILE_FORMAT = "video_retrieval.encoder/1"


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every tensor of the state dict, sorted by name."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ClipEncoder(nn.Module):
    """Frame + text encoder; subclasses implement ``_encode_images``/``_encode_text``/``tokenize``."""

    backend: str = ""

    def __init__(
        self,
        model_name: str,
        embed_dim: int,
        image_size: int,
        context_length: int,
        spec: dict,
        precision: str = "auto",
        device: str | torch.device = "cpu",
        mean: tuple[float, float, float] = CLIP_MEAN,
        std: tuple[float, float, float] = CLIP_STD,
    ):
        super().__init__()
        self.model_name = model_name
        self.embed_dim = int(embed_dim)
        self.image_size = int(image_size)
        self.context_length = int(context_length)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.precision = precision
        self.autocast_dtype = resolve_autocast_dtype(precision, device)
        self.spec = spec

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def _autocast(self):
        return autocast_context(self.device, self.autocast_dtype)

    # ------------------------------------------------------------------ images
    def preprocess(self, pixels) -> torch.Tensor:
        """uint8 ``[N,H,W,3]`` (numpy or torch) -> normalised float ``[N,3,S,S]`` on the encoder's device."""
        return clip_preprocess(pixels, self.image_size, self.mean, self.std, device=self.device)

    def encode_images(
        self, images: torch.Tensor, return_patches: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Preprocessed images ``[N,3,S,S]`` -> (CLS ``[N,D]``, projected patches ``[N,P,D]`` or None)."""
        images = images.to(self.device, torch.float32)
        with self._autocast():
            cls, patches = self._encode_images(images, return_patches)
        return cls.float(), (patches.float() if patches is not None else None)

    @torch.no_grad()
    def encode_frames(
        self, pixels_uint8, batch_size: int = 64, return_patches: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 frames ``[N,H,W,3]`` -> embeddings, in chunks of ``batch_size``, without gradients."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if isinstance(pixels_uint8, np.ndarray):
            pixels_uint8 = torch.from_numpy(np.ascontiguousarray(pixels_uint8))
        if pixels_uint8.ndim == 3:
            pixels_uint8 = pixels_uint8.unsqueeze(0)
        cls_parts, patch_parts = [], []
        for start in range(0, pixels_uint8.shape[0], batch_size):
            images = self.preprocess(pixels_uint8[start : start + batch_size])
            cls, patches = self.encode_images(images, return_patches=return_patches)
            cls_parts.append(cls)
            if patches is not None:
                patch_parts.append(patches)
        if not cls_parts:  # no frames: run one dummy frame to learn the shapes
            dummy = torch.zeros((1, self.image_size, self.image_size, 3), dtype=torch.uint8)
            cls, patches = self.encode_images(self.preprocess(dummy), return_patches)
            return cls[:0], (patches[:0] if patches is not None else None)
        cls = torch.cat(cls_parts)
        patches = torch.cat(patch_parts) if return_patches else None
        return cls, patches

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: list[str], context_length: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor, return_words: bool = False) -> TextFeatures:
        """Token ids ``[B,L]`` -> ``TextFeatures`` (sentence ``[B,D]``, words ``[B,L,D]`` + mask)."""
        tokens = torch.as_tensor(tokens).to(self.device, torch.long)
        if tokens.ndim == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.shape[1] > self.context_length:
            raise ValueError(
                f"token sequence length {tokens.shape[1]} exceeds the model's context length "
                f"{self.context_length}"
            )
        with self._autocast():
            sentence, words, word_mask = self._encode_text(tokens, return_words)
        return TextFeatures(
            sentence.float(),
            words.float() if words is not None else None,
            word_mask if return_words else None,
        )

    # ------------------------------------------------------------------ identity
    def weights_hash(self) -> str:
        return state_dict_sha256(self.model)

    def fingerprint(self) -> str:
        """Model name + weights hash + preprocessing settings (changes whenever embeddings could)."""
        mean = ",".join(f"{m:.6g}" for m in self.mean)
        std = ",".join(f"{s:.6g}" for s in self.std)
        return (
            f"{self.backend}:{self.model_name}|sha256:{self.weights_hash()[:16]}"
            f"|size={self.image_size}|resize=short-bicubic-aa|crop=center|mean={mean}|std={std}"
            f"|ctx={self.context_length}"
        )

    def save_encoder(self, path: str | os.PathLike, dtype: str | torch.dtype | None = None) -> Path:
        """Write weights + spec to a safetensors file; ``create_encoder(checkpoint=path)`` loads it.

        ``dtype="fp16"`` halves the file (weights are cast back to fp32 on load).
        """
        from safetensors.torch import save_file

        cast = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(
            dtype, dtype
        )
        state = {}
        for name, t in self.model.state_dict().items():
            t = t.detach().cpu()
            if cast is not None and t.is_floating_point():
                t = t.to(cast)
            state[name] = t.contiguous().clone()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            meta = {"format": ENCODER_FILE_FORMAT, "spec": json.dumps(self.spec)}
            save_file(state, str(tmp), metadata=meta)
        return path

    # ------------------------------------------------------------------ backend hooks
    def _encode_images(self, images, return_patches):  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode_text(self, tokens, return_words):  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"model={self.model_name!r}, backend={self.backend!r}, embed_dim={self.embed_dim}, "
            f"image_size={self.image_size}, context_length={self.context_length}, "
            f"autocast={self.autocast_dtype}"
        )


def word_mask_from_eot(eot_index: torch.Tensor, length: int) -> torch.Tensor:
    """[B] EOT positions -> bool [B,L], True for SOT..EOT inclusive."""
    positions = torch.arange(length, device=eot_index.device)
    return positions.unsqueeze(0) <= eot_index.unsqueeze(1)


class OpenClipEncoder(ClipEncoder):
    """open_clip backend. ``self.model`` is the open_clip ``CLIP``/``CustomTextCLIP`` module."""

    backend = "open_clip"

    def __init__(
        self, model: nn.Module, model_name: str, spec: dict, precision="auto", device="cpu"
    ):
        visual = model.visual
        image_size = visual.image_size
        image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
        text = self._text_tower_of(model)
        context_length = int(
            getattr(model, "context_length", 0) or text.positional_embedding.shape[0]
        )
        pp = getattr(visual, "preprocess_cfg", {}) or {}
        mean = tuple(pp.get("mean", CLIP_MEAN))
        std = tuple(pp.get("std", CLIP_STD))
        embed_dim = self._embed_dim_of(model)
        super().__init__(
            model_name, embed_dim, image_size, context_length, spec, precision, device, mean, std
        )
        self.model = model
        self._tokenizer = None
        self.to(device)
        self.eval()

    # ------------------------------------------------------------------ structure
    @staticmethod
    def _text_tower_of(model: nn.Module) -> nn.Module:
        text = getattr(model, "text", None)
        return text if isinstance(text, nn.Module) else model

    @staticmethod
    def _embed_dim_of(model: nn.Module) -> int:
        visual = model.visual
        proj = getattr(visual, "proj", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[1])
        out = getattr(visual, "output_dim", None)
        if out:
            return int(out)
        with torch.no_grad():
            return int(model.encode_text(torch.zeros(1, 4, dtype=torch.long)).shape[-1])

    def _vit_tokens_supported(self) -> bool:
        v = self.model.visual
        return (
            isinstance(v, open_clip.transformer.VisionTransformer)
            and v.attn_pool is None
            and not v.final_ln_after_pool
            and v.pool_type == "tok"
            and isinstance(v.proj, torch.Tensor)
        )

    def _text_tokens_supported(self) -> bool:
        t = self._text_tower_of(self.model)
        pool = getattr(t, "text_pool_type", getattr(t, "pool_type", None))
        return (
            hasattr(t, "token_embedding")
            and hasattr(t, "ln_final")
            and getattr(t, "cls_emb", None) is None
            and pool in ("argmax", "eos", "last")
        )

    @property
    def text_width(self) -> int:
        return int(self._text_tower_of(self.model).positional_embedding.shape[1])

    def text_transformer(self) -> nn.Module:
        """The text tower's open_clip ``Transformer`` (``.resblocks``), e.g. to initialise
        CLIP4Clip's seqTransf / tightTransf from the first blocks."""
        return self._text_tower_of(self.model).transformer

    def text_positional_embedding(self) -> torch.Tensor:
        """``[context_length, text_width]`` positional embedding of the text tower."""
        return self._text_tower_of(self.model).positional_embedding

    # ------------------------------------------------------------------ images
    def _encode_images(self, images, return_patches):
        if not self._vit_tokens_supported():
            if return_patches:
                raise UserError(
                    f"model {self.model_name!r} has no CLS+patch-token ViT image tower; "
                    "patch tokens are unavailable (use a ViT model)"
                )
            return self.model.encode_image(images), None
        v = self.model.visual
        x = v._embeds(images)  # conv1 + class token + pos. embedding + patch dropout + ln_pre
        x = v.transformer(x)
        if return_patches:
            x = v.ln_post(x) @ v.proj
            return x[:, 0], x[:, 1:]
        return v.ln_post(x[:, 0]) @ v.proj, None

    # ------------------------------------------------------------------ text
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            try:
                self._tokenizer = open_clip.get_tokenizer(self.model_name)
            except Exception:  # tokenizers that need a download: fall back to CLIP BPE
                self._tokenizer = open_clip.tokenizer.SimpleTokenizer(
                    context_length=self.context_length
                )
        return self._tokenizer

    def tokenize(self, texts: list[str], context_length: int | None = None) -> torch.Tensor:
        """CLIP BPE: ``[SOT] + tokens + [EOT]``, truncated (EOT kept) and zero-padded to L."""
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        if length > self.context_length:
            raise ValueError(f"context_length {length} > model context {self.context_length}")
        return self.tokenizer(list(texts), context_length=length)

    def _eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        t = self._text_tower_of(self.model)
        pool = getattr(t, "text_pool_type", getattr(t, "pool_type", "argmax"))
        if pool == "last":
            return torch.full((tokens.shape[0],), tokens.shape[1] - 1, device=tokens.device)
        if pool == "eos":
            eos_id = getattr(t, "text_eos_id", getattr(t, "eos_id", None))
            hit = tokens == eos_id
            idx = hit.int().argmax(dim=-1)
            return torch.where(hit.any(-1), idx, torch.full_like(idx, tokens.shape[1] - 1))
        return tokens.argmax(dim=-1)

    def _encode_text(self, tokens, return_words):
        if not self._text_tokens_supported():
            if return_words:
                raise UserError(f"model {self.model_name!r}: word tokens are not supported")
            return self.model.encode_text(tokens), None, None
        t = self._text_tower_of(self.model)
        length = tokens.shape[1]
        cast_dtype = t.transformer.get_cast_dtype()
        x = t.token_embedding(tokens).to(cast_dtype)
        x = x + t.positional_embedding[:length].to(cast_dtype)
        attn_mask = t.attn_mask
        if attn_mask is not None:
            attn_mask = attn_mask[:length, :length]
        x = t.transformer(x, attn_mask=attn_mask)
        x = t.ln_final(x)
        eot = self._eot_index(tokens)
        proj = t.text_projection

        def project(z):
            if proj is None:
                return z
            return proj(z) if isinstance(proj, nn.Linear) else z @ proj

        sentence = project(x[torch.arange(x.shape[0], device=x.device), eot])
        if not return_words:
            return sentence, None, None
        return sentence, project(x), word_mask_from_eot(eot, length)
