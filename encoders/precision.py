"""Precision policy: fp32 weights, optional bf16 autocast for inference and training forward passes."""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

from video_retrieval.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul support (AVX512-BF16 or AMX tiles).

    Without it bf16 autocast on CPU is emulated and usually slower than fp32.
    """
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except Exception:  # pragma: no cover - defensive: private torch API
                continue
    return False


def resolve_autocast_dtype(precision: str, device: str | torch.device) -> torch.dtype | None:
    """Map a precision name to the autocast dtype (``None`` = plain fp32)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device_type = torch.device(device).type
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    # auto
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device_type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return None


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """Autocast for ``dtype``; a no-op (not ``enabled=False``) for fp32 so that an outer
    autocast, e.g. Lightning's ``bf16-mixed``, still applies."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
