"""CLIP4Clip ``tightTransf`` (``modeling.py::_cross_similarity`` + ``module_cross.CrossModel``).

A cross-encoder over the 1 + T tokens ``[t ; f_1..f_T]`` (raw, un-normalised sentence and frame
features): learned position embeddings + dropout 0.1, a 4-layer pre-LN transformer (bidirectional,
-1e6 on padded frames; the text token is always valid; its blocks use the MLP activation of the
CLIP text tower they are copied from, see ``seq_transformer``), ``CrossPooler`` (LayerNorm ->
token 0 -> Linear(D, D) -> QuickGELU, as in CLIP4Clip: not copied from CLIP) and
``similarity_dense`` Linear(D, 1): one logit per (text, video) pair, **no logit scale**
(``logit_scale`` exists only for the common interface and is unused).

CLIP4Clip builds ``concat_type`` (0 text / 1 video) but its ``CrossEmbeddings`` has the token-type
embedding commented out, so no modality embedding is added; we do the same (``token_type=True``
adds one, zero-initialised, as an opt-in extension).
Query-dependent: cost N_t x N_v cross-encoder passes, computed in chunks of ``pair_chunk`` pairs.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn
from video_retrieval.temporal.base import DEFAULT_INIT_LOGIT_SCALE, Aggregator, zero_padding
from video_retrieval.temporal.features import TextFeatures, VideoFeatures
from video_retrieval.temporal.seq_transformer import (
    CLIP_CONTEXT,
    LEGACY_ACTIVATION,
    QuickGELU,
    Transformer,
    copy_clip_text_tower,
    default_heads,
    init_weights_clip4clip,
)


class TightTransformer(Aggregator):
    name = "tight_transformer"
    query_dependent = True
    gather_in_training = False

    def __init__(
        self,
        embed_dim: int,
        max_frames: int = 12,
        layers: int = 4,
        heads: int | None = None,
        dropout: float = 0.1,
        num_positions: int | None = None,
        token_type: bool = False,
        pair_chunk: int = 1024,
        activation: str = LEGACY_ACTIVATION,
        init_logit_scale: float = DEFAULT_INIT_LOGIT_SCALE,
        **kwargs,
    ):
        super().__init__(embed_dim, max_frames, init_logit_scale=init_logit_scale, **kwargs)
        self.logit_scale.requires_grad_(False)  # not used by this method
        heads = heads or default_heads(embed_dim)
        self.position_embeddings = nn.Embedding(
            num_positions or max(CLIP_CONTEXT, max_frames + 1), embed_dim
        )
        self.token_type_embeddings = nn.Embedding(2, embed_dim) if token_type else None
        self.dropout = nn.Dropout(dropout)
        self.transformer = Transformer(embed_dim, layers, heads, activation)
        self.ln_pool = nn.LayerNorm(embed_dim)
        self.pool_dense = nn.Linear(embed_dim, embed_dim)
        self.pool_act = QuickGELU()
        self.similarity_dense = nn.Linear(embed_dim, 1)
        self.pair_chunk = int(pair_chunk)
        init_weights_clip4clip(self)
        if self.token_type_embeddings is not None:
            nn.init.zeros_(self.token_type_embeddings.weight)

    @property
    def activation(self) -> str:
        """MLP activation of the transformer blocks (an ``ACTIVATIONS`` name)."""
        return self.transformer.activation

    def set_activation(self, name: str) -> None:
        self.transformer.set_activation(name)

    def init_from_clip(self, clip_model) -> bool:
        """Copy the CLIP text tower's positions and first blocks, with its activation."""
        return copy_clip_text_tower(clip_model, self.position_embeddings, self.transformer)

    def pair_logits(
        self, sentence: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Aligned pairs: sentence [P, D], frames [P, T, D], mask [P, T] -> logits [P]."""
        p, t, _ = frames.shape
        x = torch.cat([sentence[:, None, :], zero_padding(frames, mask)], dim=1)
        n = t + 1
        if n > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"{t} frames exceed {self.position_embeddings.num_embeddings - 1} positions"
            )
        x = x + self.position_embeddings(torch.arange(n, device=x.device)).to(x.dtype)
        if self.token_type_embeddings is not None:
            types = torch.ones(n, dtype=torch.long, device=x.device)
            types[0] = 0
            x = x + self.token_type_embeddings(types).to(x.dtype)
        x = self.dropout(x)
        full_mask = torch.cat(
            [torch.ones(p, 1, dtype=torch.bool, device=x.device), mask.bool()], dim=1
        )
        x = self.transformer(x, full_mask)
        pooled = self.pool_act(self.pool_dense(self.ln_pool(x)[:, 0]))
        return self.similarity_dense(pooled).squeeze(-1)

    def similarity(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        nt, nv = len(text), len(video)
        if nt == 0 or nv == 0:
            return text.sentence.new_zeros(nt, nv)
        vchunk = max(1, min(nv, self.pair_chunk))
        rows_per_chunk = max(1, self.pair_chunk // vchunk)
        out = []
        for i in range(0, nt, rows_per_chunk):
            s = text.sentence[i : i + rows_per_chunk]
            k = s.shape[0]
            row = []
            for j in range(0, nv, vchunk):
                fr, mk = video.frames[j : j + vchunk], video.mask[j : j + vchunk]
                m = fr.shape[0]
                # every (text, video) pair of the block, text-major
                sent = repeat(s, "t d -> (t v) d", v=m)
                frames = repeat(fr, "v f d -> (t v) f d", t=k)
                mask = repeat(mk, "v f -> (t v) f", t=k)
                logits = self.pair_logits(sent, frames, mask)
                row.append(rearrange(logits, "(t v) -> t v", t=k))
            out.append(torch.cat(row, dim=1))
        return torch.cat(out, dim=0)
