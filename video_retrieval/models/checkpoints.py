"""Reading checkpoints, loading a retrieval model without Lightning, slimming checkpoints.

``read_checkpoint`` is the one way this project opens a checkpoint file: ``torch.load(
weights_only=True)`` (tensors and plain data only: no pickled object runs), errors as one line
naming the file, and the class paths it records checked against the allow-list of
``class_paths`` (old dotted paths mapped to today's) before anything could import them.

A retrieval checkpoint holds plain JSON-able hyper-parameters (``RetrievalModule`` init args) plus
``vr_meta`` (encoder spec, aggregator, frame sampling) and the state dict with ``encoder.*`` and
``aggregator.*`` keys.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from video_retrieval.errors import UserError
from video_retrieval.media.atomic import atomic_torch_save
from video_retrieval.models.class_paths import check_class_paths


def read_checkpoint(path, label: str | None = None, mmap: bool = False) -> dict:
    """The contents of a checkpoint file, loaded without running any pickled code, with its
    class paths checked and mapped (``class_paths.check_class_paths``). ``label`` names the file
    in errors (e.g. ``"--ckpt_path X"``); ``mmap`` maps the tensors instead of reading them."""
    p = Path(path).expanduser()
    label = label or str(p)
    if not p.exists():
        raise UserError(f"{label}: no such checkpoint file")
    if p.is_dir():
        raise UserError(f"{label}: is a folder; give the checkpoint file inside it")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise UserError(
            f"{label}: refused: it holds pickled Python objects, not only tensors and plain data "
            "(a checkpoint written by vr train or torch.save of a state dict loads; this could "
            "run code)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing error
        why = " ".join(str(exc).split())[:160]
        raise UserError(
            f"{label}: not a readable checkpoint ({type(exc).__name__}: {why})"
        ) from None
    return check_class_paths(obj, label)


def read_moment_checkpoint(path) -> tuple[dict, dict]:
    """``(checkpoint, moment_meta)`` of a moment-head checkpoint, its meta checked: a dict with
    the head's ``model_kwargs`` (a dict), the ``encoder_source`` of its clip features and a
    ``state_dict``; anything else is one ``UserError`` naming the file."""
    ckpt = read_checkpoint(path)
    meta = ckpt.get("moment_meta") if isinstance(ckpt, dict) else None
    if not meta:
        raise UserError(
            f"{path}: not a moment checkpoint (no moment head settings); train one with "
            "`vr train fit --config configs/moments_*.yaml`"
        )
    if not isinstance(meta, dict):
        raise UserError(f"{path}: its moment head settings are not a mapping (damaged file?)")
    for key, kind in (("model_kwargs", dict), ("encoder_source", dict)):
        if not isinstance(meta.get(key), kind):
            raise UserError(f"{path}: its moment head settings lack {key} (damaged file?)")
    if not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{path}: holds no weights (state_dict)")
    return ckpt, meta


def load_retrieval_model(path, device: str | torch.device = "cpu", precision: str = "auto"):
    """``(encoder, aggregator, meta)`` from a ``vr train`` retrieval checkpoint (eval mode).

    ``meta``: ``model``, ``pretrained``, ``aggregator``, ``aggregator_kwargs``, ``num_frames``,
    ``max_words``, ``frame_size``, ``encoder_spec``, ``epoch``, ``global_step``, ``path``.
    """
    from video_retrieval.encoders.factory import create_encoder
    from video_retrieval.temporal import build_aggregator

    ckpt = read_checkpoint(path)
    hp = dict(ckpt.get("hyper_parameters") or {})
    state = ckpt.get("state_dict")
    if state is None or "aggregator" not in hp:
        raise UserError(f"{path}: not a retrieval checkpoint written by vr train")
    vm = dict(ckpt.get("vr_meta") or {})
    spec = dict(vm.get("encoder_spec") or {"model": hp.get("model", "vr-tiny")})
    spec["precision"] = precision
    spec["weights"] = None  # the checkpoint holds them: no download, no original weights file
    encoder = create_encoder(**spec)  # architecture only; the weights come from the checkpoint
    aggregator = build_aggregator(
        hp["aggregator"],
        encoder.embed_dim,
        max_frames=int(hp.get("num_frames", 12)),
        **(hp.get("aggregator_kwargs") or {}),
    )
    enc_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    agg_state = {
        k[len("aggregator.") :]: v for k, v in state.items() if k.startswith("aggregator.")
    }
    try:
        encoder.load_state_dict(enc_state, strict=True)
        aggregator.load_state_dict(agg_state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not match the recorded model ({exc})") from None
    encoder.to(device).eval()
    aggregator.to(device).eval()
    meta = {
        "model": hp.get("model"),
        "pretrained": hp.get("pretrained"),
        "aggregator": hp["aggregator"],
        "aggregator_kwargs": hp.get("aggregator_kwargs") or {},
        "num_frames": int(vm.get("data_num_frames") or hp.get("num_frames", 12)),
        "max_words": int(hp.get("max_words", 32)),
        "frame_size": vm.get("frame_size"),
        "symmetric_window": bool(vm.get("symmetric_window", False)),
        "encoder_spec": spec,
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "path": str(path),
    }
    return encoder, aggregator, meta


def slim_checkpoint(src, dst, half: bool = True) -> dict:
    """Write the inference part of a ``vr train`` checkpoint (weights, hyper-parameters,
    ``vr_meta``, epoch/step; no optimizer or loop state) to ``dst``; fp16 weights by default
    (loading casts back to fp32). Returns the size and contents. How the demo model is made."""
    ckpt = read_checkpoint(src)
    if "state_dict" not in ckpt or "aggregator" not in (ckpt.get("hyper_parameters") or {}):
        raise UserError(f"{src}: not a retrieval checkpoint written by vr train")
    state = {
        k: (v.half() if half and v.is_floating_point() else v).contiguous()
        for k, v in ckpt["state_dict"].items()
    }
    keep = {
        k: ckpt[k] for k in ("hyper_parameters", "vr_meta", "epoch", "global_step") if k in ckpt
    }
    out = Path(dst).expanduser()
    atomic_torch_save(out, {**keep, "state_dict": state})
    return {"path": str(out), "bytes": out.stat().st_size, "tensors": len(state), "fp16": half}


def slim_moment_checkpoint(src, dst, encoder=None) -> dict:
    """Write the inference part of a moment-head checkpoint (``moment_meta`` + the head's
    weights) to ``dst``. With ``encoder`` (a retrieval checkpoint, e.g. a slim fp16 copy of the
    clip encoder the head was trained on) the head is re-pointed at it: its path is stored
    relative to ``dst``'s folder and its fingerprint replaces the recorded one, so a predictor
    rebuilds exactly that encoder. The clip features of a re-pointed head must agree with the
    original's to fp16 precision; that is the caller's promise (the demo assets are made so)."""
    ckpt, meta = read_moment_checkpoint(src)
    meta = dict(meta)
    out = Path(dst).expanduser()
    if encoder is not None:
        enc_path = Path(encoder).expanduser()
        enc = load_retrieval_model(enc_path)[0]
        rel = os.path.relpath(enc_path.resolve(), out.resolve().parent)
        meta["encoder_source"] = {"kind": "retrieval_checkpoint", "path": rel, "relative": True}
        meta["encoder_fingerprint"] = enc.fingerprint()
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    atomic_torch_save(out, {"moment_meta": meta, "state_dict": state})
    return {"path": str(out), "bytes": out.stat().st_size, "tensors": len(state)}
