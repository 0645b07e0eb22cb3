"""CLIP-Hitchhiker query scoring (Bain et al., arXiv 2205.08508; ``mean='feats'``).

For text t and the frames f_1..f_T of video v:
    c_i = cos(t, f_i),  w = softmax_i(c_i / tau) over valid frames,
    u = sum_i w_i f_i  (weighted sum of the *un-normalised* frames),  score = cos(t, u),
times the logit scale. tau -> infinity gives cos(t, mean_i f_i); tau -> 0 the best frame.

Efficient form (no [N_t, N_v, T, D] tensor): with t̂ = t/|t|, d_i = t̂·f_i and the per-video Gram
matrix G = F Fᵀ, cos(t, u) = (Σ_i w_i d_i) / sqrt(wᵀ G w). Memory O(N_t · N_v · T).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from video_retrieval.temporal.base import (
    DEFAULT_INIT_LOGIT_SCALE,
    Aggregator,
    l2norm,
    masked_softmax,
    zero_padding,
)
from video_retrieval.temporal.features import TextFeatures, VideoFeatures


class QueryScored(Aggregator):
    name = "query_scored"
    query_dependent = True
    order_free = True

    def __init__(
        self,
        embed_dim: int,
        max_frames: int = 12,
        tau: float = 0.1,
        learnable_tau: bool = False,
        init_logit_scale: float = DEFAULT_INIT_LOGIT_SCALE,
        **kwargs,
    ):
        super().__init__(embed_dim, max_frames, init_logit_scale=init_logit_scale, **kwargs)
        log_tau = torch.tensor(math.log(float(tau)))
        if learnable_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def frame_weights(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        """[N_t, N_v, T] softmax weights over each video's valid frames."""
        t = l2norm(text.sentence)
        fn = l2norm(zero_padding(video.frames, video.mask))
        cos = torch.einsum("nd,vtd->nvt", t, fn)
        return masked_softmax(cos / self.tau, video.mask[None], dim=-1)

    def cosine(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        """[N_t, N_v] cos(t, u_{t,v}) without the logit scale."""
        t = l2norm(text.sentence)
        f = zero_padding(video.frames, video.mask)  # [Nv, T, D]
        fn = l2norm(f)
        mask = video.mask.bool()[None]  # [1, Nv, T]
        cos = torch.einsum("nd,vtd->nvt", t, fn)
        w = masked_softmax(cos / self.tau, mask, dim=-1)  # [Nt, Nv, T]
        dots = cos * f.norm(dim=-1)[None]  # t̂ · f_i (un-normalised frames)
        num = (w * dots).sum(-1)
        gram = f @ f.transpose(1, 2)  # [Nv, T, T]
        wg = torch.einsum("nvt,vts->nvs", w, gram)
        sq = (wg * w).sum(-1).clamp(min=0.0)
        return num / sq.sqrt().clamp(min=1e-8)

    def similarity(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        return self.scale() * self.cosine(text, video)
