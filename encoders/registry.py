"""Model-name registry: our small open_clip JSON configs plus open_clip's own model list.

``vr-tiny`` (64-px ViT, narrow text tower) and ``vr-micro`` (32-px, one layer per tower) live in
``encoders/model_configs/*.json`` and are registered with ``open_clip.add_model_config`` the first
time open_clip is asked for something here (``open_clip_module``): importing this module stays
cheap (no torch), so that the CLI can check names before loading a model.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from video_retrieval.errors import UserError

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
OUR_MODELS = tuple(sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json")))
_EXAMPLE_MODELS = ("vr-tiny", "vr-micro", "ViT-B-32", "ViT-B-16", "ViT-L-14")

_registered = False


def open_clip_module():
    """``open_clip``, imported on first use, with ``vr-tiny``/``vr-micro`` registered."""
    global _registered
    import open_clip

    if not _registered:
        missing = [m for m in OUR_MODELS if m not in open_clip.list_models()]
        if missing:
            open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True
    return open_clip


def register_model_configs() -> None:
    """Make ``vr-tiny``/``vr-micro`` known to open_clip (idempotent)."""
    open_clip_module()


def list_models() -> list[str]:
    """All open_clip model names, ours included."""
    return list(open_clip_module().list_models())


def check_model_name(name: str) -> str:
    """Return the open_clip model name or raise a ``UserError`` listing a few known ones."""
    if not isinstance(name, str) or not name:
        raise UserError(f"model name must be a non-empty string, got {name!r}")
    known = open_clip_module().list_models()
    if name in known:
        return name
    lowered = {m.lower(): m for m in known}
    close = [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=4)]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UserError(
        f"unknown model {name!r}.{hint} Known models include {', '.join(_EXAMPLE_MODELS)} "
        f"(all: open_clip.list_models(); Hugging Face CLIP: backend='hf')."
    )


def pretrained_tags(name: str) -> list[str]:
    """open_clip pretrained tags for a model name (empty for our own configs)."""
    return list(open_clip_module().list_pretrained_tags_by_model(name))


def check_pretrained_tag(name: str, tag: str) -> None:
    tags = pretrained_tags(name)
    if tag not in tags:
        known = ", ".join(tags[:8]) if tags else "none (local weights or random init only)"
        raise UserError(
            f"unknown pretrained tag {tag!r} for model {name!r}; known tags: {known}. "
            "To load local weights pass the file: --pretrained PATH (Python: pretrained=PATH)."
        )


def tag_uses_quick_gelu(name: str, tag: str) -> bool:
    """OpenAI-trained weights need QuickGELU; open_clip records this in the tag config."""
    cfg = open_clip_module().get_pretrained_cfg(name, tag) or {}
    return bool(cfg.get("quick_gelu", False))


WEIGHT_FILE_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")


def looks_like_path(value: str) -> bool:
    """A ``--pretrained`` value that names a file rather than an open_clip tag."""
    s = str(value)
    return "/" in s or s.startswith("~") or s.lower().endswith(WEIGHT_FILE_SUFFIXES)
