"""``vr localize VIDEO "QUERY"``: moments [start, end, score] of a query inside one video."""

from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    parser.add_argument("video", help="the video file")
    parser.add_argument("query", help="the sentence to localize")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="moment checkpoint (trained moment head); default: zero-shot",
    )
    parser.add_argument(
        "--model", default="vr-tiny", help="encoder for the zero-shot baseline (default vr-tiny)"
    )
    parser.add_argument(
        "--pretrained", default=None, help="pretrained tag or weights file for --model"
    )
    parser.add_argument(
        "--clip-encoder",
        default=None,
        metavar="CKPT",
        help="zero-shot with a retrieval checkpoint pooling each 2 s clip +-1 s "
        "(configs/moments_synth_clips.yaml); replaces --model",
    )
    parser.add_argument("--top", type=int, default=5, help="moments to return (default 5)")
    parser.add_argument(
        "--plot", default=None, metavar="OUT.png", help="write a PNG of similarity over time"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    from video_retrieval.localize import localize

    res = localize(
        args.video, args.query, checkpoint=args.checkpoint, top=args.top, model=args.model,
        pretrained=args.pretrained, plot=args.plot, clip_encoder=args.clip_encoder,
    )  # fmt: skip
    if args.json:
        out = {k: res[k] for k in ("video", "query", "moments", "saliency")}
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    print(f'{res["video"]}: "{res["query"]}" ({res["method"]})')
    for i, m in enumerate(res["moments"], start=1):
        print(f"{i:>3}  {m['start']:7.2f}s - {m['end']:7.2f}s  score {m['score']:+.4f}")
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0
