"""Interactive Similarity Aggregation (UCoFiA, refs §2.3).

For a similarity vector x over K items and a learnable W (K x K, identity init):

    ISA_W(x) = sum_k x_k * softmax( softmax(x / tau) @ W / tau )_k,   tau = 0.01

i.e. X-CLIP's AOSM with an extra outer softmax. Masking: the UCoFiA code aggregates over all
positions, including zero-padded words (it applies no text mask) and padded frames. We do it
right: masked items get -inf before the inner softmax, their columns are masked again before the
outer softmax, and they get exactly zero weight, so padding changes nothing.
"""

from __future__ import annotations

import torch
from torch import nn
from video_retrieval.temporal.base import masked_softmax

ISA_TAU = 1e-2


def isa(
    x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None = None, tau: float = ISA_TAU
) -> torch.Tensor:
    """ISA over the last dim of ``x [..., K]``; ``weight [K_max, K_max]`` (its top-left K x K
    block is used when K < K_max); ``mask`` broadcastable to ``x`` (True = valid). Returns
    ``x.shape[:-1]``. A slice with no valid item gives 0."""
    k = x.shape[-1]
    if k > weight.shape[0]:
        raise ValueError(f"ISA over {k} items but its weight is {tuple(weight.shape)}")
    w = weight[:k, :k].to(x.dtype)
    if mask is not None:
        mask = mask.bool()
        x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    inner = masked_softmax(x / tau, mask, dim=-1)
    outer = masked_softmax((inner @ w) / tau, mask, dim=-1)
    return (x * outer).sum(-1)


class ISA(nn.Module):
    """ISA with its own identity-initialised K x K weight."""

    def __init__(self, num_items: int, tau: float = ISA_TAU):
        super().__init__()
        self.tau = tau
        self.weight = nn.Parameter(torch.eye(num_items))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return isa(x, self.weight, mask, self.tau)
