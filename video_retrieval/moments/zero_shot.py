"""Training-free moment localisation from per-clip query similarities.

Recipe (after the CLIP zero-shot baseline of the Moment-DETR paper and TFVTG's proposal scoring):

1. ``clip_scores[i]`` = cosine(query sentence embedding, clip embedding i).
2. Gaussian smoothing over clips (sigma 1 clip), then z-scoring within the video.
3. Candidates: maximal runs of clips above several thresholds (watershed-like grouping,
   "grown from peaks") plus sliding windows of several lengths.
4. Contrast = mean(z inside) - mean(z outside) (the outside of a whole-video window counts as
   0); the window's score is ``sigmoid(contrast)`` in (0, 1): 0.5 for a window no different from
   the rest of the video, about 0.88 for one two standard deviations above it (a monotone map:
   the ranking, hence every metric, is the contrast's).
5. Greedy temporal NMS (IoU 0.5); rows (start, end, score) in seconds, sorted by score.
"""

from __future__ import annotations

import numpy as np

from video_retrieval.temporal.moment_matcher import temporal_nms


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0 or len(x) < 2:
        return x.copy()
    r = max(1, int(round(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(x, r, mode="edge")
    return np.convolve(padded, k, mode="valid")


def zero_shot_query(encoder, clip_feats, duration: float, query: str, clip_len: float, top: int,
                    nms_iou: float = 0.5):  # fmt: skip
    """``(windows [K,3], per-clip similarities [N])`` of one query over one video's clip
    features, the sentence embedded by ``encoder`` (the same CLIP that made the features)."""
    import torch

    with torch.no_grad():
        text = encoder.encode_text(encoder.tokenize([query])).sentence[0].float().cpu().numpy()
    sims = clip_similarities(clip_feats, text)
    return zero_shot_windows(sims, clip_len, duration, top=top, nms_iou=nms_iou), sims


def clip_similarities(clip_feats, text_feat) -> np.ndarray:
    """Cosine similarity of each clip embedding [N,D] with one sentence embedding [D]."""
    v = np.asarray(clip_feats, dtype=np.float64)
    t = np.asarray(text_feat, dtype=np.float64).reshape(-1)
    v = v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-8)
    t = t / (np.linalg.norm(t) + 1e-8)
    return v @ t


def _candidates(z: np.ndarray) -> set[tuple[int, int]]:
    """Half-open clip ranges [a, b)."""
    n = len(z)
    cands: set[tuple[int, int]] = {(0, n)}
    # threshold runs at several levels
    for q in np.linspace(0.5, 0.95, 10):
        gamma = np.quantile(z, q)
        above = z >= gamma
        i = 0
        while i < n:
            if above[i]:
                j = i
                while j < n and above[j]:
                    j += 1
                cands.add((i, j))
                i = j
            else:
                i += 1
    # sliding windows of several lengths
    lengths = sorted({max(1, int(round(n * f))) for f in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)})
    lengths += [length for length in (1, 2, 3, 4, 6, 8) if length < n]
    for length in sorted(set(lengths)):
        stride = max(1, length // 4)
        for a in range(0, n - length + 1, stride):
            cands.add((a, a + length))
    return cands


def zero_shot_windows(
    clip_scores,
    clip_len: float,
    duration: float,
    top: int = 10,
    sigma: float = 1.0,
    nms_iou: float = 0.5,
) -> np.ndarray:
    """Rank candidate windows of one video from per-clip query scores.

    Returns ``[K,3]`` float64 rows (start_s, end_s, score), sorted by descending score, K <= top.
    """
    s = np.asarray(clip_scores, dtype=np.float64).reshape(-1)
    n = len(s)
    if n == 0:
        return np.zeros((0, 3))
    duration = float(duration) if duration and duration > 0 else n * clip_len
    sm = _smooth(s, sigma)
    std = sm.std()
    if not np.isfinite(std) or std < 1e-8:
        return np.array([[0.0, duration, 0.5]])  # nothing stands out: sigmoid(0)
    z = (sm - sm.mean()) / std
    csum = np.concatenate([[0.0], np.cumsum(z)])
    total = csum[-1]
    rows = []
    for a, b in _candidates(z):
        inside = (csum[b] - csum[a]) / (b - a)
        n_out = n - (b - a)
        outside = (total - (csum[b] - csum[a])) / n_out if n_out > 0 else 0.0
        start = a * clip_len
        end = min(b * clip_len, duration)
        if end <= start:
            continue
        rows.append((start, end, 1.0 / (1.0 + np.exp(-(inside - outside)))))
    out = temporal_nms(np.array(rows), nms_iou, max_keep=top)
    return out
