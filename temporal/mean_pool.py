"""CLIP4Clip ``meanP``: parameter-free mean pooling of L2-normalised frame features."""

from __future__ import annotations

import torch
from video_retrieval.temporal.base import Aggregator, normalized_masked_mean
from video_retrieval.temporal.features import VideoFeatures


class MeanPool(Aggregator):
    """v = normalize(mean_i normalize(f_i)) over valid frames; score = exp(s) * cos(t, v)."""

    name = "mean"
    query_dependent = False
    order_free = True

    def embed_video(self, video: VideoFeatures) -> torch.Tensor:
        return normalized_masked_mean(video.frames, video.mask)
