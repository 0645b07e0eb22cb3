"""CLIP4Clip ``seqLSTM``: 1-layer unidirectional LSTM(D -> D) over the valid frames, residual."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from video_retrieval.temporal.base import (
    DEFAULT_INIT_LOGIT_SCALE,
    Aggregator,
    normalized_masked_mean,
    zero_padding,
)
from video_retrieval.temporal.features import VideoFeatures


class SeqLSTM(Aggregator):
    """g = LSTM(f) + f over the valid frames (packed), then CLIP4Clip loose-type pooling.

    Valid frames are assumed to be a prefix of each row (as produced by the decoder); padded
    positions are excluded from the pooled mean in any case. Default PyTorch LSTM init.
    """

    name = "seq_lstm"
    query_dependent = False

    def __init__(
        self,
        embed_dim: int,
        max_frames: int = 12,
        init_logit_scale: float = DEFAULT_INIT_LOGIT_SCALE,
        **kwargs,
    ):
        super().__init__(embed_dim, max_frames, init_logit_scale=init_logit_scale, **kwargs)
        self.lstm = nn.LSTM(
            embed_dim, embed_dim, num_layers=1, batch_first=True, bidirectional=False
        )

    def temporal(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        f = zero_padding(frames, mask)
        lengths = mask.bool().sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(f, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=f.shape[1])
        return out + f

    def embed_video(self, video: VideoFeatures) -> torch.Tensor:
        return normalized_masked_mean(self.temporal(video.frames, video.mask), video.mask)
