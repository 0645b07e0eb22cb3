"""``vr model slim`` / ``vr model slim-moments``: checkpoints cut down to what inference needs."""

from __future__ import annotations

import json


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    sl = sub.add_parser(
        "slim",
        help="a vr train retrieval checkpoint without optimizer and loop state (fp16 weights)",
        description="Keep the weights (fp16 unless --fp32), hyper-parameters and frame sampling "
        "of a vr train retrieval checkpoint; drop the optimizer and loop state.",
    )
    sl.add_argument("src", help="checkpoint written by vr train (e.g. .../checkpoints/last.ckpt)")
    sl.add_argument("dst", help="file to write")
    sl.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16)")
    sm = sub.add_parser(
        "slim-moments",
        help="a moment head's inference part, optionally re-pointed at a clip encoder file",
        description="Keep a moment head's weights and settings (moment_meta); with --encoder, "
        "point it at that retrieval checkpoint (stored relative to DST's folder).",
    )
    sm.add_argument("src", help="moment checkpoint written by vr train")
    sm.add_argument("dst", help="file to write")
    sm.add_argument(
        "--encoder", default=None, metavar="CKPT", help="retrieval checkpoint the head should use"
    )


def run(args) -> int:
    from video_retrieval.models.checkpoints import slim_checkpoint, slim_moment_checkpoint

    if args.model_command == "slim-moments":
        print(json.dumps(slim_moment_checkpoint(args.src, args.dst, args.encoder)))
    else:
        print(json.dumps(slim_checkpoint(args.src, args.dst, half=not args.fp32)))
    return 0
