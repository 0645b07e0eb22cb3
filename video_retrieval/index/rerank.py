"""Second-stage rerankers over stored frame features, and the best moment of a hit.

Search is two-stage: an ANN over pooled vectors proposes candidates with a *base* score (the
cosine between the query and the pooled video vector, in [-1, 1]); a reranker rescores them from
the candidates' stored frame embeddings.

* ``CLIPRerank`` (Chen et al., ICASSP 2024): ``final = alpha * base + (1 - alpha) * max_i cos(q, f_i)``
  with ``alpha = 0.4`` by default (alpha weights the base model M, the CLIP max-over-frames term
  gets 1 - alpha). Both terms are cosines, so they are on the same [-1, 1] scale. In the paper the
  max-over-frames term comes from a frame-level CLIP independent of the base model; with
  ``FrameModel`` (``--rerank-model CKPT``) it does: the query is encoded by that model's text
  tower and each candidate's frames (the index's own sampling, decoded again) by its image tower.
  Without it the term reuses the index's frame embeddings and its query embedding.
* ``AggregatorRerank``: any aggregator's ``similarity(text, video)`` (query-scored, UCoFiA,
  tightTransf, or a trained checkpoint's); the score is the logit divided by the aggregator's
  ``exp(logit_scale)``, i.e. a cosine-like value.

Example (hand-made numbers)::

    >>> import numpy as np
    >>> from video_retrieval.index.rerank import CLIPRerank
    >>> q = np.array([1.0, 0.0])
    >>> frames = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.6, 0.8]])]
    >>> CLIPRerank(alpha=0.4).score(q, np.array([0.5, 0.9]), frames).round(3).tolist()
    [0.8, 0.72]
"""

from __future__ import annotations

import os
from collections import OrderedDict
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


def frame_limit(aggregator) -> int | None:
    """How many of a video's frames an aggregator reads: all of them for an order-free one
    (``order_free``: mean pooling, CLIP-Hitchhiker's query scoring, which have no per-position
    weights and are meant for long videos), else its ``max_frames`` (uniformly subsampled)."""
    if getattr(aggregator, "order_free", False):
        return None
    return int(getattr(aggregator, "max_frames", 12))


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


class FrameModel:
    """A frame-level CLIP for CLIPRerank, independent of the index's model (``--rerank-model``):
    a ``vr train`` retrieval checkpoint whose text tower encodes the query and whose image tower
    encodes every frame of a candidate, sampled as the index sampled it (decoded again at this
    model's image size). The embeddings of the last ``cache_videos`` videos stay in memory, so an
    evaluation encodes each video once."""

    def __init__(self, path, encoder=None, text_aggregator=None, cache_videos: int = 4096):
        self.path = str(path)
        if encoder is None:
            from video_retrieval.models.checkpoints import load_retrieval_model
            from video_retrieval.models.weights import checkpoint_kind

            if not Path(path).is_file():
                raise UserError(f"--rerank-model: no such file: {path}")
            kind = checkpoint_kind(path)
            if kind != "retrieval":
                raise UserError(
                    f"--rerank-model {path} is not a vr train retrieval checkpoint (a frame "
                    "encoder such as the clip encoder trained on clips.jsonl)"
                )
            encoder, text_aggregator, _ = load_retrieval_model(path)
        self.encoder = encoder.eval()
        self.text_aggregator = text_aggregator
        self.cache_videos = int(cache_videos)
        self._frames: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    @torch.no_grad()
    def embed_query(self, text: str) -> np.ndarray:
        """L2-normalised sentence embedding [D] of ``text``."""
        feats = self.encoder.encode_text(self.encoder.tokenize([text]))
        agg = self.text_aggregator
        emb = agg.embed_text(feats) if agg is not None else feats.sentence
        return l2n(emb.float()[0].cpu().numpy())

    @torch.no_grad()
    def frames(self, index, row: int) -> np.ndarray:
        """This model's frame embeddings [T, D] of index row ``row`` (the index's sampling)."""
        from video_retrieval.index.pipeline import read_sampled_frames

        v = index.videos[int(row)]
        key = (str(v["path"]), str(v.get("sha256", v.get("mtime_ns", ""))))
        got = self._frames.get(key)
        if got is not None:
            self._frames.move_to_end(key)
        else:
            sampling = index.fingerprint.get("sampling") or {}
            try:
                fr = read_sampled_frames(
                    v["path"], sampling, getattr(self.encoder, "image_size", None)
                )
            except Exception as exc:  # noqa: BLE001 - a stale index entry is the user's to fix
                why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(
                    f"--rerank-model: cannot decode candidate {v['path']} ({why}); "
                    "run vr index again (--prune drops deleted files)"
                ) from None
            pixels = np.ascontiguousarray(np.asarray(fr.pixels)[np.asarray(fr.mask, bool)])
            cls, _ = self.encoder.encode_frames(pixels)
            got = cls.float().cpu().numpy().astype(np.float32)
            self._frames[key] = got
            while len(self._frames) > self.cache_videos:
                self._frames.popitem(last=False)
        return got


class CLIPRerank:
    """``alpha * base + (1 - alpha) * max over frames of cos(query, frame)``; the frames and the
    query come from ``frame_model`` when one is given (the paper's independent frame-level CLIP),
    else from the index."""

    name = "cliprerank"
    needs_words = False
    needs_patches = False

    def __init__(self, alpha: float = DEFAULT_ALPHA, frame_model: FrameModel | None = None):
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.frame_model = frame_model

    def score(self, query, base_scores, frames: list[np.ndarray], patches=None) -> np.ndarray:
        q = query.embedding if isinstance(query, QueryFeatures) else query
        base = np.asarray(base_scores, dtype=np.float64)
        mx = np.array([float(frame_similarities(q, f).max()) for f in frames], dtype=np.float64)
        return self.alpha * base + (1.0 - self.alpha) * mx


class AggregatorRerank:
    """Rerank with ``Aggregator.similarity`` (query-dependent or not), frames subsampled to
    the aggregator's ``max_frames`` (all frames for order-free ones: ``frame_limit``). Score =
    logit / exp(logit_scale). Aggregators that read
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
        limit = frame_limit(self.aggregator)
        idx = [
            np.arange(len(f)) if limit is None else uniform_indices(len(f), limit) for f in frames
        ]
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
    rerank_model: str | None = None,
):
    """``none`` -> None; ``cliprerank`` (with ``rerank_model``: its frame encoder); an aggregator
    name; or a checkpoint path (its encoder must match the index's, else ``UserError``)."""
    if rerank_model is not None and spec != "cliprerank":
        raise UserError(
            f"--rerank-model is CLIPRerank's frame encoder: use it with --rerank cliprerank "
            f"(or auto), not --rerank {spec}"
        )
    if spec is None or spec == "none":
        return None
    if spec == "cliprerank":
        return CLIPRerank(alpha, FrameModel(rerank_model) if rerank_model is not None else None)
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
        from video_retrieval.models.checkpoints import load_retrieval_model

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
