"""Aggregator base class and shared helpers.

An aggregator turns frame (and optionally patch/word) features into text-video logits. The
contract (docs/interfaces.md): ``similarity(text, video) -> [N_text, N_video]`` logits, including
the logit scale where the method uses one; ``embed_video``/``embed_text`` give L2-normalised vectors
for query-independent methods, so ``similarity == scale * embed_text @ embed_video.T``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from video_retrieval.temporal.features import TextFeatures, VideoFeatures

#: CLIP4Clip clamps the logit scale to <= ln(100) after every optimizer step.
MAX_LOGIT_SCALE = math.log(100.0)
#: CLIP's initial (and CLIP4Clip's fine-tuning) value: exp(.) = 100.
DEFAULT_INIT_LOGIT_SCALE = math.log(100.0)


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-12) -> torch.Tensor:
    return F.normalize(x, dim=dim, eps=eps)


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace padded items (mask False) by exact zeros, whatever they held (even NaN/inf).

    ``x`` is ``[B, T, ...]`` and ``mask`` ``[B, T]``.
    """
    m = mask.bool().reshape(mask.shape + (1,) * (x.dim() - mask.dim()))
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Mean of ``x [B, T, D]`` over valid positions of ``mask [B, T]`` (CLIP4Clip
    ``_mean_pooling_for_similarity_visual``: sum / max(count, 1))."""
    x = zero_padding(x, mask)
    count = mask.to(x.dtype).sum(dim=dim, keepdim=True).clamp(min=1.0)
    return x.sum(dim=dim) / count


def normalized_masked_mean(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CLIP4Clip loose-type pooling: normalise frames, masked mean, normalise again."""
    return l2norm(masked_mean(l2norm(g), mask, dim=1))


def masked_softmax(x: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` restricted to ``mask`` (True = valid; broadcastable to ``x``).

    Masked items get -inf before the softmax and exactly zero weight after; a slice with no valid
    item gets all-zero weights (not NaN).
    """
    if mask is None:
        return torch.softmax(x, dim=dim)
    mask = mask.bool()
    x = x.masked_fill(~mask, torch.finfo(x.dtype).min)  # finite "-inf": no NaN on empty slices
    p = torch.softmax(x, dim=dim)
    return torch.where(mask, p, torch.zeros((), dtype=p.dtype, device=p.device))


class Aggregator(nn.Module):
    """Base class. Subclasses set the class attributes and implement ``embed_video`` (query
    independent) or ``similarity`` (query dependent)."""

    name: str = "base"
    query_dependent: bool = False
    needs_words: bool = False
    needs_patches: bool = False
    #: train on the all-gathered global batch (contrastive towers); False for cross-encoders,
    #: whose cost grows with the square of the batch (CLIP4Clip's tightTransf uses the local one)
    gather_in_training: bool = True
    #: no per-position weights: reads any number of frames (mean, query scoring), so a reranker
    #: can give it every stored frame of a long video instead of ``max_frames`` of them
    order_free: bool = False

    def __init__(
        self,
        embed_dim: int,
        max_frames: int = 12,
        init_logit_scale: float = DEFAULT_INIT_LOGIT_SCALE,
        max_logit_scale: float = MAX_LOGIT_SCALE,
    ):
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.max_frames = int(max_frames)
        self.max_logit_scale = float(max_logit_scale)
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    # -- logit scale -------------------------------------------------------------------------
    def scale(self) -> torch.Tensor:
        """exp(logit_scale), i.e. the multiplicative inverse temperature."""
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Keep exp(logit_scale) <= 100 (call after each optimizer step, as CLIP4Clip does)."""
        self.logit_scale.clamp_(max=self.max_logit_scale)

    # -- embeddings --------------------------------------------------------------------------
    def embed_text(self, text: TextFeatures) -> torch.Tensor:
        """[N_t, D] L2-normalised sentence embeddings."""
        return l2norm(text.sentence)

    def embed_video(self, video: VideoFeatures) -> torch.Tensor:
        if self.query_dependent:
            raise NotImplementedError(
                f"aggregator {self.name!r} is query-dependent: it has no query-independent video "
                "embedding; use similarity(text, video) (e.g. to rerank a first stage)"
            )
        raise NotImplementedError

    # -- scores ------------------------------------------------------------------------------
    def similarity(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        """[N_t, N_v] logits = exp(logit_scale) * cos(text, video) for query-independent ones."""
        if self.query_dependent:
            raise NotImplementedError
        return self.scale() * self.embed_text(text) @ self.embed_video(video).t()

    def forward(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        return self.similarity(text, video)

    def init_from_clip(self, clip_model) -> bool:
        """Optional initialisation from a CLIP model. Returns True when weights were copied."""
        return False

    def extra_repr(self) -> str:
        return f"name={self.name}, embed_dim={self.embed_dim}, max_frames={self.max_frames}"
