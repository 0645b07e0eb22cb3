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

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
import open_clip
import torch
from torch import nn
from video_retrieval.encoders.precision import autocast_context, resolve_autocast_dtype
from video_retrieval.encoders.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess
from video_retrieval.encoders.registry import (
    check_model_name,
    check_pretrained_tag,
    register_model_configs,
    tag_uses_quick_gelu,
)
from video_retrieval.temporal.features import TextFeatures

from video_retrieval.atomic import atomic_path
from video_retrieval.errors import UserError
from video_retrieval.models.weights import looks_like_path

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


# ====================================================================== factory


@lru_cache(maxsize=8)
def _host_resolves(host: str, timeout: float = 3.0) -> bool:
    """Cheap network probe (DNS lookup in a thread with a timeout)."""
    result = []

    def probe():
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    th.join(timeout)
    return bool(result and result[0])


@contextlib.contextmanager
def _hub_offline_if_unreachable():
    """Put huggingface_hub in offline mode (cache only) when the Hub cannot be reached, so a
    missing download fails at once instead of after a minute of retries."""
    try:
        from huggingface_hub import constants as hf_constants
    except Exception:  # pragma: no cover
        yield
        return
    old = hf_constants.HF_HUB_OFFLINE
    if not old and not _host_resolves("huggingface.co"):
        hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old


def _download_error(model: str, tag: str, cause: Exception) -> UserError:
    cfg = open_clip.get_pretrained_cfg(model, tag) or {}
    source = cfg.get("hf_hub") or cfg.get("url") or "the open_clip weights host"
    offline = not _host_resolves("huggingface.co")
    why = "no network and not in the local cache" if offline else f"{type(cause).__name__}"
    return UserError(
        f"could not download the pretrained weights {model!r}/{tag!r} from {source.rstrip('/')} "
        f"({why}). Download open_clip_pytorch_model.bin once on a connected machine and pass it: "
        f"--model {model} --pretrained /path/to/open_clip_pytorch_model.bin "
        f"(Python: create_encoder({model!r}, pretrained=PATH))"
    )


def _read_encoder_file_spec(path: Path) -> dict | None:
    """The spec stored by ``save_encoder`` in a safetensors file, or None for other files."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise UserError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != ENCODER_FILE_FORMAT:
        return None
    return json.loads(meta["spec"])


def _build_open_clip(name: str, seed: int, quick_gelu: bool, pretrained: str | None = None):
    register_model_configs()
    previous = logging.root.manager.disable
    # silence open_clip's "initialized randomly" warning (intended here) and its download error
    # log (create_encoder raises one UserError with the cause and the remedy instead)
    logging.disable(logging.WARNING if pretrained is None else logging.ERROR)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return open_clip.create_model(
                name,
                pretrained=pretrained,
                force_quick_gelu=quick_gelu,
                precision="fp32",
                device="cpu",
            )
    finally:
        logging.disable(previous)


def _load_state_into(module: nn.Module, state: dict, path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = str(e).splitlines()
        raise UserError(
            f"{path}: weights do not fit the model architecture ({' '.join(msg[:3])[:300]})"
        ) from e


def create_encoder(
    model: str | None = None,
    pretrained: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    backend: str = "open_clip",
    precision: str = "auto",
    device: str | torch.device = "cpu",
    seed: int = 0,
    quick_gelu: bool = False,
    hf_config: dict | None = None,
    weights: dict | None = None,
) -> ClipEncoder:
    """Build a ``ClipEncoder``.

    - ``model``: open_clip model name (default ``"vr-tiny"``); for ``backend="hf"`` a local
      ``CLIPModel`` directory or a hub id.
    - ``pretrained``: open_clip pretrained tag (downloads; offline -> ``UserError``) or a file.
    - ``checkpoint``: local weights: a file written by ``save_encoder`` (architecture taken from
      its spec), or an open_clip state dict (``.bin``/``.pt``/``.safetensors``) for ``model``.
    - ``precision``: ``"auto"`` (bf16 autocast where the CPU/GPU has fast bf16), ``"fp32"``, ``"bf16"``.
    - ``seed``: seed of the random init used when no weights are given.
    - ``quick_gelu``: QuickGELU activation (OpenAI weights; set automatically for such tags).
    - ``hf_config``: HF backend only, a ``CLIPConfig`` dict to build the architecture without
      reading ``model`` (used by ``spec`` round trips).
    - ``weights``: where the weights came from, as recorded in ``spec["weights"]``
      (``{"pretrained": tag}``, ``{"checkpoint": path}``, ``{"from_pretrained": dir or hub id}``);
      used when neither ``pretrained`` nor ``checkpoint`` is given, so ``create_encoder(**spec)``
      rebuilds the same weights. Pass ``weights=None`` for the architecture alone.
    Weights load with ``torch.load(weights_only=True)`` or safetensors only.
    """
    if backend not in ("open_clip", "hf"):
        raise UserError(f"unknown encoder backend {backend!r}; choose 'open_clip' or 'hf'")
    resolve_autocast_dtype(precision, device)  # validate early
    if weights and pretrained is None and checkpoint is None:
        pretrained = weights.get("pretrained")
        checkpoint = weights.get("checkpoint")
        if weights.get("from_pretrained"):
            model, hf_config = weights["from_pretrained"], None

    ckpt_path = Path(checkpoint).expanduser() if checkpoint is not None else None
    if pretrained is not None and ckpt_path is None:
        as_path = Path(str(pretrained)).expanduser()
        if as_path.is_file():
            ckpt_path, pretrained = as_path, None
        elif looks_like_path(pretrained):
            raise UserError(f"no such file: {pretrained} (pretrained weights file)")
    if ckpt_path is not None and not ckpt_path.is_file():
        raise UserError(f"no such file: {ckpt_path} (checkpoint)")

    file_spec = _read_encoder_file_spec(ckpt_path) if ckpt_path is not None else None
    if file_spec is not None:
        if model is not None and model != file_spec["model"]:
            raise UserError(
                f"{ckpt_path} holds weights of model {file_spec['model']!r}, not {model!r}"
            )
        kwargs = dict(file_spec)
        kwargs.update(precision=precision, device=device, weights=None)  # the file holds them
        enc = create_encoder(**kwargs)
        from safetensors.torch import load_file

        _load_state_into(enc.model, load_file(str(ckpt_path)), ckpt_path)
        enc.spec["weights"] = {"checkpoint": str(ckpt_path.resolve())}
        return enc

    if backend == "hf":
        from video_retrieval.encoders.hf_backend import create_hf_encoder

        return create_hf_encoder(
            model,
            checkpoint=ckpt_path,
            precision=precision,
            device=device,
            seed=seed,
            hf_config=hf_config,
        )

    name = check_model_name(model or DEFAULT_MODEL)
    if pretrained is not None and ckpt_path is not None:
        raise UserError("give either pretrained=TAG or checkpoint=PATH, not both")
    if pretrained is not None:
        check_pretrained_tag(name, pretrained)
        quick_gelu = quick_gelu or tag_uses_quick_gelu(name, pretrained)
        try:
            with _hub_offline_if_unreachable():
                clip = _build_open_clip(name, seed, quick_gelu, pretrained=pretrained)
        except Exception as e:
            raise _download_error(name, pretrained, e) from e
    else:
        clip = _build_open_clip(name, seed, quick_gelu)
        if ckpt_path is not None:
            try:
                open_clip.load_checkpoint(clip, str(ckpt_path), weights_only=True)
            except Exception as e:
                reason = " ".join(str(e).splitlines()[:3])[:300]
                raise UserError(
                    f"{ckpt_path}: could not load as weights of {name!r} ({type(e).__name__}: "
                    f"{reason}). Expected an open_clip state dict (.pt/.bin, loaded with "
                    "weights_only=True) or .safetensors."
                ) from e
    spec = {
        "model": name,
        "backend": "open_clip",
        "precision": precision,
        "seed": int(seed),
        "quick_gelu": bool(quick_gelu),
    }
    if pretrained is not None:
        spec["weights"] = {"pretrained": pretrained}
    elif ckpt_path is not None:
        spec["weights"] = {"checkpoint": str(ckpt_path.resolve())}
    return OpenClipEncoder(clip, name, spec, precision=precision, device=device)


def save_encoder(encoder: ClipEncoder, path, dtype=None) -> Path:
    """Function form of ``ClipEncoder.save_encoder``."""
    return encoder.save_encoder(path, dtype=dtype)


def load_encoder(path, precision: str = "auto", device="cpu") -> ClipEncoder:
    """Load a file written by ``save_encoder``."""
    return create_encoder(checkpoint=path, precision=precision, device=device)
