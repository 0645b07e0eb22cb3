"""Test-time score normalisation.

* Sinkhorn-Knopp prior (UCoFiA ``eval_t2v/main_ucofia.py::sinkhorn_knopp``, refs §2.4): from a
  bank of logits (training captions x test videos for t2v), K = exp(L - max L), b = 1/colsum(K),
  then ``iters`` times a = 1/(K b), b = 1/(aᵀ K); the prior is log_softmax(log b - max L) over the
  test items and is added to the test logits. Non-transductive (the bank is training data).
  UCoFiA applies it per level (``UCoFiA.level_similarities``) and then averages the levels.

The transductive dual softmax (DSL, CAMoE / TS2-Net test time) is a metric variant, not part of a
model: ``metrics.retrieval.dual_softmax``.
"""

from __future__ import annotations

import torch


def sinkhorn_scalings(
    bank_logits: torch.Tensor, iters: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scalings (a [N_bank], b [N_test]) of K = exp(L - max L) after ``iters`` iterations, so that
    diag(a) K diag(b) has (approximately) unit row sums and unit column sums."""
    L = bank_logits.detach().to(torch.float64)
    K = torch.exp(L - L.max())
    b = 1.0 / K.sum(dim=0)
    a = torch.ones(K.shape[0], dtype=K.dtype, device=K.device)
    for _ in range(iters):
        a = 1.0 / (K @ b)
        b = 1.0 / (a @ K)
    return a, b


def sinkhorn_prior(bank_logits: torch.Tensor, iters: int = 4) -> torch.Tensor:
    """Log prior [N_test] over the columns of ``bank_logits [N_bank, N_test]``."""
    L = bank_logits.detach().to(torch.float64)
    _, b = sinkhorn_scalings(L, iters)
    prior = torch.log_softmax(torch.log(b) - L.max(), dim=0)
    return prior.to(bank_logits.dtype)


def apply_sinkhorn(
    test_logits: torch.Tensor, bank_logits: torch.Tensor, dim="t2v", iters: int = 4
) -> torch.Tensor:
    """Add the SK prior to ``test_logits [N_text, N_video]``.

    Both matrices are text x video, as ``Aggregator.similarity`` returns them.

    * ``dim="t2v"`` (or 1): ``bank_logits`` is [N_bank_text, N_video] (training captions vs the
      test videos); the prior is over videos and is added to every row.
    * ``dim="v2t"`` (or 0): ``bank_logits`` is [N_text, N_bank_video] (test captions vs training
      videos); it is transposed, the prior is over test texts and is added to every column.
    """
    if dim in ("t2v", 1, -1):
        return test_logits + sinkhorn_prior(bank_logits, iters)[None, :].to(test_logits.dtype)
    if dim in ("v2t", 0):
        return test_logits + sinkhorn_prior(bank_logits.t(), iters)[:, None].to(test_logits.dtype)
    raise ValueError(f"dim must be 't2v' (1) or 'v2t' (0), not {dim!r}")
