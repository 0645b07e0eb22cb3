"""Reading a query image (``vr search --image``, an upload to ``POST /api/search``) with Pillow.

``read_image(source)`` returns upright uint8 RGB pixels ``[H,W,3]``: the first frame of an
animation, EXIF orientation applied (a phone photo is upright as it is shown), transparency laid
on white (a screenshot with an alpha channel). Refused in one line (``UserError``): a missing
file, bytes that are no image, a damaged or truncated image, and an image larger than
``MAX_PIXELS`` (a decompression bomb: a few kilobytes that would decode to gigabytes), which is
checked from the header before any pixel is decoded.

Example::

    >>> from video_retrieval.media.image import read_image
    >>> read_image("frame.png").shape                                      # doctest: +SKIP
    (360, 640, 3)
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from video_retrieval.errors import UserError

#: the largest image decoded (pixels): 8K is 33 MP; more is refused as a decompression bomb
MAX_PIXELS = 50_000_000


def _open(source, what: str):
    from PIL import Image

    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise UserError(f"{what} is empty (0 bytes)")
        return Image.open(io.BytesIO(bytes(source)))
    path = Path(os.fspath(source))
    if not path.is_file():
        raise UserError(f"no such image file: {path}" if what == str(source)
                        else f"{what}: no such file: {path}")  # fmt: skip
    return Image.open(path)


def read_image(source, what: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """uint8 RGB ``[H,W,3]`` of ``source`` (a path, the file's bytes, a PIL image or an
    ``[H,W,3]`` uint8 array); ``what`` names it in errors (default: the path or "the image")."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[-1] != 3:
            raise UserError(
                f"an image array must be uint8 [H,W,3], got {source.dtype} {source.shape}"
            )
        return np.array(source, dtype=np.uint8, order="C")  # a copy: torch wants it writable
    if what is None:
        what = str(source) if isinstance(source, (str, os.PathLike)) else "the image"
    try:
        with warnings.catch_warnings():
            # Pillow warns between its own limit and twice it: our limit (below) decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = _open(source, what)
            w, h = img.size
            if w * h > max_pixels:
                raise UserError(
                    f"{what} is {w}x{h} pixels ({w * h / 1e6:.0f} MP), over the "
                    f"{max_pixels / 1e6:.0f} MP limit (a decompression bomb?)"
                )
            if w < 1 or h < 1:
                raise UserError(f"{what} has no pixels ({w}x{h})")
            img.seek(0)  # an animation: its first frame
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                img = img.convert("RGBA")
                flat = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(flat, img)
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise UserError(f"{what} is not an image Pillow can read (PNG, JPEG, WebP, ...)") from None
    except Image.DecompressionBombError:
        raise UserError(
            f"{what} is too large to decode, over the {max_pixels / 1e6:.0f} MP limit "
            "(a decompression bomb?)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        why = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise UserError(f"{what} is a damaged or truncated image ({why})") from None
    return np.ascontiguousarray(rgb)
