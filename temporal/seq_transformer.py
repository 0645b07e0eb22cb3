"""CLIP4Clip ``seqTransf`` (``modules/modeling.py`` + ``modules/module_cross.py``).

g = Transf(f + P) + f, with P learned frame position embeddings and Transf a 4-layer, width-D,
pre-LN transformer of CLIP-style residual attention blocks (QuickGELU MLP), bidirectional, with
padded frames masked as keys by an additive -1e6. The video vector is then CLIP4Clip's loose-type
pooling: normalise g_i, masked mean, normalise.

The block's parameter layout is that of open_clip's ``ResidualAttentionBlock`` (``ln_1``,
``attn`` = ``nn.MultiheadAttention``, ``ln_2``, ``mlp.c_fc`` / ``mlp.c_proj``) so the first
blocks of a CLIP text tower load by name (``init_from_clip``), as CLIP4Clip initialises from the
CLIP *text* transformer (issue #60: the paper's "image encoder" is a typo).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import nn
from video_retrieval.temporal.base import (
    DEFAULT_INIT_LOGIT_SCALE,
    Aggregator,
    normalized_masked_mean,
    zero_padding,
)
from video_retrieval.temporal.features import VideoFeatures

log = logging.getLogger(__name__)

#: CLIP4Clip's cross config ``max_position_embeddings`` (= CLIP's context length).
CLIP_CONTEXT = 77
#: CLIP4Clip ``init_weights`` initializer_range.
INIT_STD = 0.02
#: Additive attention bias on padded keys (CLIP4Clip uses -1e6).
MASK_BIAS = -1.0e6


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)); x + mlp(ln_2(x)). Batch-first ``[B, N, D]``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.n_head = heads
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_bias)[0]
        return x + self.mlp(self.ln_2(x))


def key_padding_bias(mask: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, N] bool -> additive [B*heads, N, N] bias: MASK_BIAS on padded keys (CLIP4Clip's
    ``(1 - mask) * -1e6`` expanded over queries and repeated per head)."""
    b, n = mask.shape
    neg = max(MASK_BIAS, torch.finfo(dtype).min)  # -1e6 is -inf in fp16: stay finite
    bias = (1.0 - mask.to(dtype)) * neg  # [B, N] over keys
    bias = bias[:, None, :].expand(b, n, n)
    # nn.MultiheadAttention expects batch-major [b * heads + h]. CLIP4Clip's module_cross uses
    # ``repeat(n_head, 1, 1)`` (head-major), which pairs masks with the wrong batch rows when
    # clips in a batch have different lengths; we use the layout PyTorch documents.
    return bias.repeat_interleave(heads, dim=0)


class Transformer(nn.Module):
    """Stack of residual attention blocks with bidirectional key-padding masking."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width, self.layers, self.heads = width, layers, heads
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        bias = None if mask is None else key_padding_bias(mask, self.heads, x.dtype)
        for block in self.resblocks:
            x = block(x, bias)
        return x


def default_heads(width: int) -> int:
    return max(1, width // 64)


def init_weights_clip4clip(module: nn.Module) -> None:
    """CLIP4Clip ``PreTrainedModel.init_weights`` applied module-wise: Linear (including the
    attention ``out_proj``) and Embedding N(0, 0.02) with zero bias, LayerNorm weight 1 / bias 0.
    As there, ``MultiheadAttention.in_proj_weight`` is not a Linear and keeps PyTorch's init."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=INIT_STD)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _text_tower(clip_model):
    """Return (positional_embedding [L, W], resblocks) of a CLIP text tower, or None."""
    m = clip_model
    for attr in ("model", "clip"):  # unwrap common wrappers (e.g. our ClipEncoder)
        inner = getattr(m, attr, None)
        if isinstance(inner, nn.Module) and getattr(m, "transformer", None) is None:
            m = inner
    pos = getattr(m, "positional_embedding", None)
    transformer = getattr(m, "transformer", None)
    if transformer is None and getattr(m, "text", None) is not None:  # open_clip CustomTextCLIP
        m = m.text
        pos = getattr(m, "positional_embedding", None)
        transformer = getattr(m, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if pos is None or blocks is None:
        return None
    return pos, blocks


@torch.no_grad()
def copy_clip_text_tower(
    clip_model, position_embedding: nn.Embedding, transformer: Transformer
) -> bool:
    """Copy CLIP text ``positional_embedding[:n]`` and the first ``len(transformer.resblocks)``
    text residual blocks. Returns False (and logs why) when the tower does not match."""
    tower = _text_tower(clip_model)
    if tower is None:
        log.warning("init_from_clip: no CLIP text tower found; keeping N(0, 0.02) init")
        return False
    pos, blocks = tower
    width = transformer.width
    if pos.shape[-1] != width:
        log.warning(
            "init_from_clip: CLIP text width %d != %d; keeping N(0, 0.02) init",
            pos.shape[-1],
            width,
        )
        return False
    if len(blocks) < transformer.layers:
        log.warning(
            "init_from_clip: CLIP text tower has %d < %d blocks; copying the %d it has, the rest keep "
            "N(0, 0.02)",
            len(blocks),
            transformer.layers,
            len(blocks),
        )
    heads = getattr(getattr(blocks[0], "attn", None), "num_heads", None)
    if heads != transformer.heads:
        log.warning(
            "init_from_clip: CLIP text heads %s != %d; keeping N(0, 0.02) init",
            heads,
            transformer.heads,
        )
        return False
    n = min(pos.shape[0], position_embedding.num_embeddings)
    position_embedding.weight[:n].copy_(pos[:n])
    for mine, theirs in zip(transformer.resblocks, blocks):
        src = {k: v for k, v in theirs.state_dict().items() if not k.startswith(("ls_", "ln_1_kv"))}
        missing, unexpected = mine.load_state_dict(src, strict=False)
        if missing or unexpected:
            raise RuntimeError(
                f"init_from_clip: block layout mismatch: missing={missing} unexpected={unexpected}"
            )
    return True


class SeqTransformer(Aggregator):
    """CLIP4Clip seqTransf aggregator (query-independent)."""

    name = "seq_transformer"
    query_dependent = False

    def __init__(
        self,
        embed_dim: int,
        max_frames: int = 12,
        layers: int = 4,
        heads: int | None = None,
        num_positions: int | None = None,
        init_logit_scale: float = DEFAULT_INIT_LOGIT_SCALE,
        **kwargs,
    ):
        super().__init__(embed_dim, max_frames, init_logit_scale=init_logit_scale, **kwargs)
        heads = heads or default_heads(embed_dim)
        n_pos = num_positions or max(CLIP_CONTEXT, max_frames)
        self.frame_position_embeddings = nn.Embedding(n_pos, embed_dim)
        self.transformer = Transformer(embed_dim, layers, heads)
        init_weights_clip4clip(self.frame_position_embeddings)
        init_weights_clip4clip(self.transformer)

    def init_from_clip(self, clip_model) -> bool:
        return copy_clip_text_tower(clip_model, self.frame_position_embeddings, self.transformer)

    def temporal(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> g [B, T, D] = Transf(f + P) + f (padded rows are meaningless)."""
        t = frames.shape[1]
        if t > self.frame_position_embeddings.num_embeddings:
            raise ValueError(
                f"{t} frames > {self.frame_position_embeddings.num_embeddings} frame position embeddings"
            )
        f = zero_padding(frames, mask)  # garbage in padded frames must not leak (NaN * 0)
        pos = self.frame_position_embeddings(torch.arange(t, device=f.device))
        return self.transformer(f + pos.to(f.dtype), mask.bool()) + f

    def embed_video(self, video: VideoFeatures) -> torch.Tensor:
        return normalized_masked_mean(self.temporal(video.frames, video.mask), video.mask)
