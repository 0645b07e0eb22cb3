"""Second-stage rerankers over stored frame features, and the best moment of a hit.

Search is two-stage: an ANN over pooled vectors proposes candidates with a *base* score (the
cosine between the query and the pooled video vector, in [-1, 1]); a reranker rescores them from
the candidates' stored frame embeddings.

* ``CLIPRerank`` (Chen et al., ICASSP 2024): ``final = alpha * base + (1 - alpha) * max_i cos(q, f_i)``
  with ``alpha = 0.4`` by default (alpha weights the base model M, the CLIP max-over-frames term
  gets 1 - alpha). Both terms are cosines, so they are on the same [-1, 1] scale.
* ``AggregatorRerank``: any aggregator's ``similarity(text, video)`` (query-scored, UCoFiA,
  tightTransf, or a trained checkpoint's); the score is the logit divided by the aggregator's
  ``exp(logit_scale)``, i.e. a cosine-like value.

Example (hand-made numbers)::

    >>> import numpy as np
    >>> from video_retrieval.rerank import CLIPRerank
    >>> q = np.array([1.0, 0.0])
    >>> frames = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.6, 0.8]])]
    >>> CLIPRerank(alpha=0.4).score(q, np.array([0.5, 0.9]), frames).round(3).tolist()
    [0.8, 0.72]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from video_retrieval.errors import UserError

DEFAULT_ALPHA = 0.4


def l2n(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)


def frame_similarities(query: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Cosine of the query [D] with every frame [T,D] -> [T] float32."""
    return l2n(frames) @ l2n(np.asarray(query).reshape(-1))


def uniform_indices(t: int, k: int) -> np.ndarray:
    """``min(t, k)`` indices spread uniformly over ``range(t)`` (segment midpoints)."""
    if t <= k:
        return np.arange(t)
    return np.floor((np.arange(k) + 0.5) * t / k).astype(int)


@dataclass
class QueryFeatures:
    """One encoded query: the sentence embedding (L2-normalised numpy) and the raw TextFeatures."""

    text: str
    embedding: np.ndarray  # [D] float32, L2-normalised
    features: object  # TextFeatures with batch 1


class CLIPRerank:
    """``alpha * base + (1 - alpha) * max over frames of cos(query, frame)``."""

    name = "cliprerank"
    needs_words = False
    needs_patches = False

    def __init__(self, alpha: float = DEFAULT_ALPHA):
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)

    def score(self, query, base_scores, frames: list[np.ndarray], patches=None) -> np.ndarray:
        q = query.embedding if isinstance(query, QueryFeatures) else query
        base = np.asarray(base_scores, dtype=np.float64)
        mx = np.array([float(frame_similarities(q, f).max()) for f in frames], dtype=np.float64)
        return self.alpha * base + (1.0 - self.alpha) * mx


class AggregatorRerank:
    """Rerank with ``Aggregator.similarity`` (query-dependent or not), frames subsampled to
    the aggregator's ``max_frames``. Score = logit / exp(logit_scale). Aggregators that read
    patch tokens (UCoFiA) get the index's stored ones (``vr index --patches K``: the K tokens per
    frame closest to CLS, among which UCoFiA's learned selector keeps its top 3)."""

    def __init__(self, aggregator, name: str | None = None, patch_topk: int | None = None):
        self.aggregator = aggregator.eval()
        self.name = name or aggregator.name
        self.needs_words = bool(getattr(aggregator, "needs_words", False))
        self.needs_patches = bool(getattr(aggregator, "needs_patches", False))
        if self.needs_patches and patch_topk is not None and patch_topk < 1:
            raise UserError(
                f"reranker {self.name!r} needs patch tokens, which this index does not store: "
                "rebuild it with `vr index ... --patches 16`, or use --rerank cliprerank"
            )

    @torch.no_grad()
    def score(
        self, query: QueryFeatures, base_scores, frames: list[np.ndarray], patches=None
    ) -> np.ndarray:
        from video_retrieval.temporal.features import VideoFeatures

        if not frames:
            return np.zeros(0)
        if self.needs_patches and patches is None:
            raise UserError(f"reranker {self.name!r} needs the candidates' patch tokens")
        max_frames = int(getattr(self.aggregator, "max_frames", 12))
        idx = [uniform_indices(len(f), max_frames) for f in frames]
        picked = [np.asarray(f, np.float32)[i] for f, i in zip(frames, idx)]
        t = max(len(p) for p in picked)
        d = picked[0].shape[1]
        x = torch.zeros(len(picked), t, d)
        mask = torch.zeros(len(picked), t, dtype=torch.bool)
        px = None
        if self.needs_patches:
            px = torch.zeros(len(picked), t, *np.asarray(patches[0]).shape[1:])
        for i, p in enumerate(picked):
            x[i, : len(p)] = torch.from_numpy(p)
            mask[i, : len(p)] = True
            if len(p) < t:  # padding repeats the last real frame, masked out
                x[i, len(p) :] = torch.from_numpy(p[-1])
            if px is not None:
                px[i, : len(p)] = torch.from_numpy(np.asarray(patches[i], np.float32)[idx[i]])
        param = next(self.aggregator.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        video = VideoFeatures(x.to(dtype), mask, None if px is None else px.to(dtype))
        text = query.features
        logits = self.aggregator.similarity(text, video).float()[0]
        scale = float(self.aggregator.scale()) if hasattr(self.aggregator, "scale") else 1.0
        return (logits / scale).double().numpy()


def build_reranker(
    spec: str | None,
    embed_dim: int,
    alpha: float = DEFAULT_ALPHA,
    index_fingerprint=None,
    patch_topk: int | None = None,
):
    """``none`` -> None; ``cliprerank``; an aggregator name; or a checkpoint path (its encoder
    must match the index's, else ``UserError``)."""
    if spec is None or spec == "none":
        return None
    if spec == "cliprerank":
        return CLIPRerank(alpha)
    from video_retrieval.temporal import AGGREGATORS, build_aggregator

    if spec in AGGREGATORS:
        agg = build_aggregator(spec, embed_dim)
        learned = [n for n, _ in agg.named_parameters() if n != "logit_scale"]
        if learned:  # a random temporal model would rerank by noise, silently
            raise UserError(
                f"reranker {spec!r} has learned weights: pass the checkpoint trained by "
                f"`vr train` (--rerank path/to/last.ckpt) instead of its name"
            )
        return AggregatorRerank(agg, patch_topk=patch_topk)
    if os.path.exists(spec):
        from video_retrieval.model_io import load_retrieval_model

        encoder, aggregator, _meta = load_retrieval_model(spec)
        if index_fingerprint is not None and encoder.fingerprint() != index_fingerprint:
            raise UserError(
                f"checkpoint {spec} uses another encoder ({encoder.fingerprint()}) than the index "
                f"({index_fingerprint}); rebuild the index with --checkpoint {spec}"
            )
        return AggregatorRerank(aggregator, name=Path(spec).name, patch_topk=patch_topk)
    known = ", ".join(["none", "cliprerank", *sorted(AGGREGATORS)])
    raise UserError(f"unknown reranker {spec!r}: use one of {known}, or a checkpoint path")


def best_moment(
    sims: np.ndarray, timestamps: np.ndarray, duration: float, margin: float = 0.25
) -> tuple[float, float, float]:
    """The contiguous run of frames around the best frame whose similarity is within
    ``margin * (max - min)`` of the max, as ``(start_s, end_s, thumbnail_time_s)``.

    Each frame stands for the interval halfway to its neighbours (the first from 0, the last to
    the video's end)."""
    s = np.asarray(sims, dtype=np.float64)
    ts = np.asarray(timestamps, dtype=np.float64)
    if len(s) == 0:
        return 0.0, float(max(duration, 0.0)), 0.0
    b = int(np.argmax(s))
    thr = s[b] - margin * (s[b] - s.min())
    lo = b
    while lo > 0 and s[lo - 1] >= thr:
        lo -= 1
    hi = b
    while hi < len(s) - 1 and s[hi + 1] >= thr:
        hi += 1
    end_of_video = float(duration) if duration and duration > 0 else float(ts[-1])
    start = 0.0 if lo == 0 else 0.5 * (ts[lo - 1] + ts[lo])
    end = end_of_video if hi == len(s) - 1 else 0.5 * (ts[hi] + ts[hi + 1])
    end = max(end, start)
    return float(start), float(end), float(ts[b])
