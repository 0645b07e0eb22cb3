"""Per-frame patch selection (UCoFiA ``differential_topk.py``, adapted from TS2-Net; refs §2.2).

Per frame: tokens = [CLS ; patches]; ``PredictorLG`` (current HEAD) scores every token:
    x' = GELU(Linear_{D -> D/2, no bias}(LN(x)))                 per token
    h  = [x'_i ; x'_CLS]                                          (D dims)
    s  = tanh(Linear_{D/2 -> 1, no bias}(GELU(Linear_{D -> D/2, no bias}(h))))
The CLS score is dropped; k patches are selected from the patch scores by a differentiable
perturbed top-k (Berthet et al. 2020) in training and a deterministic top-k in evaluation. Output
per frame: [CLS ; k selected patches] -> ``[B, T * (k + 1), D]``.

Differences from the reference, deliberately:
* the reference perturbs the scores at evaluation too (its ``training`` flag is unused), so its
  inference is random; we use the hard top-k when ``self.training`` is False;
* the reference backward keeps only the diagonal of the Jacobian estimator
  (einsum ``bnkd,bnd->bkd``); we use Berthet et al.'s full estimator
  E[y(s + σZ) Zᵀ] / σ by default (``estimator="diagonal"`` gives the TS2-Net/UCoFiA one).
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from video_retrieval.temporal.base import zero_padding


def _topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest along the last dim, sorted by index (ascending)."""
    return torch.topk(scores, k=k, dim=-1, sorted=False).indices.sort(dim=-1).values


def hard_topk_indicator(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[N, P] -> one-hot [N, k, P] of the top-k positions, ordered by position."""
    return F.one_hot(_topk_sorted(scores, k), num_classes=scores.shape[-1]).to(scores.dtype)


class _PerturbedTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, k: int, num_samples: int, sigma: float, diagonal: bool):
        n, p = scores.shape
        noise = torch.randn(n, num_samples, p, dtype=scores.dtype, device=scores.device)
        idx = _topk_sorted(scores[:, None, :] + sigma * noise, k)  # [N, S, k]
        # count, per (n, k-th pick), how many of the S samples chose each position p
        ind = torch.zeros(n, k, p, dtype=scores.dtype, device=scores.device)
        ind.scatter_add_(
            2,
            rearrange(idx, "n s k -> n k s"),
            torch.ones(n, k, num_samples, dtype=scores.dtype, device=scores.device),
        )
        ind = ind / num_samples
        ctx.save_for_backward(noise, idx)
        ctx.sigma, ctx.diagonal, ctx.p = sigma, diagonal, p
        return ind

    @staticmethod
    def backward(ctx, grad_out):
        noise, idx = ctx.saved_tensors
        n, s, k = idx.shape
        scale = 1.0 / (s * ctx.sigma)
        if ctx.diagonal:
            # TS2-Net/UCoFiA: grad_in[n,d] = sum_k g[n,k,d] * sum_s 1[idx=d] Z[n,s,d] / (S σ)
            z_at = torch.gather(noise, 2, idx)  # [N, S, k] = Z[n, s, idx[n,s,k]]
            e = torch.zeros(n, k, ctx.p, dtype=noise.dtype, device=noise.device)
            e.scatter_add_(2, rearrange(idx, "n s k -> n k s"), rearrange(z_at, "n s k -> n k s"))
            grad_in = einops.reduce(grad_out * e, "n k p -> n p", "sum") * scale
        else:
            # Berthet et al.: J = E[y Zᵀ]/σ -> grad_in[n,:] = sum_s <g, y_s> Z[n,s,:] / (S σ)
            g_at = torch.gather(grad_out, 2, rearrange(idx, "n s k -> n k s"))  # g[n,k,idx[n,s,k]]
            inner = einops.reduce(g_at, "n k s -> n s", "sum")
            grad_in = einops.einsum(inner, noise, "n s, n s p -> n p") * scale
        return grad_in, None, None, None, None


def perturbed_topk(
    scores: torch.Tensor,
    k: int,
    num_samples: int = 500,
    sigma: float = 0.05,
    diagonal: bool = False,
) -> torch.Tensor:
    """Differentiable top-k indicator: [N, P] scores -> [N, k, P], the mean over ``num_samples``
    Gaussian perturbations (std ``sigma``) of the one-hot top-k (ordered by position)."""
    return _PerturbedTopK.apply(scores, int(k), int(num_samples), float(sigma), bool(diagonal))


class PredictorLG(nn.Module):
    """Token scorer of UCoFiA/TS2-Net HEAD (see the module docstring)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        half = embed_dim // 2
        self.in_conv = nn.Sequential(
            nn.LayerNorm(embed_dim), nn.Linear(embed_dim, half, bias=False), nn.GELU()
        )
        self.out_conv = nn.Sequential(
            nn.Linear(2 * half, half, bias=False),
            nn.GELU(),
            nn.Linear(half, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, 1 + P, D] with the CLS first -> scores [N, 1 + P]."""
        x = self.in_conv(tokens)
        x = torch.cat([x, x[:, :1].expand_as(x)], dim=-1)
        return self.out_conv(x).squeeze(-1)


class PatchSelector(nn.Module):
    """Keep CLS + top-k patches per frame."""

    def __init__(
        self,
        embed_dim: int,
        topk: int = 3,
        num_samples: int = 500,
        sigma: float = 0.05,
        estimator: str = "berthet",
    ):
        super().__init__()
        if estimator not in ("berthet", "diagonal"):
            raise ValueError("estimator must be 'berthet' or 'diagonal'")
        self.topk, self.num_samples, self.sigma = int(topk), int(num_samples), float(sigma)
        self.diagonal = estimator == "diagonal"
        self.score_predictor = PredictorLG(embed_dim)

    def forward(
        self, frames: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (CLS) [B, T, D], patches [B, T, P, D], mask [B, T] ->
        (tokens [B, T * (k + 1), D], token mask [B, T * (k + 1)])."""
        b, t, p, d = patches.shape
        if p < self.topk:
            raise ValueError(f"{p} patches per frame < top-k {self.topk}")
        # one row per frame: its CLS token, then its patches
        cls = rearrange(zero_padding(frames, mask), "b t d -> (b t) 1 d")
        pt = rearrange(zero_padding(patches, mask), "b t p d -> (b t) p d")
        scores = self.score_predictor(torch.cat([cls, pt], dim=1))[:, 1:]  # drop the CLS score
        if self.training:
            ind = perturbed_topk(scores, self.topk, self.num_samples, self.sigma, self.diagonal)
        else:
            ind = hard_topk_indicator(scores, self.topk)
        selected = einops.einsum(ind.to(pt.dtype), pt, "n k p, n p d -> n k d")
        # per frame, j = CLS + k picks; frames laid end to end
        tokens = rearrange(torch.cat([cls, selected], dim=1), "(b t) j d -> b (t j) d", b=b)
        token_mask = repeat(mask.bool(), "b t -> b (t j)", j=self.topk + 1)
        return tokens, token_mask
