"""CLIP image preprocessing as batched tensor operations.

Equivalent to the usual per-image PIL pipeline (``Resize(S, bicubic)`` on the short side,
``CenterCrop(S)``, ``ToTensor``, ``Normalize(mean, std)``) but applied to a whole batch of
uint8 frames at once with ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``.
Like PIL, the resize is done as two 1-D passes (width, then height) each rounded to uint8, so
results agree with open_clip's own PIL transform to within about one grey level.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange

from video_retrieval.media.resize import resize_shape, resize_two_pass

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_uint8_tensor(pixels) -> torch.Tensor:
    """uint8 ``[N,H,W,3]`` or ``[H,W,3]`` (numpy or torch) -> uint8 torch tensor ``[N,H,W,3]``."""
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(np.ascontiguousarray(pixels))
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"expected a numpy array or torch tensor, got {type(pixels).__name__}")
    if pixels.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(0)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected pixels of shape [N,H,W,3], got {tuple(pixels.shape)}")
    return pixels


def clip_preprocess(
    pixels,
    image_size: int,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """uint8 frames ``[N,H,W,3]`` -> normalised float32 ``[N,3,S,S]``.

    Short side resized to ``image_size`` with antialiased bicubic interpolation, centre crop,
    then ``(x / 255 - mean) / std``. Runs on ``device`` (default: where the pixels are).
    """
    x = to_uint8_tensor(pixels)
    if device is not None:
        x = x.to(device)
    n, h, w, _ = x.shape
    x = rearrange(x, "n h w c -> n c h w")  # a uint8 view (channels-last memory)
    new_h, new_w = resize_shape(h, w, image_size)
    if n > 0:
        x = resize_two_pass(x, (new_h, new_w))
    else:
        x = x.new_zeros((0, 3, new_h, new_w))
    # centre crop (torchvision: offset = round((dim - size) / 2))
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    x = x[:, :, top : top + image_size, left : left + image_size].float()
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device) * 255.0
    per_channel = "c -> 1 c 1 1"
    return ((x - rearrange(mean_t, per_channel)) / rearrange(std_t, per_channel)).contiguous()
