"""CLIP's resize of uint8 frames, shared by the decoder (decoding at the encoder's size) and the
encoders' preprocessing, so that both give the same pixels.

Antialiased bicubic interpolation done as two 1-D passes (width, then height), each rounded to
uint8, as PIL does: the result agrees with open_clip's PIL transform to about one grey level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """Output shape of a short-side resize to ``size`` (torchvision's rounding: long side truncated)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_uint8(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of uint8 ``[N,3,H,W]`` to ``size``, result rounded to uint8."""
    if x.device.type == "cpu":
        # native uint8 kernel (fast, channels-last friendly): rounds and clips like PIL
        return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    y = F.interpolate(x.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return y.round_().clamp_(0.0, 255.0).to(torch.uint8)


def resize_two_pass(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[N,3,H,W]`` to ``size`` = (H', W'): the width pass, then the height pass (each
    skipped when that side does not change), rounded to uint8 in between as PIL does: this
    matches PIL's output to about one grey level, even on noise."""
    _, _, h, w = x.shape
    new_h, new_w = size
    if new_w != w:
        x = resize_uint8(x, (h, new_w))
    if new_h != h:
        x = resize_uint8(x, (new_h, new_w))
    return x
