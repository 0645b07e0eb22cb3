"""Getting weights into an encoder: the Hugging Face hub set offline when its host does not resolve
(so a missing download fails at once, not after minutes of retries), the one-line error for a
failed download, and loading a state dict strictly with a message naming the file.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from functools import lru_cache
from pathlib import Path

import open_clip
from torch import nn

from video_retrieval.errors import UserError


@lru_cache(maxsize=8)
def host_resolves(host: str, timeout: float = 3.0) -> bool:
    """Cheap network probe (DNS lookup in a thread with a timeout)."""
    result = []

    def probe():
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    th.join(timeout)
    return bool(result and result[0])


@contextlib.contextmanager
def hub_offline_if_unreachable():
    """Put huggingface_hub in offline mode (cache only) when the Hub cannot be reached, so a
    missing download fails at once instead of after a minute of retries."""
    try:
        from huggingface_hub import constants as hf_constants
    except Exception:  # pragma: no cover
        yield
        return
    old = hf_constants.HF_HUB_OFFLINE
    if not old and not host_resolves("huggingface.co"):
        hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old


def download_error(model: str, tag: str, cause: Exception) -> UserError:
    cfg = open_clip.get_pretrained_cfg(model, tag) or {}
    source = cfg.get("hf_hub") or cfg.get("url") or "the open_clip weights host"
    offline = not host_resolves("huggingface.co")
    why = "no network and not in the local cache" if offline else f"{type(cause).__name__}"
    return UserError(
        f"could not download the pretrained weights {model!r}/{tag!r} from {source.rstrip('/')} "
        f"({why}). Download open_clip_pytorch_model.bin once on a connected machine and pass it: "
        f"--model {model} --pretrained /path/to/open_clip_pytorch_model.bin "
        f"(Python: create_encoder({model!r}, pretrained=PATH))"
    )


def load_state_into(module: nn.Module, state: dict, path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = str(e).splitlines()
        raise UserError(
            f"{path}: weights do not fit the model architecture ({' '.join(msg[:3])[:300]})"
        ) from e
