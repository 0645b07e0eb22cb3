"""``vr demo``: the offline end-to-end walk-through (see ``video_retrieval.demo``)."""

from __future__ import annotations

import os

from video_retrieval.cli.common import ranged


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_out", help="working folder (default: demo_out)")
    parser.add_argument(
        "--seed", type=int, default=20261125, help="seed of the generated collection"
    )
    parser.add_argument(
        "--num-videos",
        type=ranged(4, 2000, "short videos"),
        default=48,
        help="short videos to index",
    )
    parser.add_argument(
        "--moment-videos", type=ranged(1, 100, "long videos"), default=3,
        help="long videos to localize in",
    )  # fmt: skip
    parser.add_argument(
        "--searches", type=ranged(0, 100, "searches"), default=4, help="example searches to print"
    )
    parser.add_argument(
        "--checkpoint", default=None, help="retrieval checkpoint (default: bundled)"
    )
    parser.add_argument("--moment-checkpoint", default=None, help="moment head (default: bundled)")
    parser.add_argument(
        "--clip-checkpoint",
        default=None,
        help="clip encoder for zero-shot localization (default: bundled)",
    )


def run(args) -> int:
    from video_retrieval.demo import run_demo

    run_demo(
        out=args.out,
        seed=args.seed,
        num_videos=args.num_videos,
        moment_videos=args.moment_videos,
        searches=args.searches,
        retrieval_checkpoint=args.checkpoint,
        moment_checkpoint=args.moment_checkpoint,
        clip_checkpoint=args.clip_checkpoint,
    )
    from video_retrieval.models.assets import DEMO_MOMENTS

    index = os.path.join(args.out, "index")
    head = args.moment_checkpoint or _short(DEMO_MOMENTS)
    print(
        f"\nSearch and watch it in a browser (open http://127.0.0.1:8000/):\n"
        f"  vr serve --index {index} --localize-checkpoint {head}"
    )
    return 0


def _short(path) -> str:
    """``path`` relative to the working folder when it is inside it (the README's commands)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel
