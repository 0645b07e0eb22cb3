"""Video-text retrieval and moment localization.

Public API (imported lazily so light commands stay fast)::

    from video_retrieval import load_frames, Index, localize
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_frames": "video_retrieval.media.decode",
    "probe_video": "video_retrieval.media.decode",
    "Frames": "video_retrieval.media.decode",
    "VideoDecodeError": "video_retrieval.errors",
    "UserError": "video_retrieval.errors",
    "write_video": "video_retrieval.media.write",
    "Index": "video_retrieval.index.api",
    "localize": "video_retrieval.moments.localize",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'video_retrieval' has no attribute {name!r}")
