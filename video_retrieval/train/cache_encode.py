"""One chunk of a cache build: decode a video to exactly ``num_frames`` frames (padded and masked
when shorter), probe the encoder's dimensions, and encode the valid frames (and patch tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from video_retrieval.errors import UserError
from video_retrieval.train.cache_settings import (
    CacheSettings,
    VideoItem,
)


@dataclass
class DecodedVideo:
    pixels: np.ndarray | None  # uint8 [T,H,W,3] (only valid frames are encoded)
    timestamps: np.ndarray  # [T]
    mask: np.ndarray  # bool [T]
    duration: float
    reason: str | None = None  # set when decoding failed


def fit_length(pixels, timestamps, mask, t: int):
    """Uniformly subsample valid frames to at most ``t``, then pad (repeat last, mask False)."""
    pixels = np.asarray(pixels)
    timestamps = np.asarray(timestamps, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    valid = np.flatnonzero(mask)
    if len(valid) > t:
        keep = valid[np.linspace(0, len(valid) - 1, t).round().astype(np.int64)]
        return pixels[keep], timestamps[keep], np.ones(t, dtype=bool)
    if len(mask) > t:  # more padding than room: drop padding from the end
        pixels, timestamps, mask = pixels[:t], timestamps[:t], mask[:t]
    n = len(mask)
    if n < t:
        if n == 0:
            return None, np.zeros(t), np.zeros(t, dtype=bool)
        pad = t - n
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)])
        timestamps = np.concatenate([timestamps, np.repeat(timestamps[-1:], pad)])
        mask = np.concatenate([mask, np.zeros(pad, dtype=bool)])
    return pixels, timestamps, mask


def probe_dims(encoder, settings: CacheSettings, need_text: bool) -> tuple[int, int, int]:
    """(D, P, L) from one tiny forward pass: embed width, patch tokens per frame, word length."""
    d = int(encoder.embed_dim)
    p = 0
    if settings.patches != "none":
        s = int(getattr(encoder, "image_size", 64))
        _, patches = encoder.encode_frames(np.zeros((1, s, s, 3), np.uint8), return_patches=True)
        if patches is None:
            raise UserError("this encoder returns no patch tokens; use --patches none")
        p = int(patches.shape[1])
    length = 0
    if need_text and settings.words:
        tokens = encoder.tokenize(["a"], context_length=settings.max_words)
        with torch.no_grad():
            tf = encoder.encode_text(tokens, return_words=True)
        if tf.words is None:
            raise UserError("this encoder returns no word tokens; build without words")
        length = min(int(tf.words.shape[1]), int(settings.max_words))
    return d, p, length


def decode_one(load_frames, item: VideoItem, settings: CacheSettings) -> DecodedVideo:
    t = settings.frames_per_video
    try:
        start, end = item.start, item.end
        if settings.symmetric_window and start is None and end is None:
            from video_retrieval.media.decode import probe_video

            info = probe_video(item.path)
            half = 0.5 / info.fps if info.fps > 0 else 0.0
            if info.duration > 2 * half:
                start, end = half, info.duration - half
        size = settings.frame_size if settings.frame_size is not None else settings.decode_size
        window = {"start": start, "end": end, "size": size}
        if settings.fps is None:
            fr = load_frames(item.path, num_frames=t, **window)
        else:
            fr = load_frames(item.path, fps=settings.fps, **window)
        pixels = fr.pixels
        if settings.frame_size is not None:
            from video_retrieval.train.retrieval_datasets import center_crop_square

            pixels = center_crop_square(np.asarray(pixels), int(settings.frame_size))
        pixels, ts, mask = fit_length(pixels, fr.timestamps, fr.mask, t)
        if pixels is None or not mask.any():
            raise ValueError("no decodable frames")
        return DecodedVideo(pixels, ts, mask, float(fr.duration))
    except Exception as exc:  # one bad video never aborts the build
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        return DecodedVideo(
            None, np.zeros(t), np.zeros(t, dtype=bool), float("nan"), reason=str(reason)
        )


def encode_valid_frames(encoder, decoded: list[DecodedVideo], batch_size: int, want_patches: bool):
    """Encode the valid frames of every decoded video. Frames of the same size are batched
    together (``encode_frames`` takes one uint8 array). Returns per-video (cls [n,D], patches)."""
    out: list = [None] * len(decoded)
    groups: dict[tuple, list[int]] = {}
    for i, dec in enumerate(decoded):
        if dec.reason is None:
            groups.setdefault(tuple(dec.pixels.shape[1:]), []).append(i)
    for members in groups.values():
        pix = [decoded[i].pixels[decoded[i].mask] for i in members]
        counts = [len(p) for p in pix]
        cls, patches = encoder.encode_frames(
            np.concatenate(pix), batch_size=batch_size, return_patches=want_patches
        )
        cls = cls.detach().float().cpu()
        patches = None if patches is None else patches.detach().float().cpu()
        offset = 0
        for i, n in zip(members, counts):
            out[i] = (
                cls[offset : offset + n],
                None if patches is None else patches[offset : offset + n],
            )
            offset += n
    return out
