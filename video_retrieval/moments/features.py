"""Per-clip CLIP features for moment retrieval, and an on-disk cache of them.

A video is cut into consecutive clips of ``clip_len`` seconds (Moment-DETR: 2 s). Clip ``i``
covers ``[i * clip_len, (i + 1) * clip_len)``; the last one is clipped to the video. Each clip is
represented by the L2-normalised CLIP image embedding of ``frames_per_clip`` frames (averaged,
then re-normalised), or, with a pooling aggregator, by that aggregator's video embedding of the
frames of the clip widened by ``context`` seconds each side (a temporal stream that sees motion,
the part SlowFast features play in Moment-DETR). ``N = ceil(duration / clip_len)`` clips, at
least 1.

Motion stream (``motion_features``, optional): per clip window (the same ``context``), the mean of
its later frames minus the mean of its earlier frames, average-pooled to a ``grid x grid`` map
per RGB channel (TSN's RGB-difference modality, reduced to a map): where colour appeared and
where it left. A CLIP-style clip encoder is blind to translation (its image embedding does not
keep where an object is); this stream keeps it, as SlowFast does beside CLIP in Moment-DETR.

Text side (``text_token_features``): CLIP text token features *after the final LayerNorm and
the text projection* (``TextFeatures.words`` of our encoder, i.e. in the joint space), SOT..EOT,
each token L2-normalised, at most ``max_q_l`` (32) tokens. Moment-DETR uses the token states
before the projection; we use the projected ones, which every encoder backend exposes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from video_retrieval.media.atomic import atomic_savez


def num_clips_for(duration: float, clip_len: float) -> int:
    return max(1, int(math.ceil(duration / clip_len - 1e-6)))


def clip_times(num_clips: int, clip_len: float, duration: float) -> np.ndarray:
    starts = np.arange(num_clips, dtype=np.float64) * clip_len
    ends = np.minimum(starts + clip_len, max(duration, clip_len * (num_clips - 1) + 1e-6))
    return np.stack([starts, ends], axis=1)


def _l2n(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)


def clip_windows(ts: np.ndarray, num_clips: int, clip_len: float, context: float = 0.0):
    """Frame indices of each clip's window ``[i clip_len - context, (i + 1) clip_len + context)``
    (timestamps ``ts`` sorted ascending). A window without a frame takes the frame nearest to the
    clip centre (short videos, off-grid timestamps)."""
    out = []
    for i in range(num_clips):
        lo, hi = i * clip_len - context, (i + 1) * clip_len + context
        a = int(np.searchsorted(ts, lo - 1e-6, side="left"))
        b = int(np.searchsorted(ts, hi - 1e-6, side="left"))
        if b > a:
            out.append(np.arange(a, b))
        else:
            out.append(np.array([int(np.argmin(np.abs(ts - (i + 0.5) * clip_len)))]))
    return out


def _subsample(idx: np.ndarray, k: int) -> np.ndarray:
    if len(idx) <= k:
        return idx
    pick = np.floor((np.arange(k) + 0.5) * len(idx) / k).astype(int)
    return idx[pick]


@torch.no_grad()
def _pool_windows(aggregator, emb: np.ndarray, windows, batch_size: int) -> np.ndarray:
    from video_retrieval.temporal.features import VideoFeatures

    max_frames = int(getattr(aggregator, "max_frames", 0) or max(len(w) for w in windows))
    windows = [_subsample(w, max_frames) for w in windows]
    t = max(len(w) for w in windows)
    e = torch.from_numpy(emb)
    param = next(aggregator.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    out = []
    for a in range(0, len(windows), batch_size):
        chunk = windows[a : a + batch_size]
        frames = torch.zeros(len(chunk), t, e.shape[1], dtype=dtype)
        mask = torch.zeros(len(chunk), t, dtype=torch.bool)
        for j, w in enumerate(chunk):
            frames[j, : len(w)] = e[torch.from_numpy(w)].to(dtype)
            mask[j, : len(w)] = True
        out.append(aggregator.embed_video(VideoFeatures(frames, mask)).float().numpy())
    return np.concatenate(out)


#: the clip windows ``configs/moments_synth_clips.yaml`` trains on: 2 s clips at 2 fps, +-1 s
CLIP_ENCODER_WINDOW = {"frames_per_clip": 4, "context": 1.0}


def check_pooling_aggregator(aggregator, source) -> None:
    """Only a query-independent aggregator can turn a clip window into one feature."""
    if aggregator.query_dependent:
        from video_retrieval.errors import UserError

        raise UserError(
            f"{source}: its aggregator {aggregator.name} is query-dependent and cannot pool "
            "clips; use a mean / seq_lstm / seq_transformer checkpoint"
        )


def load_clip_encoder(path):
    """``(encoder, pooling aggregator, clip_features kwargs)`` of a retrieval checkpoint used as
    a clip encoder (zero-shot localization over pooled clip windows)."""
    from video_retrieval.models.checkpoints import load_retrieval_model

    encoder, aggregator, _meta = load_retrieval_model(path)
    check_pooling_aggregator(aggregator, path)
    return encoder, aggregator, dict(CLIP_ENCODER_WINDOW)


def clip_features(
    encoder,
    video_path,
    clip_len: float = 2.0,
    frames_per_clip: int = 1,
    batch_size: int = 64,
    aggregator=None,
    context: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Encode a video as per-clip CLIP embeddings.

    Frames are sampled at ``frames_per_clip / clip_len`` fps. Clip ``i`` pools the frames of its
    window ``[i clip_len - context, (i + 1) clip_len + context)``: with ``aggregator=None`` their
    L2-normalised mean (``context=0``: Moment-DETR's CLIP stream), else the query-independent
    aggregator's ``embed_video`` over them (e.g. a seqTransf fine-tuned on such windows, a motion
    stream standing in for SlowFast; at most its ``max_frames``, subsampled uniformly).

    Returns ``(feats [N,D] float32 L2-normalised, clip_times [N,2] seconds, duration)``.
    """
    from video_retrieval.media.decode import load_frames

    fps = frames_per_clip / clip_len
    size = getattr(encoder, "image_size", None)
    frames = load_frames(str(video_path), fps=fps, size=size)
    duration = float(frames.duration)
    ts = np.asarray(frames.timestamps, dtype=np.float64)
    mask = np.asarray(frames.mask, dtype=bool)
    pixels = frames.pixels
    if mask.any():
        pixels, ts = pixels[mask], ts[mask]
    if duration <= 0:
        duration = float(ts.max() + clip_len) if len(ts) else clip_len
    n = num_clips_for(duration, clip_len)
    emb, _ = encoder.encode_frames(pixels, batch_size=batch_size)
    emb = emb.detach().float().cpu().numpy()
    order = np.argsort(ts, kind="stable")
    emb, ts = emb[order], ts[order]
    windows = clip_windows(ts, n, clip_len, context)
    if aggregator is None:
        emb = _l2n(emb)
        feats = np.stack([emb[w].astype(np.float64).mean(0) for w in windows])
    else:
        # the aggregator sees raw frame embeddings, as in training (it normalises itself)
        feats = _pool_windows(aggregator, emb, windows, batch_size)
    feats = _l2n(feats).astype(np.float32)
    return feats, clip_times(n, clip_len, duration), duration


def text_token_features(encoder, texts: list[str], max_q_l: int = 32) -> list[np.ndarray]:
    """Per query, L2-normalised projected token features [L_i, D] (SOT..EOT, L_i <= max_q_l)."""
    out: list[np.ndarray] = []
    with torch.no_grad():
        for i in range(0, len(texts), 256):
            chunk = texts[i : i + 256]
            tokens = encoder.tokenize(chunk)
            tf = encoder.encode_text(tokens, return_words=True)
            words = tf.words.float().cpu().numpy()
            if tf.word_mask is not None:
                wmask = tf.word_mask.cpu().numpy().astype(bool)
            else:
                wmask = (tokens != 0).cpu().numpy()
            for w, m in zip(words, wmask):
                t = w[m][:max_q_l]
                if len(t) == 0:
                    t = w[:1]
                out.append(_l2n(t).astype(np.float32))
    return out


#: frame side per motion-map cell: frames are decoded at ``(8 grid)^2`` pixels for the map
MOTION_CELL_PX = 8


def motion_features(
    video_path, num_clips: int, clip_len: float = 2.0, fps: float = 2.0, context: float = 0.0,
    grid: int = 8,
) -> np.ndarray:  # fmt: skip
    """RGB-difference motion map of each clip: ``[num_clips, grid * grid * 3]`` float32.

    Frames are sampled at ``fps`` and resized to a ``8 grid`` pixel square (aspect not kept: a
    coarse map); clip ``i``'s window is ``clip_windows(..., context)``. With ``k`` frames in the
    window and ``h = max(1, k // 2)``: ``mean(last h) - mean(first h)`` in [-1, 1] (pixels / 255),
    averaged over each ``8 x 8`` pixel cell, laid out (row, column, channel). A window of one
    frame, or a still scene, gives zeros. Not normalised: its size says how much moved."""
    from video_retrieval.media.decode import load_frames

    side = int(grid) * MOTION_CELL_PX
    frames = load_frames(str(video_path), fps=fps, size=(side, side))
    ts = np.asarray(frames.timestamps, dtype=np.float64)
    mask = np.asarray(frames.mask, dtype=bool)
    px = frames.pixels
    if mask.any():
        px, ts = px[mask], ts[mask]
    order = np.argsort(ts, kind="stable")
    px, ts = px[order].astype(np.float32) / 255.0, ts[order]
    out = np.zeros((num_clips, grid * grid * 3), dtype=np.float32)
    for i, w in enumerate(clip_windows(ts, num_clips, clip_len, context)):
        if len(w) < 2:
            continue
        h = max(1, len(w) // 2)
        d = px[w[-h:]].mean(0) - px[w[:h]].mean(0)
        cells = d.reshape(grid, MOTION_CELL_PX, grid, MOTION_CELL_PX, 3).mean((1, 3))
        out[i] = cells.reshape(-1)
    return out


class MotionCache:
    """``cache_dir/motion-<key>/<vid>.npz`` of ``motion_features`` (keyed by the clip windows,
    the sampling rate and the grid; recomputed when the video file changes)."""

    VERSION = 1

    def __init__(self, cache_dir, clip_len: float, fps: float, context: float, grid: int):
        self.clip_len, self.fps, self.context, self.grid = clip_len, fps, context, int(grid)
        raw = json.dumps(
            {"v": self.VERSION, "clip_len": clip_len, "fps": fps, "context": context, "grid": grid},
            sort_keys=True,
        )
        self.root = Path(cache_dir) / f"motion-{hashlib.sha1(raw.encode()).hexdigest()[:12]}"

    def get(self, vid: str, video_path, num_clips: int) -> np.ndarray:
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in str(vid))
        p = self.root / f"{safe}.npz"
        src = FeatureCache._source_id(video_path)
        if p.exists():
            with np.load(p) as z:
                if (src is None or str(z["source"]) == src) and len(z["motion"]) == num_clips:
                    return z["motion"]
        m = motion_features(video_path, num_clips, self.clip_len, self.fps, self.context, self.grid)
        atomic_savez(p, motion=m, source=np.array(src or ""))
        return m


FEATURE_NORMS = ("none", "center")


def normalize_clip_features(feats: np.ndarray, mode: str = "none") -> np.ndarray:
    """Optional per-video feature normalisation applied after the cache (and at prediction).

    ``"none"``: as extracted (each clip L2-normalised, the Moment-DETR input).
    ``"center"``: subtract the video's mean clip feature, then L2-normalise each clip. A randomly
    initialised encoder gives clip embeddings that differ by ~0.1% (cosine ~0.9998 between
    clips); centring keeps only what changes over time, at unit scale, so the head can see it.
    """
    if mode == "none":
        return feats
    if mode == "center":
        return _l2n(feats - feats.mean(0, keepdims=True), eps=1e-8).astype(np.float32)
    raise ValueError(f"unknown feature normalisation {mode!r}; choose one of {FEATURE_NORMS}")


def add_temporal_differences(feats: np.ndarray) -> np.ndarray:
    """``[N,D] -> [N,3D]``: each clip with its backward and forward feature differences
    ``[v_i, v_i - v_(i-1), v_(i+1) - v_i]`` (zero at the ends; the differences divided by their
    mean norm over the video).

    Moment-DETR's published inputs pair CLIP (appearance) with SlowFast (motion) features. With
    CLIP alone, an event of an object that is visible throughout ("the ball goes up") shows only
    as a change between clips; a first-order difference stream gives the head that motion signal
    directly (on the synthetic world a saliency probe goes from 0.14 to 0.48 HIT@1 with it)."""
    f = np.asarray(feats, dtype=np.float32)
    d = f[1:] - f[:-1]
    # Consecutive clips differ by a few percent of the unit clip norm; rescale the video's
    # differences to unit mean norm so that the input LayerNorm does not drown them.
    scale = float(np.linalg.norm(d, axis=1).mean()) if len(d) else 0.0
    if scale > 1e-8:
        d = d / scale
    back = np.zeros_like(f)
    back[1:] = d
    fwd = np.zeros_like(f)
    fwd[:-1] = d
    return np.concatenate([f, back, fwd], axis=1)


def aggregator_fingerprint(aggregator) -> str | None:
    """Class + sha256 of the weights of a pooling aggregator (None: frame mean)."""
    if aggregator is None:
        return None
    h = hashlib.sha256(type(aggregator).__name__.encode())
    for k, v in sorted(aggregator.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return f"{type(aggregator).__name__}|sha256:{h.hexdigest()[:16]}"


def cache_key(
    encoder, clip_len: float, frames_per_clip: int, aggregator=None, context: float = 0.0
) -> str:
    fp = encoder.fingerprint() if hasattr(encoder, "fingerprint") else repr(encoder)
    key = {"fp": fp, "clip_len": clip_len, "fpc": frames_per_clip}
    if aggregator is not None or context:
        # frame-mean caches without context keep their old key (still valid)
        key.update(agg=aggregator_fingerprint(aggregator), context=float(context), pool=2)
    raw = json.dumps(key, sort_keys=True)
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


class FeatureCache:
    """``cache_dir/<key>/<vid>.npz`` with ``feats``, ``clip_times``, ``duration``; the key hashes
    the encoder fingerprint and the clip settings, so a different model never reads stale rows."""

    def __init__(
        self,
        cache_dir,
        encoder,
        clip_len: float = 2.0,
        frames_per_clip: int = 1,
        aggregator=None,
        context: float = 0.0,
    ):
        self.encoder = encoder
        self.clip_len = clip_len
        self.frames_per_clip = frames_per_clip
        self.aggregator = aggregator
        self.context = context
        key = cache_key(encoder, clip_len, frames_per_clip, aggregator, context)
        self.root = Path(cache_dir) / key

    def path(self, vid: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in str(vid))
        return self.root / f"{safe}.npz"

    @staticmethod
    def _source_id(video_path) -> str | None:
        """Size and mtime of the video file (None when it is not there): a cached row of another
        file under the same id (another generated world, a replaced video) is recomputed."""
        try:
            st = os.stat(video_path)
        except OSError:
            return None
        return f"{st.st_size}|{st.st_mtime_ns}"

    def get(self, vid: str, video_path) -> tuple[np.ndarray, np.ndarray, float]:
        p = self.path(vid)
        src = self._source_id(video_path)
        if p.exists():
            with np.load(p) as z:
                cached_src = str(z["source"]) if "source" in z.files else None
                if src is None or cached_src == src:
                    return z["feats"], z["clip_times"], float(z["duration"])
        feats, times, duration = clip_features(
            self.encoder,
            video_path,
            self.clip_len,
            self.frames_per_clip,
            aggregator=self.aggregator,
            context=self.context,
        )
        extra = {"source": np.array(src)} if src is not None else {}
        atomic_savez(p, feats=feats, clip_times=times, duration=np.float64(duration), **extra)
        return feats, times, duration

    def get_text(self, name: str, texts: list[str], max_q_l: int = 32) -> list[np.ndarray]:
        """Token features of ``texts``, cached as one npz named ``text_<name>_<hash>.npz``."""
        h = hashlib.sha1(json.dumps([texts, max_q_l]).encode()).hexdigest()[:12]
        p = self.root / f"text_{name}_{h}.npz"
        if p.exists():
            with np.load(p) as z:
                return [z[f"t{i}"] for i in range(len(texts))]
        feats = text_token_features(self.encoder, texts, max_q_l)
        atomic_savez(p, **{f"t{i}": f for i, f in enumerate(feats)})
        return feats
