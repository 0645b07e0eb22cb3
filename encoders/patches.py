"""Patch tokens kept per frame when not all are stored: a frozen, cheap criterion."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def select_topk_patches(cls: torch.Tensor, patches: torch.Tensor, k: int):
    """Frozen top-k criterion: the ``k`` patches most cosine-similar to their frame's CLS.

    ``cls [N,D]``, ``patches [N,P,D]`` -> (kept ``[N,k,D]``, indices ``[N,k]`` ascending).
    """
    k = min(int(k), patches.shape[1])
    score = torch.einsum(
        "npd,nd->np", F.normalize(patches.float(), dim=-1), F.normalize(cls.float(), dim=-1)
    )
    idx = score.topk(k, dim=1).indices.sort(dim=1).values
    kept = torch.gather(patches, 1, idx[:, :, None].expand(-1, -1, patches.shape[-1]))
    return kept, idx
