"""The checkpoints bundled with the package (``video_retrieval/assets/``), trained by this
project's own ``vr train`` on the synthetic world (how: README and BENCHMARKS.md).

- ``DEMO_RETRIEVAL``: a ``vr-tiny`` CLIP + seqTransf retrieval model (the demo's index model);
- ``DEMO_CLIPS``: that model fine-tuned on 2 s moment clips (pools each clip +-1 s);
- ``DEMO_MOMENTS``: the QD-DETR moment head trained on ``DEMO_CLIPS``' clip features.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEMO_RETRIEVAL = ASSETS / "demo_retrieval.ckpt"
DEMO_MOMENTS = ASSETS / "demo_moments.ckpt"
DEMO_CLIPS = ASSETS / "demo_clips.ckpt"


def demo_retrieval_checkpoint() -> str | None:
    """The bundled demo retrieval model, if this installation has it."""
    return str(DEMO_RETRIEVAL) if DEMO_RETRIEVAL.exists() else None
