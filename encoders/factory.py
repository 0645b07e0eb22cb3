"""Building encoders: ``create_encoder`` (open_clip names and pretrained tags, local weights files,
Hugging Face CLIP folders, files written by ``save_encoder``), and saving / loading an encoder.

Offline, a pretrained tag that needs a download fails at once with one line saying how to pass
a local file (the Hugging Face hub is set offline when its host does not resolve) instead of
retrying for minutes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import open_clip
import torch
from video_retrieval.encoders.clip_encoder import (
    DEFAULT_MODEL,
    ENCODER_FILE_FORMAT,
    ClipEncoder,
    OpenClipEncoder,
)
from video_retrieval.encoders.precision import resolve_autocast_dtype
from video_retrieval.encoders.registry import (
    check_model_name,
    check_pretrained_tag,
    looks_like_path,
    register_model_configs,
    tag_uses_quick_gelu,
)
from video_retrieval.encoders.weights_io import (
    download_error,
    hub_offline_if_unreachable,
    load_state_into,
)

from video_retrieval.errors import UserError

#: what a ``save_encoder`` spec may say (``create_encoder``'s architecture arguments)
SPEC_KEYS = ("model", "backend", "seed", "quick_gelu", "hf_config", "precision", "device")


def read_encoder_file_spec(path: Path) -> dict | None:
    """The architecture stored by ``save_encoder`` in a safetensors file (``SPEC_KEYS``), or None
    for any other file. A spec that is not a JSON object, names keys ``create_encoder`` does not
    take, or lacks its model is a one-line ``UserError``; where the weights came from is dropped
    (the file itself holds them, and a spec naming a file would send the loader in circles)."""
    path = Path(path)
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
    try:
        spec = json.loads(meta.get("spec") or "")
    except json.JSONDecodeError:
        raise UserError(f"{path}: its encoder spec (safetensors metadata) is not JSON") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
        raise UserError(f"{path}: its encoder spec names no model")
    spec = {k: v for k, v in spec.items() if k not in ("weights", "checkpoint", "pretrained")}
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise UserError(
            f"{path}: its encoder spec has keys this version does not know ({', '.join(unknown)})"
        )
    return spec


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

    file_spec = read_encoder_file_spec(ckpt_path) if ckpt_path is not None else None
    if file_spec is not None:
        if model is not None and model != file_spec["model"]:
            raise UserError(
                f"{ckpt_path} holds weights of model {file_spec['model']!r}, not {model!r}"
            )
        kwargs = dict(file_spec)
        kwargs.update(precision=precision, device=device, weights=None)  # the file holds them
        enc = create_encoder(**kwargs)
        from safetensors.torch import load_file

        load_state_into(enc.model, load_file(str(ckpt_path)), ckpt_path)
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
            with hub_offline_if_unreachable():
                clip = _build_open_clip(name, seed, quick_gelu, pretrained=pretrained)
        except Exception as e:
            raise download_error(name, pretrained, e) from e
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
