"""Frozen-feature cache: encode a dataset once with a frozen CLIP, train aggregators from disk.

A cache directory holds memory-mapped fp16 ``.npy`` arrays plus ``manifest.json``::

    video_frames.npy      fp16  [N_video, T, D]     frame CLS embeddings (joint space, not normalised)
    video_mask.npy        bool  [N_video, T]        False for padding and for failed videos
    video_timestamps.npy  fp32  [N_video, T]        presentation time (s) of each stored frame
    video_duration.npy    fp32  [N_video]           duration (s) of the whole video (NaN if failed)
    video_failed.npy      bool  [N_video]           True where decoding failed (see manifest failures)
    video_patches.npy     fp16  [N_video, T, P|K, D]  projected patch tokens (``patches`` all/topk)
    video_patch_index.npy int16 [N_video, T, K]     patch index (0..P-1) of each kept token (topk)
    text_sentence.npy     fp16  [N_text, D]         sentence (EOT) embeddings
    text_words.npy        fp16  [N_text, L, D]      projected word tokens (when words are stored)
    text_word_mask.npy    bool  [N_text, L]         True for real tokens (SOT..EOT)
    text_to_video.npy     int64 [N_text]            index of each caption's video

``patches="topk"`` keeps, per frame, the K patch tokens with the highest cosine similarity to that
frame's CLS embedding (a cheap, frozen criterion), in ascending patch order, with their indices.
UCoFiA's *learned* patch selector (PredictorLG + perturbed top-k, refs §2.2) then only chooses
among these K candidates instead of all P patches; use ``patches="all"`` for the exact method.

Building is resumable: all arrays are preallocated as memmaps, each finished chunk is flushed and
appended to ``journal.jsonl`` (fsync'd), so a rerun after a crash or ``kill -9`` skips the finished
chunks and produces the same arrays as an uninterrupted run. The manifest is written
temp-then-rename. A video that fails to decode never aborts the build: it is recorded in the
manifest's ``failures`` (index, id, path, reason), its mask is all False and ``video_failed`` True.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from video_retrieval.errors import UserError

FORMAT_NAME = "vr-feature-cache"


FORMAT_VERSION = 1


MANIFEST = "manifest.json"


JOURNAL = "journal.jsonl"


LOCK = ".lock"


PATCH_MODES = ("none", "all", "topk")


TOPK_CRITERION = "cosine_to_frame_cls"


#: Every array file the builder may create (removed by ``overwrite``).
ARRAY_FILES = (
    "video_frames",
    "video_mask",
    "video_timestamps",
    "video_duration",
    "video_failed",
    "video_patches",
    "video_patch_index",
    "text_sentence",
    "text_words",
    "text_word_mask",
    "text_to_video",
)


@dataclass
class CacheSettings:
    """How frames are sampled and which features are stored.

    ``num_frames=T``: T frames at the midpoints of T equal segments (``load_frames`` contract).
    ``fps=F``: one frame each 1/F s, then uniformly subsampled to at most ``max_frames`` (CLIP4Clip's
    1 fps + uniform slicing); shorter videos are padded and masked. ``decode_size`` resizes while
    decoding (short side); None decodes at full size so features equal ``encode_frames`` on the
    decoded frames. ``frame_size=S`` reproduces the training DataModule's frames exactly
    (``RetrievalDataModule(frame_size=S)``: decode at short side S, centre square crop with
    ``retrieval_data.center_crop_square``); ``symmetric_window`` samples between the first and the
    last frame centres like ``RetrievalDataModule(symmetric_window=True)`` (time-reversal exact).
    """

    num_frames: int | None = 12
    fps: float | None = None
    max_frames: int = 12
    decode_size: int | None = None
    patches: str = "none"
    patch_topk: int = 16
    max_words: int = 32
    words: bool = True
    frame_size: int | None = None
    symmetric_window: bool = False

    def __post_init__(self):
        if self.fps is not None:
            if not self.fps > 0:
                raise UserError(f"--fps must be positive, got {self.fps}")
            self.num_frames = None
        elif self.num_frames is None or int(self.num_frames) < 1:
            raise UserError(f"--num-frames must be >= 1, got {self.num_frames}")
        if int(self.max_frames) < 1:
            raise UserError(f"--max-frames must be >= 1, got {self.max_frames}")
        if self.patches not in PATCH_MODES:
            raise UserError(
                f"--patches must be one of {', '.join(PATCH_MODES)}, got {self.patches!r}"
            )
        if self.patches == "topk" and int(self.patch_topk) < 1:
            raise UserError(f"--patch-topk must be >= 1, got {self.patch_topk}")
        if self.frame_size is not None and int(self.frame_size) < 1:
            raise UserError(f"--frame-size must be >= 1, got {self.frame_size}")
        if int(self.max_words) < 2:
            raise UserError(f"--max-words must be >= 2 (SOT and EOT), got {self.max_words}")

    @property
    def frames_per_video(self) -> int:
        return int(self.num_frames) if self.fps is None else int(self.max_frames)


@dataclass
class VideoItem:
    id: str
    path: str
    split: str | None = None
    start: float | None = None  # seconds; None = whole video (DiDeMo-style windows otherwise)
    end: float | None = None


@dataclass
class CaptionItem:
    text: str
    video_index: int
    split: str | None = None


@dataclass
class BuildReport:
    out_dir: str
    num_videos: int
    num_texts: int
    failures: list = field(default_factory=list)
    video_chunks_done: int = 0  # chunks encoded by *this* call (0 when everything was cached)
    text_chunks_done: int = 0
    resumed: bool = False
    up_to_date: bool = False
    seconds: float = 0.0


def encoder_fingerprint(encoder) -> str:
    fp = encoder.fingerprint() if callable(getattr(encoder, "fingerprint", None)) else None
    if not fp:
        raise UserError(
            "the encoder has no fingerprint(); cannot build a cache that checks its model"
        )
    return str(fp)


def jsonable(obj):
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return json.loads(json.dumps(obj, default=str))
