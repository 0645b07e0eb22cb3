"""Frame and text encoders (open_clip default, Hugging Face CLIP alternative) and preprocessing.

>>> from video_retrieval.encoders import create_encoder
>>> enc = create_encoder("vr-tiny")                   # random init (seeded), 64-px ViT
>>> cls, patches = enc.encode_frames(frames_uint8, return_patches=True)
>>> text = enc.encode_text(enc.tokenize(["a red circle moves left"]), return_words=True)
"""

from video_retrieval.encoders.clip_encoder import (
    ClipEncoder,
    OpenClipEncoder,
    create_encoder,
    load_encoder,
    save_encoder,
)
from video_retrieval.encoders.preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess
from video_retrieval.encoders.registry import list_models

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ClipEncoder",
    "OpenClipEncoder",
    "clip_preprocess",
    "create_encoder",
    "list_models",
    "load_encoder",
    "save_encoder",
]
