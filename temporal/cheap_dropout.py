"""Dropout whose mask costs a seventh of ``torch.rand``'s on CPU (training-time speed only).

On CPU, ``F.dropout`` draws one float per element from the generator, and on small heads the
random numbers are most of a training step (the QD-DETR moment recipe: about 40% of it, see
BENCHMARKS.md). Here one full-range 64-bit draw of torch's generator gives four uniform int16
values, and an element is kept where its value is at least ``-2**15 + round(p * 2**16)``: the
same Bernoulli keep-mask with the drop probability rounded to a multiple of 2**-16,
the kept values scaled by ``1 / (1 - p)`` as ``nn.Dropout`` does, drawn from torch's own
generator (so ``seed_everything`` still makes a run repeatable). Attention-probability dropout
is applied the same way, which needs the attention computed here when training.

Only training changes: in eval mode, or off the CPU, every module takes torch's own path, so a
model trained with it is the same ``nn.Module`` with the same state dict.
``use_cheap_dropout(model)`` switches a built model's ``nn.Dropout`` and
``nn.MultiheadAttention`` modules (and layers that mark themselves with a
``cheap_dropout`` attribute) in place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

_LEVELS = 1 << 16


def cheap_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with the int16 mask on CPU (torch's own elsewhere)."""
    if not training or p <= 0.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    if p >= 1.0:
        return x * 0.0
    n = x.numel()
    # random_(-2**63, None) draws all 64 bits (a bounded range would draw one value per element)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    keep = words.view(torch.int16)[:n].view(x.shape) >= round(p * _LEVELS) - _LEVELS // 2
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class CheapDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cheap_dropout(x, self.p, self.training)


def attention(q, k, v, attn_mask: torch.Tensor | None, p: float, cheap: bool) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` ([B,H,L,E] inputs, boolean ``attn_mask`` True = attend,
    dropout ``p`` on the probabilities); with ``cheap`` and dropout on CPU, the same attention
    computed here with ``cheap_dropout`` on the probabilities."""
    if not cheap or p <= 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
    logits = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf"))
    return cheap_dropout(logits.softmax(-1), p) @ v


def heads_attention(
    q, k, v, heads: int, key_pad: torch.Tensor | None, dropout: float, cheap: bool = False
):
    """Multi-head scaled dot-product attention without input projections: q [B,Lq,Eq],
    k [B,Lk,Eq], v [B,Lk,Ev] -> [B,Lq,Ev]; each head takes its slice of the channels, scaled by
    ``(Eq / heads) ** -0.5``; ``key_pad`` [B,Lk] True = padding (ignored); ``cheap``: the
    probabilities' dropout mask of ``cheap_dropout``."""
    q, k, v = (rearrange(t, "b l (h e) -> b h l e", h=heads) for t in (q, k, v))
    mask = None if key_pad is None else rearrange(~key_pad.bool(), "b l -> b 1 1 l")
    out = attention(q, k, v, mask, dropout, cheap)
    return rearrange(out, "b h l e -> b l (h e)")


class CheapMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (batch_first, one ``in_proj_weight``) whose training forward
    drops attention probabilities with ``cheap_dropout`` (and returns no weights); everything
    else, and every option this forward does not handle, is torch's forward."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, **kwargs):
        if (
            not self.training
            or self.dropout <= 0.0
            or query.device.type != "cpu"
            or not self.batch_first
            or self.in_proj_weight is None
            or self.bias_k is not None
            or self.add_zero_attn
            or kwargs.get("attn_mask") is not None
        ):
            return super().forward(
                query, key, value, key_padding_mask=key_padding_mask,
                need_weights=need_weights, **kwargs,
            )  # fmt: skip
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        q, k, v = (
            F.linear(x, w, b) for x, w, b in ((query, w_q, b_q), (key, w_k, b_k), (value, w_v, b_v))
        )
        out = heads_attention(q, k, v, self.num_heads, key_padding_mask, self.dropout, cheap=True)
        return self.out_proj(out), None


def use_cheap_dropout(model: nn.Module) -> nn.Module:
    """Switch ``model`` to the cheap masks in place (no parameter, buffer or init changes)."""
    for module in list(model.modules()):
        if type(module) is nn.MultiheadAttention:
            module.__class__ = CheapMultiheadAttention  # same state, another forward
        if hasattr(module, "cheap_dropout"):
            module.cheap_dropout = True
        for name, child in module.named_children():
            if type(child) is nn.Dropout:
                setattr(module, name, CheapDropout(child.p, child.inplace))
    return model
