"""CLIP4Clip ``seqTransf`` (``modules/modeling.py`` + ``modules/module_cross.py``).

g = Transf(f + P) + f, with P learned frame position embeddings and Transf a 4-layer, width-D,
pre-LN transformer of CLIP-style residual attention blocks, bidirectional, with padded frames
masked as keys by an additive -1e6. The video vector is then CLIP4Clip's loose-type pooling:
normalise g_i, masked mean, normalise.

The block's parameter layout is that of open_clip's ``ResidualAttentionBlock`` (``ln_1``,
``attn`` = ``nn.MultiheadAttention``, ``ln_2``, ``mlp.c_fc`` / ``mlp.c_proj``) so the first
blocks of a CLIP text tower load by name (``init_from_clip``), as CLIP4Clip initialises from the
CLIP *text* transformer (issue #60: the paper's "image encoder" is a typo). A Hugging Face
``CLIPTextModel`` layer is mapped onto the same layout (q/k/v -> ``in_proj``, ``out_proj``,
``layer_norm1/2`` -> ``ln_1/2``, ``fc1/fc2`` -> ``c_fc/c_proj``).

MLP activation: CLIP4Clip's blocks use QuickGELU, the activation of the OpenAI text tower they are
copied from. Towers trained with exact GELU (e.g. open_clip's LAION ViT-B-32) need GELU, or the
copied blocks compute another function; so ``init_from_clip`` builds the blocks with the source
tower's activation (``text_tower_activation``) and the aggregator's ``activation`` attribute says
which one it uses. Checkpoints record it in their aggregator kwargs; one without that record was
trained with QuickGELU (``LEGACY_ACTIVATION``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
from einops import repeat
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


#: MLP activations of CLIP text towers: OpenAI's QuickGELU, exact GELU (open_clip's default, e.g.
#: the LAION weights) and GELU's tanh approximation.
ACTIVATIONS = {
    "quick_gelu": QuickGELU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
}
#: What the blocks used before the activation was recorded (and CLIP4Clip's own choice).
LEGACY_ACTIVATION = "quick_gelu"
#: Hugging Face ``hidden_act`` -> our name. ``gelu_new`` is the tanh approximation written out by
#: hand in transformers: the same function as ``gelu_tanh``, rounding may differ in the last bit.
HF_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


def activation_name(module: nn.Module) -> str | None:
    """Our name of an activation module (ours, open_clip's or torch's), None when unknown."""
    if type(module).__name__ in ("QuickGELU", "QuickGELUActivation"):
        return "quick_gelu"
    if isinstance(module, nn.GELU):
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    return None


def recorded_activation(aggregator_kwargs: dict | None) -> str:
    """The activation a checkpoint's temporal blocks were trained with: the one recorded in its
    aggregator kwargs, else QuickGELU (every checkpoint from before the record used it)."""
    return (aggregator_kwargs or {}).get("activation") or LEGACY_ACTIVATION


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)); x + mlp(ln_2(x)). Batch-first ``[B, N, D]``."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float = 4.0, activation: str = LEGACY_ACTIVATION
    ):
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
                    ("gelu", make_activation(activation)),
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
    neg = max(MASK_BIAS, torch.finfo(dtype).min)  # -1e6 is -inf in fp16: stay finite
    bias = (1.0 - mask.to(dtype)) * neg  # over keys
    # nn.MultiheadAttention expects batch-major rows (b h). CLIP4Clip's module_cross uses
    # ``repeat(n_head, 1, 1)`` (head-major, (h b)), which pairs masks with the wrong batch rows
    # when clips in a batch have different lengths; we use the layout PyTorch documents.
    return repeat(bias, "b key -> (b h) query key", h=heads, query=mask.shape[1])


class Transformer(nn.Module):
    """Stack of residual attention blocks with bidirectional key-padding masking."""

    def __init__(self, width: int, layers: int, heads: int, activation: str = LEGACY_ACTIVATION):
        super().__init__()
        self.width, self.layers, self.heads = width, layers, heads
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, activation=activation) for _ in range(layers)
        )
        self.activation = activation

    def set_activation(self, name: str) -> None:
        """Use the MLP activation ``name`` in every block (activations hold no weights)."""
        for block in self.resblocks:
            block.mlp.gelu = make_activation(name)
        self.activation = name

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


@dataclass
class TextTower:
    """What the temporal blocks take from a CLIP text tower, in our block layout."""

    positional_embedding: torch.Tensor  # [context, width]
    blocks: list[dict[str, torch.Tensor]]  # state dicts in ResidualAttentionBlock naming
    heads: int | None
    activation: str | None  # None: an activation we cannot reproduce
    source: str  # "open_clip" or "hf"
    eps: float = 1e-5


def _unwrap(clip_model):
    m = clip_model
    for attr in ("model", "clip"):  # unwrap common wrappers (e.g. our ClipEncoder)
        inner = getattr(m, attr, None)
        if isinstance(inner, nn.Module) and getattr(m, "transformer", None) is None:
            m = inner
    return m


def _hf_text_tower(text_model) -> TextTower:
    """A transformers ``CLIPTextModel`` (or its ``CLIPTextTransformer``) in our layout."""
    cfg = text_model.config
    blocks = []
    for layer in text_model.encoder.layers:
        att, mlp = layer.self_attn, layer.mlp
        blocks.append(
            {
                "ln_1.weight": layer.layer_norm1.weight,
                "ln_1.bias": layer.layer_norm1.bias,
                # nn.MultiheadAttention packs q, k, v along the output dim, in that order, and
                # splits heads the way CLIPAttention does (contiguous head_dim slices)
                "attn.in_proj_weight": torch.cat(
                    [att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]
                ),
                "attn.in_proj_bias": torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]),
                "attn.out_proj.weight": att.out_proj.weight,
                "attn.out_proj.bias": att.out_proj.bias,
                "ln_2.weight": layer.layer_norm2.weight,
                "ln_2.bias": layer.layer_norm2.bias,
                "mlp.c_fc.weight": mlp.fc1.weight,
                "mlp.c_fc.bias": mlp.fc1.bias,
                "mlp.c_proj.weight": mlp.fc2.weight,
                "mlp.c_proj.bias": mlp.fc2.bias,
            }
        )
    return TextTower(
        text_model.embeddings.position_embedding.weight,
        blocks,
        cfg.num_attention_heads,
        HF_ACTIVATIONS.get(cfg.hidden_act),
        "hf",
        float(cfg.layer_norm_eps),
    )


@torch.no_grad()
def text_tower(clip_model) -> TextTower | None:
    """The text tower of an open_clip model, a transformers ``CLIPModel``/``CLIPTextModel``, or a
    ``ClipEncoder`` around either; None when there is none."""
    m = _unwrap(clip_model)
    hf_text = getattr(m, "text_model", None)  # transformers CLIPModel / CLIPTextModel
    if hf_text is not None and getattr(hf_text, "encoder", None) is not None:
        return _hf_text_tower(hf_text)
    pos = getattr(m, "positional_embedding", None)
    transformer = getattr(m, "transformer", None)
    if transformer is None and getattr(m, "text", None) is not None:  # open_clip CustomTextCLIP
        m = m.text
        pos = getattr(m, "positional_embedding", None)
        transformer = getattr(m, "transformer", None)
    resblocks = getattr(transformer, "resblocks", None)
    if pos is None or resblocks is None or len(resblocks) == 0:
        return None
    first = resblocks[0]
    act = getattr(getattr(first, "mlp", None), "gelu", None)
    return TextTower(
        pos,
        [b.state_dict() for b in resblocks],
        getattr(getattr(first, "attn", None), "num_heads", None),
        activation_name(act) if act is not None else None,
        "open_clip",
        float(getattr(getattr(first, "ln_1", None), "eps", 1e-5)),
    )


def text_tower_activation(clip_model) -> str | None:
    """MLP activation of a CLIP model's text tower (``ACTIVATIONS`` name), read from the model
    itself (so it is right for pretrained tags, local weights and random initialisations)."""
    tower = text_tower(clip_model)
    return None if tower is None else tower.activation


@torch.no_grad()
def copy_clip_text_tower(
    clip_model, position_embedding: nn.Embedding, transformer: Transformer
) -> bool:
    """CLIP4Clip's initialisation: copy the CLIP text ``positional_embedding[:n]`` and the first
    ``len(transformer.resblocks)`` text blocks (open_clip or Hugging Face), and build the blocks
    with the tower's MLP activation, so each copied block computes what it computed in the tower.
    Returns False (and logs why, keeping the N(0, 0.02) init) when the tower does not fit."""
    tower = text_tower(clip_model)
    if tower is None:
        log.warning("init_from_clip: no CLIP text tower found; keeping N(0, 0.02) init")
        return False
    pos, blocks = tower.positional_embedding, tower.blocks
    width = transformer.width
    if pos.shape[-1] != width:
        log.warning(
            "init_from_clip: CLIP text width %d != %d; keeping N(0, 0.02) init",
            pos.shape[-1],
            width,
        )
        return False
    if tower.heads != transformer.heads:
        log.warning(
            "init_from_clip: CLIP text heads %s != %d; keeping N(0, 0.02) init",
            tower.heads,
            transformer.heads,
        )
        return False
    if tower.activation is None:
        log.warning(
            "init_from_clip: the CLIP text tower's MLP activation is none of %s; keeping "
            "N(0, 0.02) init",
            sorted(ACTIVATIONS),
        )
        return False
    mine = transformer.resblocks[0].state_dict()
    theirs = blocks[0]
    if set(theirs) != set(mine):
        log.warning(
            "init_from_clip: CLIP text blocks have other parameters than the temporal blocks "
            "(differing: %s, e.g. layer scale); keeping N(0, 0.02) init",
            sorted(set(theirs) ^ set(mine)),
        )
        return False
    shapes = [k for k in mine if theirs[k].shape != mine[k].shape]
    if shapes:
        log.warning(
            "init_from_clip: CLIP text block shapes differ from the temporal blocks' (%s, e.g. "
            "another MLP ratio); keeping N(0, 0.02) init",
            ", ".join(shapes),
        )
        return False
    ours_eps = transformer.resblocks[0].ln_1.eps
    if tower.eps != ours_eps:
        log.warning(
            "init_from_clip: CLIP text LayerNorm eps %g != %g; keeping N(0, 0.02) init",
            tower.eps,
            ours_eps,
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
    if tower.activation != transformer.activation:
        log.info(
            "init_from_clip: temporal blocks use the text tower's %s (was %s)",
            tower.activation,
            transformer.activation,
        )
        transformer.set_activation(tower.activation)
    n = min(pos.shape[0], position_embedding.num_embeddings)
    position_embedding.weight[:n].copy_(pos[:n])
    for block, state in zip(transformer.resblocks, blocks):
        block.load_state_dict(state, strict=True)
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
        activation: str = LEGACY_ACTIVATION,
        init_logit_scale: float = DEFAULT_INIT_LOGIT_SCALE,
        **kwargs,
    ):
        super().__init__(embed_dim, max_frames, init_logit_scale=init_logit_scale, **kwargs)
        heads = heads or default_heads(embed_dim)
        n_pos = num_positions or max(CLIP_CONTEXT, max_frames)
        self.frame_position_embeddings = nn.Embedding(n_pos, embed_dim)
        self.transformer = Transformer(embed_dim, layers, heads, activation)
        init_weights_clip4clip(self.frame_position_embeddings)
        init_weights_clip4clip(self.transformer)

    @property
    def activation(self) -> str:
        """MLP activation of the temporal blocks (an ``ACTIVATIONS`` name)."""
        return self.transformer.activation

    def set_activation(self, name: str) -> None:
        self.transformer.set_activation(name)

    def init_from_clip(self, clip_model) -> bool:
        """Copy the CLIP text tower's positions and first blocks, with its activation."""
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
