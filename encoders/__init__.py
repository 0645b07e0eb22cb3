"""Frame and text encoders (open_clip default, Hugging Face CLIP alternative) and preprocessing.

>>> from video_retrieval.encoders import create_encoder
>>> enc = create_encoder("vr-tiny")                   # random init (seeded), 64-px ViT
>>> cls, patches = enc.encode_frames(frames_uint8, return_patches=True)
>>> text = enc.encode_text(enc.tokenize(["a red circle moves left"]), return_words=True)

Layer: beside ``temporal``, ``metrics`` and ``datasets``; may import ``temporal.features`` (the
feature containers), ``media`` and the bottom (``errors``, ``atomic``). The names below are
imported on first use, so that importing one light submodule does not load torch and open_clip.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ClipEncoder": "video_retrieval.encoders.clip_encoder",
    "OpenClipEncoder": "video_retrieval.encoders.clip_encoder",
    "create_encoder": "video_retrieval.encoders.factory",
    "load_encoder": "video_retrieval.encoders.factory",
    "save_encoder": "video_retrieval.encoders.factory",
    "CLIP_MEAN": "video_retrieval.encoders.preprocess",
    "CLIP_STD": "video_retrieval.encoders.preprocess",
    "clip_preprocess": "video_retrieval.encoders.preprocess",
    "list_models": "video_retrieval.encoders.registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'video_retrieval.encoders' has no attribute {name!r}")
