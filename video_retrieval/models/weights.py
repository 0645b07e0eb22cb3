"""Which weights a command uses: honest defaults, one meaning per flag, said out loud.

Every command that encodes (``vr index``, ``vr cache``, ``vr localize``; ``vr search`` through
the index's manifest) resolves its model flags here:

* nothing given: the real default, open_clip ``ViT-B-32`` + ``laion2b_s34b_b79k`` (as
  clip-retrieval defaults to a pretrained model). Offline, the download fails with one line
  that says how to pass a local weights file.
* ``--pretrained TAG`` or ``--pretrained FILE``: open_clip weights for ``--model``.
* ``--checkpoint FILE``: a ``vr train`` retrieval checkpoint (it names its own model and frame
  sampling), a file written by ``save_encoder``, or an open_clip state dict
  (``.bin``/``.pt``/``.safetensors``) for ``--model`` (default ``ViT-B-32``).
* ``--model NAME`` alone: refused, because the weights would be random.
* ``--random-weights``: random init (seeded), for tests and benchmarks only; a warning says the
  results are meaningless, and the manifest / ``--json`` summaries record it.

``describe_weights`` turns an encoder spec into the record that manifests and summaries carry.
"""

from __future__ import annotations

import sys
from pathlib import Path

from video_retrieval.encoders.registry import looks_like_path
from video_retrieval.errors import UserError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
RANDOM_MODEL = "vr-tiny"

HOW_TO = (
    "pass --pretrained TAG (downloads), --pretrained FILE / --checkpoint FILE (local weights), "
    "or --random-weights (tests and benchmarks only: meaningless results)"
)


def checkpoint_kind(path) -> str:
    """``"retrieval"`` (vr train retrieval checkpoint), ``"moment"`` (vr train moment head) or
    ``"encoder"`` (CLIP weights: a save_encoder file or an open_clip state dict)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"no such file: {path}")
    if p.suffix == ".safetensors":
        return "encoder"
    import torch

    try:  # mmap: a 600 MB state dict is not read to tell what it is
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint (old pickle / TorchScript): open_clip's loader decides
        return "encoder"
    if isinstance(obj, dict) and "state_dict" in obj and "hyper_parameters" in obj:
        if obj.get("moment_meta"):
            return "moment"
        return "retrieval"
    if isinstance(obj, dict) and obj.get("moment_meta"):
        return "moment"
    return "encoder"


def resolve_encoder_args(
    model: str | None = None,
    pretrained: str | None = None,
    checkpoint: str | None = None,
    backend: str = "open_clip",
    random_weights: bool = False,
) -> dict:
    """``create_encoder`` keyword arguments for the user's flags; refuses silent random weights.

    ``checkpoint`` here is CLIP weights only (callers route ``vr train`` checkpoints elsewhere).
    """
    if random_weights and (pretrained or checkpoint):
        raise UserError("give --random-weights or weights (--pretrained/--checkpoint), not both")
    if pretrained and checkpoint:
        raise UserError("give --pretrained or --checkpoint, not both")
    if pretrained and looks_like_path(pretrained) and not Path(pretrained).expanduser().is_file():
        raise UserError(f"no such file: {pretrained} (--pretrained)")
    if checkpoint and not Path(checkpoint).expanduser().is_file():
        raise UserError(f"no such file: {checkpoint} (--checkpoint)")
    if backend == "hf":
        if random_weights:
            raise UserError("--random-weights is for open_clip models (--model vr-tiny)")
        if model is None:
            raise UserError("--backend hf needs --model (a Hugging Face CLIP directory or hub id)")
        return {"model": model, "checkpoint": checkpoint, "backend": "hf"}
    if random_weights:
        return {"model": model or RANDOM_MODEL, "backend": "open_clip"}
    if checkpoint and model is None:
        from video_retrieval.encoders.factory import read_encoder_file_spec

        spec = read_encoder_file_spec(Path(checkpoint).expanduser())
        if spec is not None:  # a save_encoder file names its own model
            return {"model": spec["model"], "checkpoint": checkpoint, "backend": "open_clip"}
    if pretrained or checkpoint:
        return {
            "model": model or DEFAULT_MODEL,
            "pretrained": pretrained,
            "checkpoint": checkpoint,
            "backend": "open_clip",
        }
    if model is None:
        return {"model": DEFAULT_MODEL, "pretrained": DEFAULT_PRETRAINED, "backend": "open_clip"}
    from video_retrieval.encoders.registry import check_model_name, pretrained_tags

    name = check_model_name(model)
    tags = pretrained_tags(name)
    if (
        name == DEFAULT_MODEL and DEFAULT_PRETRAINED in tags
    ):  # the one every command defaults to first
        tags = [DEFAULT_PRETRAINED, *(t for t in tags if t != DEFAULT_PRETRAINED)]
    more = f", ... {len(tags) - 5} more" if len(tags) > 5 else ""
    known = f" (tags for {name}: {', '.join(tags[:5])}{more})" if tags else ""
    raise UserError(f"--model {name} has no weights: {HOW_TO}{known}")


def describe_weights(spec: dict | None, checkpoint: str | None = None) -> dict:
    """Where an encoder's weights came from, as manifests and ``--json`` summaries record it:
    ``{"kind": "pretrained"|"file"|"hf"|"vr_train_checkpoint"|"random", ...}``."""
    if checkpoint:
        return {"kind": "vr_train_checkpoint", "path": str(checkpoint)}
    spec = spec or {}
    w = spec.get("weights") or {}
    model = spec.get("model")
    if w.get("pretrained"):
        return {"kind": "pretrained", "model": model, "tag": w["pretrained"]}
    if w.get("checkpoint"):
        return {"kind": "file", "model": model, "path": w["checkpoint"]}
    if w.get("from_pretrained"):
        return {"kind": "hf", "model": model, "path": w["from_pretrained"]}
    return {"kind": "random", "model": model, "seed": int(spec.get("seed", 0))}


def manifest_weights(manifest: dict) -> dict:
    """The weights record of an index manifest (older manifests: derived from the spec)."""
    m = manifest.get("model") or {}
    return m.get("weights") or describe_weights(m.get("encoder_spec"), m.get("checkpoint"))


def weights_line(desc: dict) -> str:
    """A short human description of ``describe_weights``' record."""
    kind = desc.get("kind")
    if kind == "pretrained":
        return f"{desc['model']} / {desc['tag']}"
    if kind in ("file", "hf"):
        return f"{desc['model']} from {desc['path']}"
    if kind == "vr_train_checkpoint":
        return f"vr train checkpoint {desc['path']}"
    return f"RANDOM {desc.get('model')} (seed {desc.get('seed', 0)})"


def warn_if_random(desc: dict, stream=None) -> None:
    """Say loudly, on stderr, that the results of random weights are meaningless."""
    if desc.get("kind") == "random":
        print(
            f"warning: {desc.get('model')} with RANDOM weights (seed {desc.get('seed', 0)}): "
            "results are meaningless (tests and benchmarks only)",
            file=stream or sys.stderr,
        )
