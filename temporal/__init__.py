"""Temporal aggregators: frame (and patch/word) features -> text-video logits.

``build_aggregator(name, embed_dim, max_frames=12, **kwargs)`` builds one of ``AGGREGATORS``.
"""

from __future__ import annotations

from video_retrieval.temporal.base import Aggregator
from video_retrieval.temporal.features import TextFeatures, VideoFeatures
from video_retrieval.temporal.mean_pool import MeanPool
from video_retrieval.temporal.query_scored import QueryScored
from video_retrieval.temporal.seq_lstm import SeqLSTM
from video_retrieval.temporal.seq_transformer import SeqTransformer
from video_retrieval.temporal.tight_transformer import TightTransformer
from video_retrieval.temporal.ucofia import UCoFiA

AGGREGATORS: dict[str, type] = {
    "mean": MeanPool,
    "seq_lstm": SeqLSTM,
    "seq_transformer": SeqTransformer,
    "query_scored": QueryScored,
    "tight_transformer": TightTransformer,
    "ucofia": UCoFiA,
}


def build_aggregator(name: str, embed_dim: int, max_frames: int = 12, **kwargs) -> Aggregator:
    """Build an aggregator by name; ``kwargs`` go to its constructor (e.g. ``init_logit_scale``)."""
    try:
        cls = AGGREGATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown aggregator {name!r}; choose one of {sorted(AGGREGATORS)}"
        ) from None
    return cls(embed_dim, max_frames=max_frames, **kwargs)


__all__ = ["AGGREGATORS", "Aggregator", "TextFeatures", "VideoFeatures", "build_aggregator"]
